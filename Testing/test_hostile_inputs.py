"""Hostile or wrong input is refused with a one-line reason naming the file (issue 15, items 8, 10-13)."""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from SculptorGANLib.cli import main
from SculptorGANLib.core.errors import InputError
from SculptorGANLib.io import read_ct, read_labels


def _run(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# ----------------------------------------------------------------------------- hand-made headers
def mha(path: Path, size=(16, 16, 8), spacing="1 1 1", matrix="1 0 0 0 1 0 0 0 1", data_file="LOCAL") -> Path:
    nx, ny, nz = size
    header = (f"ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
              f"TransformMatrix = {matrix}\nOffset = 0 0 0\nElementSpacing = {spacing}\nDimSize = {nx} {ny} {nz}\n"
              f"ElementType = MET_SHORT\nElementDataFile = {data_file}\n")
    data = np.random.default_rng(0).normal(0, 50, (nz, ny, nx)).astype("<i2").tobytes() if data_file == "LOCAL" else b""
    path.write_bytes(header.encode() + data)
    return path


def nhdr(path: Path, data_file: str, sizes="16 16 8", directions="(1,0,0) (0,1,0) (0,0,1)") -> Path:
    path.write_text(f"NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: {sizes}\n"
                    f"space directions: {directions}\nkinds: domain domain domain\nendian: little\nencoding: raw\n"
                    f"space origin: (0,0,0)\ndata file: {data_file}\n")
    return path


def nifti(path: Path, size=(16, 16, 8), pixdim=(1.0, 1.0, 1.0), data: bytes | None = None, sform=None) -> Path:
    """A NIfTI-1 int16 file written byte by byte (so invalid headers can be made)."""
    nx, ny, nz = size
    hdr = bytearray(348)
    struct.pack_into("<i", hdr, 0, 348)
    struct.pack_into("<8h", hdr, 40, 3, nx, ny, nz, 1, 1, 1, 1)
    struct.pack_into("<hh", hdr, 70, 4, 16)
    struct.pack_into("<8f", hdr, 76, 1.0, *pixdim, 1, 1, 1, 1)
    struct.pack_into("<ff", hdr, 108, 352.0, 1.0)
    if sform is not None:
        struct.pack_into("<h", hdr, 254, 1)
        struct.pack_into("<12f", hdr, 280, *np.asarray(sform, float).ravel())
    hdr[344:348] = b"n+1\x00"
    if data is None:
        data = np.random.default_rng(0).normal(0, 50, (nz, ny, nx)).astype("<i2").tobytes()
    raw = bytes(hdr) + b"\x00" * 4 + data
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


# ----------------------------------------------------------------------------- item 8: geometry
@pytest.mark.parametrize("make,match", [
    (lambda d: mha(d / "neg.mha", spacing="1 1 -2"), "spacing"),
    (lambda d: mha(d / "zero.mha", spacing="1 1 0"), "spacing"),
    (lambda d: mha(d / "nan.mha", spacing="1 nan 1"), "spacing"),
    (lambda d: mha(d / "skew.mha", matrix="1 0 0 0.7 0.7 0 0 0 1"), "orthogonal"),
    (lambda d: mha(d / "singular.mha", matrix="1 0 0 1 0 0 0 0 1"), "singular"),
    (lambda d: nifti(d / "zero.nii.gz", pixdim=(1.0, 1.0, 0.0)), "spacing"),
    (lambda d: nifti(d / "neg.nii.gz", pixdim=(1.0, -1.0, 2.0)), "spacing"),
    (lambda d: nifti(d / "nan.nii", pixdim=(1.0, float("nan"), 2.0)), "spacing"),
    (lambda d: nifti(d / "shear.nii.gz", sform=[[1, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]), "orthogonal"),
    (lambda d: nhdr(d / "zero.nhdr", "d.raw", directions="(1,0,0) (0,0,0) (0,0,1)"), "spacing"),
    (lambda d: nhdr(d / "skew.nhdr", "d.raw", directions="(1,0,0) (1,1,0) (0,0,1)"), "orthogonal"),
], ids=lambda v: getattr(v, "__name__", str(v)))
def test_bad_geometry_is_refused(tmp_path, capsys, make, match):
    (tmp_path / "d.raw").write_bytes(b"\0" * 4096)
    path = make(tmp_path)
    with pytest.raises(InputError, match=match) as info:
        read_ct(path)
    assert str(path) in str(info.value)
    code, text = _run(capsys, "run", path, "--out", tmp_path / "out", "--steps", "interpolate", "--quiet")
    assert code == 2 and len(text.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_geometry_rejects_nan_and_singular_directly():
    from SculptorGANLib.core.volume import Geometry

    for bad in (dict(spacing=(1, float("nan"), 1)), dict(spacing=(1, 1, -1)), dict(origin=(0, float("inf"), 0)),
                dict(direction=(1, 0, 0, 1, 0, 0, 0, 0, 1)), dict(direction=(1, 0, 0, 0.7, 0.7, 0, 0, 0, 1))):
        with pytest.raises(ValueError):
            Geometry(**bad)


# ----------------------------------------------------------------------------- item 10: detached data files
@pytest.mark.parametrize("make", [
    lambda d: mha(d / "evil.mha", data_file="/etc/passwd"),
    lambda d: mha(d / "evil.mhd", data_file="../../../../../../etc/passwd"),
    lambda d: nhdr(d / "evil.nhdr", "/etc/passwd"),
    lambda d: nhdr(d / "rel.nhdr", "../outside.raw"),
])
def test_data_file_outside_the_header_folder_is_refused(tmp_path, capsys, make):
    (tmp_path / "outside.raw").write_bytes(b"\0" * 4096)
    (tmp_path / "sub").mkdir()
    path = make(tmp_path / "sub")
    with pytest.raises(InputError, match="outside the header's folder"):
        read_ct(path)
    code, text = _run(capsys, "run", path, "--out", tmp_path / "out", "--steps", "interpolate", "--quiet")
    assert code == 2 and "root:" not in text


def test_data_file_beside_the_header_is_read(tmp_path):
    (tmp_path / "d.raw").write_bytes(np.arange(16 * 16 * 8, dtype="<i2").tobytes())
    ct = read_ct(nhdr(tmp_path / "ok.nhdr", "d.raw"))
    assert ct.shape == (8, 16, 16) and ct.array[0, 0, 1] == 1


# ----------------------------------------------------------------------------- item 11: size limits
def test_gzip_bomb_is_refused_from_its_header(tmp_path, capsys):
    path = tmp_path / "bomb.nii.gz"
    with gzip.open(path, "wb") as handle:  # header promises 2048^3 int16 (16 GB); the file is a few kB
        handle.write(nifti(tmp_path / "h.nii", size=(2048, 2048, 2048), data=b"").read_bytes())
        handle.write(b"\0" * (1 << 20))
    code, text = _run(capsys, "run", path, "--out", tmp_path / "out", "--steps", "segment", "--quiet")
    assert code == 2 and "voxels" in text and "--allow-large" in text and str(path) in text


def test_huge_voxels_are_refused_before_segmenting(tmp_path, capsys):
    path = nifti(tmp_path / "huge_voxels.nii.gz", size=(64, 64, 40), pixdim=(60.0, 60.0, 60.0))
    code, text = _run(capsys, "run", path, "--out", tmp_path / "out", "--steps", "segment", "--quiet")
    assert code == 2 and "model" in text and "--allow-large" in text
    assert not (tmp_path / "out").exists()


def test_huge_factor_is_refused_and_allow_large_overrides(tmp_path, capsys, monkeypatch):
    from SculptorGANLib.io import limits

    path = nifti(tmp_path / "ct.nii.gz", size=(64, 64, 8))
    monkeypatch.setattr(limits, "MAX_OUTPUT_VOXELS", 64 * 64 * 20)
    code, text = _run(capsys, "run", path, "--out", tmp_path / "out", "--steps", "interpolate", "--factor", "4",
                      "--method", "linear", "--quiet")
    assert code == 2 and "interpolated CT would have" in text and not (tmp_path / "out").exists()
    code, text = _run(capsys, "run", path, "--out", tmp_path / "out", "--steps", "interpolate", "--factor", "4",
                      "--method", "linear", "--quiet", "--allow-large")
    assert code == 0, text


def test_factor_beyond_its_bound_is_an_option_error(capsys, tmp_path):
    code, text = _run(capsys, "run", tmp_path / "x.nii.gz", "--out", tmp_path / "o", "--factor", "1000")
    assert code == 2 and "--factor" in text


# ----------------------------------------------------------------------------- item 12: options and odd inputs
@pytest.mark.parametrize("args", [("--target-spacing", "nan"), ("--target-spacing", "inf"), ("--morph-mm", "nan"),
                                  ("--morph-mm", "1e6"), ("--smoothing", "nan"), ("--overlap", "1e9")])
def test_non_finite_or_absurd_options_are_refused(tmp_path, capsys, args):
    code, text = _run(capsys, "run", tmp_path / "missing.nii.gz", "--out", tmp_path / "o", *args)
    assert code == 2 and args[0] in text


def test_surfaces_smoothing_nan_is_refused(tmp_path, capsys):
    from SculptorGANLib.core.volume import LabelVolume
    from SculptorGANLib.io import write_volume

    array = np.zeros((8, 16, 16), np.uint8)
    array[2:6, 4:12, 4:12] = 1
    labels = write_volume(LabelVolume(array), tmp_path / "lab.nii.gz")
    code, text = _run(capsys, "surfaces", labels, tmp_path / "s", "--smoothing", "nan")
    assert code == 2 and "--smoothing" in text and not (tmp_path / "s").exists()


def test_named_interpolation_model_that_cannot_be_used_is_an_error(tmp_path, capsys):
    ct = nifti(tmp_path / "ct.nii.gz")
    (tmp_path / "broken.json").write_text("{not json")
    for model in (tmp_path / "broken.json", "no_such_model"):
        code, text = _run(capsys, "run", ct, "--out", tmp_path / "o", "--factor", "2", "--interp-model", model,
                          "--steps", "interpolate", "--quiet")
        assert code == 2 and str(model) in text and not (tmp_path / "o").exists()


def test_negative_labels_are_refused(tmp_path):
    import nrrd

    array = np.zeros((8, 16, 16), np.int16)
    array[2:5, 4:9, 4:9] = -255
    path = tmp_path / "neg.seg.nrrd"
    nrrd.write(str(path), array, {"space": "left-posterior-superior", "space directions": np.eye(3),
                                  "space origin": np.zeros(3), "Segment0_Name": "Kidney left",
                                  "Segment0_LabelValue": "1", "Segment0_Layer": "0", "Segment0_ID": "S1"},
               index_order="C")
    with pytest.raises(InputError, match="negative"):
        read_labels(path)
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "neg.nii.gz"))
    with pytest.raises(InputError, match="0..255"):
        read_labels(tmp_path / "neg.nii.gz")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "ct.nii.gz"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        read_ct(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        read_labels(fifo)


# ----------------------------------------------------------------------------- item 13: messages
def test_seg_nrrd_without_geometry_names_the_file(tmp_path, capsys):
    path = tmp_path / "nodirs.seg.nrrd"
    path.write_bytes(b"NRRD0004\ntype: uchar\ndimension: 3\nsizes: 4 4 4\nencoding: raw\n\n" + b"\0" * 64)
    code, text = _run(capsys, "surfaces", path, tmp_path / "s")
    assert code == 2 and str(path) in text and "unexpected" not in text


def test_unknown_output_format_names_the_output_not_a_temp_file(tmp_path, capsys):
    ct = nifti(tmp_path / "ct.nii.gz")
    for command, output in (("segment", tmp_path / "out.seg.png"), ("interpolate", tmp_path / "thin.png")):
        code, text = _run(capsys, command, ct, output, "--quiet")
        assert code == 2 and str(output) in text and "partial" not in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]


def test_out_of_memory_says_so(tmp_path, capsys, monkeypatch):
    import SculptorGANLib.cli.commands as commands

    ct = nifti(tmp_path / "ct.nii.gz")

    def no_memory(*_a, **_k):
        raise MemoryError("Unable to allocate 3.23 TiB")

    monkeypatch.setattr(commands, "run_pipeline", no_memory)
    code, text = _run(capsys, "run", ct, "--out", tmp_path / "o", "--steps", "interpolate", "--quiet")
    assert code == 1 and "out of memory" in text and str(ct) in text
