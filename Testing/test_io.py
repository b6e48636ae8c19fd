"""IO round trips keep geometry exactly; DICOM gaps are detected; real files read with their own axes."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from SculptorGANLib.core.errors import InputError
from SculptorGANLib.io.volumes import read_ct, read_labels, write_volume
from SculptorGANLib.core.volume import CTVolume, LabelVolume

from conftest import shared_data, write_dicom_series


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_ct_round_trip_keeps_oblique_geometry(tmp_path, oblique_geometry, suffix):
    array = np.random.default_rng(0).normal(0, 100, (7, 9, 11)).astype(np.float32)
    ct = CTVolume(array, oblique_geometry)
    back = read_ct(write_volume(ct, tmp_path / f"ct{suffix}"))
    assert back.same_grid(ct)
    np.testing.assert_allclose(back.array, array, atol=1e-4)


@pytest.mark.parametrize("suffix", [".nii.gz", ".seg.nrrd"])
def test_labels_round_trip(tmp_path, oblique_geometry, suffix):
    array = np.zeros((6, 8, 10), np.uint8)
    array[1:4, 2:5, 3:7] = 1
    array[2, 3, 4] = 2
    labels = LabelVolume(array, oblique_geometry)
    back = read_labels(write_volume(labels, tmp_path / f"seg{suffix}"))
    assert back.same_grid(labels)
    assert np.array_equal(back.array, array)
    assert back.labels == {1: "kidney", 2: "tumor"}


def test_seg_nrrd_is_readable_by_itk_with_same_geometry(tmp_path, oblique_geometry):
    array = np.zeros((4, 5, 6), np.uint8)
    array[1:3, 1:4, 2:5] = 2
    path = write_volume(LabelVolume(array, oblique_geometry), tmp_path / "s.seg.nrrd")
    image = sitk.ReadImage(str(path))
    np.testing.assert_allclose(image.GetSpacing(), oblique_geometry.spacing, atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), oblique_geometry.origin, atol=1e-6)
    np.testing.assert_allclose(image.GetDirection(), oblique_geometry.direction, atol=1e-6)
    assert np.array_equal(sitk.GetArrayFromImage(image), array)
    header = path.read_bytes()[:4000].decode("latin-1")
    assert "Segment1_Name:=Tumor" in header and "Segment0_Name:=Kidney" in header and "SCT^108369006" in header


def test_dicom_series_with_missing_slices(tmp_path):
    full = np.arange(8)[:, None, None] * 10 + np.zeros((8, 6, 5))
    kept = [0, 1, 2, 4, 5, 7]  # slices 3 and 6 missing
    write_dicom_series(tmp_path / "dcm", full[kept], (0.7, 0.7), [2.5 * k + 0.25 for k in kept], origin_xy=(-10.0, -20.0))
    ct = read_ct(tmp_path / "dcm")
    assert ct.shape == (8, 6, 5)
    assert ct.missing_slices == (3, 6)
    np.testing.assert_allclose(ct.geometry.spacing, (0.7, 0.7, 2.5), atol=1e-4)
    np.testing.assert_allclose(ct.geometry.origin, (-10, -20, 0.25), atol=1e-4)
    np.testing.assert_allclose(ct.array[kept, 0, 0], full[kept, 0, 0])
    np.testing.assert_allclose(ct.array[3, 0, 0], 30)  # linear placeholder between 2 and 4


def test_dicom_folder_without_series_is_an_input_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no DICOM series"):
        read_ct(tmp_path / "empty")


def test_real_kits_mask_geometry_comes_from_the_file():
    path = shared_data("kits19_seg", "case_00004.nii.gz")
    labels = read_labels(path)
    image = sitk.ReadImage(str(path))
    assert labels.shape == sitk.GetArrayFromImage(image).shape
    # KiTS stores (z, y, x) in the NIfTI's first axis: the 4 mm slice step sits on index axis x.
    assert max(labels.geometry.spacing) == pytest.approx(4.0, abs=1e-3)
    assert set(np.unique(labels.array)) <= {0, 1, 2}
    assert labels.volumes_ml()["kidney"] > 50


def test_real_ct_reads_in_hu():
    ct = read_ct(shared_data("totalseg", "example_ct.nii.gz"))
    assert -1300 < ct.array.min() < -900 and ct.array.max() > 500
    assert -200 < np.median(ct.array) < 0  # fat-dominated abdomen: values are HU, not rescaled
    assert ct.geometry.spacing == pytest.approx((3.0, 3.0, 3.0), abs=0.01)


def test_reading_dicom_keeps_the_text_encoding(tmp_path):
    import locale

    before = locale.setlocale(locale.LC_CTYPE)
    write_dicom_series(tmp_path / "d", np.zeros((3, 4, 4)), (0.5, 0.5), [0.75, 1.75, 2.75])
    read_ct(tmp_path / "d")
    assert locale.setlocale(locale.LC_CTYPE) == before
