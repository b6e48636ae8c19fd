"""``.seg.nrrd`` files are read by segment name and terminology, layer by layer (issue 15, item 3)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from SculptorGANLib.cli import main
from SculptorGANLib.core.volume import KIDNEY, TUMOR, LabelVolume
from SculptorGANLib.io import read_labels, write_volume


@pytest.fixture(scope="module")
def phantom():
    from SculptorGANLib.phantom import make_phantom

    return make_phantom(shape=(32, 64, 64), spacing=(4.0, 4.0, 4.0), seed=1)


def _our_seg_nrrd(labels: LabelVolume, ct_array, path):
    """What `run` writes: Kidney left = 1, Kidney right = 2, Tumor = 3."""
    from SculptorGANLib.core.anatomy import crops_to_full, structure_crops
    from SculptorGANLib.outputs.results import structure_labelmap

    masks = crops_to_full(structure_crops(labels, ct_array), labels.shape)
    seg = structure_labelmap(labels, masks)
    assert seg.labels == {1: "kidney_left", 2: "kidney_right", 3: "tumor"}
    return write_volume(seg, path)


def test_own_seg_nrrd_reads_back_as_the_same_labelmap(tmp_path, phantom):
    ct, labels = phantom
    back = read_labels(_our_seg_nrrd(labels, ct.array, tmp_path / "s.seg.nrrd"))
    assert np.array_equal(back.array, labels.array) and back.same_grid(labels)
    assert dict(back.labels) == {KIDNEY: "kidney", TUMOR: "tumor"}


def test_surfaces_on_own_seg_nrrd_keeps_both_kidneys(tmp_path, phantom, capsys):
    ct, labels = phantom
    path = _our_seg_nrrd(labels, ct.array, tmp_path / "s.seg.nrrd")
    assert main(["surfaces", str(path), str(tmp_path / "m"), "--quiet"]) == 0
    capsys.readouterr()
    assert {"kidney_left.stl", "kidney_right.stl", "tumor.stl"} <= {p.name for p in (tmp_path / "m").iterdir()}


def test_evaluate_own_seg_nrrd_against_its_nifti_is_perfect(tmp_path, phantom, capsys):
    ct, labels = phantom
    path = _our_seg_nrrd(labels, ct.array, tmp_path / "s.seg.nrrd")
    gt = write_volume(labels, tmp_path / "s.nii.gz")
    assert main(["evaluate", str(path), str(gt), "--out", str(tmp_path / "ev")]) == 0
    capsys.readouterr()
    case = json.loads((tmp_path / "ev" / "per_case.json").read_text())[0]
    assert case["kidney"]["dice"] == pytest.approx(1.0) and case["tumor"]["dice"] == pytest.approx(1.0)


def test_slicer_file_with_tumor_as_value_1(tmp_path, phantom):
    _, labels = phantom
    array = np.zeros(labels.shape, np.uint8)
    array[labels.array == TUMOR] = 1
    array[labels.array == KIDNEY] = 2
    path = write_volume(LabelVolume(array, labels.geometry, labels={1: "tumor", 2: "kidney"}), tmp_path / "t.seg.nrrd")
    assert np.array_equal(read_labels(path).array, labels.array)


def test_terminology_wins_over_a_vague_name(tmp_path, phantom):
    import nrrd

    _, labels = phantom
    swapped = np.zeros(labels.shape, np.uint8)  # Tumor = 1, Kidney = 2, as a Slicer user may have it
    swapped[labels.array == TUMOR] = 1
    swapped[labels.array == KIDNEY] = 2
    path = write_volume(LabelVolume(swapped, labels.geometry, labels={1: "tumor", 2: "kidney"}), tmp_path / "x.seg.nrrd")
    data, header = nrrd.read(str(path), index_order="C")
    assert "Neoplasm" in header["Segment0_Tags"] and "Kidney" in header["Segment1_Tags"]
    header["Segment0_Name"], header["Segment1_Name"] = "Segment_1", "Segment_2"  # names say nothing
    nrrd.write(str(path), data, header, index_order="C")
    assert np.array_equal(read_labels(path).array, labels.array)


def test_layered_seg_nrrd_with_overlapping_segments(tmp_path, phantom):
    """Slicer stores overlapping segments in separate layers (a 4D file); each is read from its own layer."""
    import nrrd

    _, labels = phantom
    kidney_with_tumor = (labels.array > 0).astype(np.uint8)     # kidney segment includes the tumor
    tumor = (labels.array == TUMOR).astype(np.uint8)
    data = np.stack([kidney_with_tumor, tumor * 5], axis=-1)    # (z, y, x, layer)
    g = labels.geometry
    axes = g.direction_matrix @ np.diag(g.spacing)
    header = {"type": "unsigned char", "dimension": 4, "space": "left-posterior-superior",
              "space directions": np.vstack([np.full(3, np.nan), axes.T]), "space origin": np.asarray(g.origin),
              "kinds": ["list", "domain", "domain", "domain"],  # header fields are in NRRD (file) axis order
              "Segment0_ID": "a", "Segment0_Name": "Kidney", "Segment0_Layer": "0", "Segment0_LabelValue": "1",
              "Segment1_ID": "b", "Segment1_Name": "Tumor", "Segment1_Layer": "1", "Segment1_LabelValue": "5"}
    path = tmp_path / "layers.seg.nrrd"
    nrrd.write(str(path), data, header, index_order="C")
    back = read_labels(path)
    assert np.array_equal(back.array, labels.array) and back.same_grid(labels)


def test_seg_nrrd_without_kidney_or_tumor_is_refused(tmp_path, phantom):
    from SculptorGANLib.core.errors import InputError

    _, labels = phantom
    path = write_volume(LabelVolume((labels.array > 0).astype(np.uint8), labels.geometry, labels={1: "liver"}),
                        tmp_path / "liver.seg.nrrd")
    with pytest.raises(InputError, match="Liver"):
        read_labels(path)


def test_structure_values_are_fixed_whichever_structures_were_found(phantom):
    """One encoding: Tumor is 3 in a .seg.nrrd even when only one kidney was found (not the next free value)."""
    from SculptorGANLib.core.structures import BY_NAME
    from SculptorGANLib.outputs.results import structure_labelmap

    _, labels = phantom
    masks = {"kidney_left": labels.array == KIDNEY, "tumor": labels.array == TUMOR}
    seg = structure_labelmap(labels, masks)
    assert seg.labels == {BY_NAME["kidney_left"].value: "kidney_left", BY_NAME["tumor"].value: "tumor"} == {
        1: "kidney_left", 3: "tumor"}
    assert set(np.unique(seg.array)) == {0, 1, 3}
