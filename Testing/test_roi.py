"""The kidney ROI (SculptorGANLib.core.roi): its forms (Slicer .mrk.json, JSON box, bounds), the crop
the pipeline makes (missing slices kept, first/last slice acquired) and the labels cleared outside the
exact (oblique) box; the CLI's --roi comes from the one options schema."""
from __future__ import annotations

import json

import numpy as np
import pytest

from SculptorGANLib.core.errors import InputError
from SculptorGANLib.core.roi import Roi, clear_outside, crop_to_roi, inside_mask, parse_roi, voxel_box
from SculptorGANLib.core.volume import CTVolume, Geometry, LabelVolume


def test_forms_agree(tmp_path):
    from_bounds = parse_roi("-10,30,0,20,5,45")
    assert from_bounds.center == (10.0, 10.0, 25.0)
    np.testing.assert_allclose(from_bounds.edge_matrix, np.diag([40.0, 20.0, 40.0]))
    as_dict = parse_roi({"center": [10, 10, 25], "size": [40, 20, 40]})
    assert as_dict == from_bounds
    ras = parse_roi({"coordinateSystem": "RAS", "center": [-10, -10, 25], "size": [40, 20, 40]})
    np.testing.assert_allclose(ras.center, from_bounds.center)
    np.testing.assert_allclose(np.abs(ras.edge_matrix), from_bounds.edge_matrix)
    assert parse_roi(json.dumps(from_bounds.to_dict())) == from_bounds
    assert parse_roi(None) is None and parse_roi("") is None


def test_slicer_markups_roi_file(tmp_path):
    """The .mrk.json Slicer writes for a ROI (LPS: first two rows of the orientation negated)."""
    c, s = np.cos(np.deg2rad(30)), np.sin(np.deg2rad(30))
    axes_ras = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    axes_lps = axes_ras.copy()
    axes_lps[:2] *= -1
    doc = {"@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/"
                      "Schema/markups-schema-v1.0.3.json#",
           "markups": [{"type": "ROI", "coordinateSystem": "LPS", "roiType": "Box", "center": [-12.0, 40.0, 7.5],
                        "orientation": axes_lps.ravel().tolist(), "size": [60.0, 50.0, 90.0], "insideOut": False}]}
    path = tmp_path / "R.mrk.json"
    path.write_text(json.dumps(doc))
    roi = parse_roi(str(path))
    assert roi.center == (-12.0, 40.0, 7.5)
    np.testing.assert_allclose(roi.edge_matrix, axes_lps * [60.0, 50.0, 90.0])
    inside = roi.center + axes_lps @ np.array([29.0, 0, 0])
    outside = roi.center + axes_lps @ np.array([31.0, 0, 0])
    assert roi.contains(inside) and not roi.contains(outside)
    doc["markups"][0]["insideOut"] = True
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="inside-out"):
        parse_roi(str(path))


@pytest.mark.parametrize("bad, words", [("1,2,3", "bounds"), ("0,1,5,2,0,1", "min < max"), ("{oops", "JSON"),
                                        ("missing.mrk.json", "cannot read")])
def test_bad_roi_is_a_one_line_input_error(bad, words):
    with pytest.raises(InputError, match=words):
        parse_roi(bad)


def _ct(shape=(20, 30, 40), missing=()):
    g = Geometry((1.0, 2.0, 3.0), (-20.0, -30.0, 0.0))
    array = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    return CTVolume(array, g, missing_slices=missing)


def test_crop_is_the_voxel_box_and_keeps_geometry():
    ct = _ct()
    roi = Roi.from_bounds([-10.2, 5.2, -20.0, 0.0, 9.0, 30.0])  # x 10..25, y 5..15, z 3..10 in voxels
    crop = crop_to_roi(ct, roi, margin_mm=0.0)
    z, y, x = voxel_box(roi, ct.geometry, ct.shape)
    assert (z.start, z.stop, y.start, y.stop, x.start, x.stop) == (3, 11, 5, 16, 10, 26)
    np.testing.assert_array_equal(crop.array, ct.array[3:11, 5:16, 10:26])
    np.testing.assert_allclose(crop.geometry.origin, ct.geometry.index_to_physical(np.array([10, 5, 3])))
    assert crop.geometry.spacing == ct.geometry.spacing
    with pytest.raises(InputError, match="does not overlap"):
        crop_to_roi(ct, Roi.from_bounds([500, 600, 0, 1, 0, 1]), margin_mm=0)


def test_crop_keeps_missing_slices_inside_and_starts_on_acquired_ones():
    ct = _ct(missing=(3, 4, 12))
    crop = crop_to_roi(ct, Roi.from_bounds([-10, 5, -20, 0, 9.5, 30.0]), margin_mm=0.0)  # z 3..10 → widened to 2
    assert crop.missing_slices == (1, 2)  # 3 and 4, re-indexed from the new first slice 2
    np.testing.assert_array_equal(crop.array[0], ct.array[2, 5:16, 10:26])


def test_labels_cleared_outside_an_oblique_box():
    g = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    labels = LabelVolume(np.ones((30, 40, 40), np.uint8), g)
    c, s = np.cos(np.deg2rad(45)), np.sin(np.deg2rad(45))
    roi = Roi((20.0, 20.0, 15.0), tuple((np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) * [20, 10, 10]).ravel()))
    cleared = clear_outside(labels, roi)
    k, j, i = np.nonzero(np.ones(labels.shape, bool))
    expected = roi.contains(g.index_to_physical(np.stack([i, j, k], 1).astype(float))).reshape(labels.shape)
    np.testing.assert_array_equal(cleared.array.astype(bool), expected)
    np.testing.assert_array_equal(inside_mask(roi, g, labels.shape), expected)
    assert 0 < expected.sum() < expected.size and labels.array.all()  # the input is untouched


def test_cli_offers_roi_from_the_schema():
    import argparse

    from SculptorGANLib.cli import build_parser
    from SculptorGANLib.core.options import add_arguments, options_from_args

    commands = build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001
    for name in ("run", "interpolate", "segment", "batch"):
        assert "--roi" in commands[name].format_help(), name
    parser = argparse.ArgumentParser()
    add_arguments(parser, ("roi",))
    options = options_from_args(parser.parse_args(["--roi", "0,10,0,10,0,10"]))
    assert options.roi == "0,10,0,10,0,10"
    with pytest.raises(InputError):
        options_from_args(parser.parse_args(["--roi", "0,10"]))


def test_pipeline_with_roi_crops_and_clears(small_phantom):
    """Segmentation restricted to a box around one side: faster input, nothing found outside it."""
    pytest.importorskip("torch")
    from SculptorGANLib.core.options import PipelineOptions
    from SculptorGANLib.pipeline import run_pipeline

    ct, _ = small_phantom
    g = ct.geometry
    nz, ny, nx = ct.shape
    left = g.index_to_physical(np.array([0.75 * (nx - 1), (ny - 1) / 2, (nz - 1) / 2]))
    roi = Roi(tuple(left), tuple(np.diag([nx * g.spacing[0] / 2, ny * g.spacing[1], nz * g.spacing[2]]).ravel()))
    result = run_pipeline(ct, PipelineOptions(steps=("segment",), device="cpu", roi=roi.to_dict()))
    assert result.ct.shape[2] < nx and result.input is ct and "roi" in result.methods
    assert result.labels.same_grid(result.ct)
    assert result.labels.array.any()
    np.testing.assert_array_equal(clear_outside(result.labels, roi).array, result.labels.array)
