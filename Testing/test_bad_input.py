"""Every bad input gives a one-line error naming the file, a non-zero exit, and leaves nothing behind."""
from __future__ import annotations

import gzip
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SculptorGANLib.cli import main
from SculptorGANLib.io.volumes import write_volume
from SculptorGANLib.core.volume import CTVolume


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.err.strip()


@pytest.fixture
def good_ct(tmp_path):
    array = np.random.default_rng(1).normal(0, 50, (6, 16, 16)).astype(np.float32)
    return write_volume(CTVolume(array), tmp_path / "good.nii.gz")


def _truncated(tmp_path, good_ct):
    data = Path(good_ct).read_bytes()
    path = tmp_path / "truncated.nii.gz"
    path.write_bytes(data[: len(data) // 2])
    return path


def _png(tmp_path, _):
    path = tmp_path / "image.png"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.uint8)), str(path))
    return path


def _text(tmp_path, _):
    path = tmp_path / "notes.txt"
    path.write_text("not an image\n")
    return path


def _two_d(tmp_path, _):
    path = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.float32)), str(path))
    return path


def _four_d(tmp_path, _):
    path = tmp_path / "four_d.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5, 6), np.float32), isVector=False), str(path))
    return path


def _empty_dicom(tmp_path, _):
    path = tmp_path / "dicom_empty"
    path.mkdir()
    return path


def _nans(tmp_path, _):
    array = np.zeros((4, 8, 8), np.float32)
    array[1, 2, 3] = np.nan
    path = tmp_path / "nans.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


def _garbage_gz(tmp_path, _):
    path = tmp_path / "garbage.nii.gz"
    path.write_bytes(gzip.compress(b"\x00" * 100))
    return path


BAD_INPUTS = {
    "missing path": (lambda tmp, good: tmp / "does_not_exist.nii.gz", "no such file"),
    "truncated nii.gz": (_truncated, "truncated"),
    "corrupt nii.gz": (_garbage_gz, "cannot be read"),
    "png": (_png, "2D image"),
    "text file": (_text, "cannot be read"),
    "2D image": (_two_d, "2D image"),
    "4D image": (_four_d, "4D image"),
    "empty DICOM folder": (_empty_dicom, "no DICOM series"),
    "NaNs": (_nans, "NaN"),
}


@pytest.mark.parametrize("command", ["run", "segment"])
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_error(tmp_path, capsys, good_ct, case, command):
    make, expected = BAD_INPUTS[case]
    bad = make(tmp_path, good_ct)
    before = sorted(p.name for p in tmp_path.iterdir())
    snapshot = bad.read_bytes() if bad.is_file() else None
    out = tmp_path / "out"
    args = ("run", bad, "--out", out) if command == "run" else ("segment", bad, tmp_path / "seg.nii.gz")
    code, err = run_cli(capsys, *args)
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(bad) in err and expected.lower() in err.lower()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, nothing left behind
    if snapshot is not None:
        assert bad.read_bytes() == snapshot


def test_output_dir_that_is_a_file(tmp_path, capsys, good_ct):
    target = tmp_path / "taken"
    target.write_text("keep me")
    code, err = run_cli(capsys, "run", good_ct, "--out", target, "--steps", "segment")
    assert code == 2 and "is a file" in err and str(target) in err
    assert target.read_text() == "keep me"


def test_no_write_permission(tmp_path, capsys, good_ct):
    if sys.platform != "linux" or os.access("/sys", os.W_OK) is False:
        pytest.skip("needs Linux sysfs as an unwritable location")
    out = Path("/sys/sculptorgan_test_out")
    code, err = run_cli(capsys, "run", good_ct, "--out", out, "--steps", "segment")
    assert code == 2 and str(out) in err and "permitted" in err.lower() or "permission" in err.lower()
    assert not out.exists()


def test_no_write_permission_as_normal_user(tmp_path, capsys, good_ct):
    if os.geteuid() == 0:
        pytest.skip("root ignores file permissions")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    code, err = run_cli(capsys, "run", good_ct, "--out", locked / "out", "--steps", "segment")
    assert code == 2 and "permission" in err.lower()


def test_output_same_as_input_is_refused(capsys, good_ct):
    snapshot = Path(good_ct).read_bytes()
    code, err = run_cli(capsys, "segment", good_ct, good_ct)
    assert code == 2 and "input" in err
    assert Path(good_ct).read_bytes() == snapshot


def test_debug_shows_traceback(tmp_path):
    with pytest.raises(Exception):
        main(["run", str(tmp_path / "nope.nii.gz"), "--out", str(tmp_path / "o"), "--debug"])
