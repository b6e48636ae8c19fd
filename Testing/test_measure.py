"""Measurements on analytic shapes: sphere sizes, tumor contact fractions, distances, table and CSV."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from SculptorGANLib.measure.structures import (contact_areas, max_diameter_mm, measure_structures, measurements_table,
                                    write_measurements_csv)
from SculptorGANLib.surfaces.meshing import labelmap_to_meshes
from SculptorGANLib.core.volume import KIDNEY, TUMOR, Geometry, LabelVolume

GEOMETRY = Geometry(spacing=(1.0, 1.0, 1.0), origin=(-40.0, -40.0, -40.0))


def sphere_labels(radius=20.0, shape=(80, 80, 80)):
    zyx = np.indices(shape).reshape(3, -1).T
    lps = GEOMETRY.index_to_physical(zyx[:, ::-1])
    mask = (np.linalg.norm(lps, axis=1) <= radius).reshape(shape)
    return LabelVolume(np.where(mask, TUMOR, 0).astype(np.uint8), GEOMETRY)


def test_sphere_measurements():
    labels = sphere_labels(20.0)
    meshes = labelmap_to_meshes(labels)
    result = measure_structures(labels, meshes)
    json.dumps(result)
    tumor = result["structures"]["tumor"]
    assert tumor["volume_ml"] == pytest.approx(4 / 3 * np.pi * 20 ** 3 / 1000, rel=0.02)
    assert tumor["mesh_volume_ml"] == pytest.approx(tumor["volume_ml"], rel=0.03)
    assert tumor["surface_area_mm2"] == pytest.approx(4 * np.pi * 20 ** 2, rel=0.05)
    assert tumor["max_diameter_mm"] == pytest.approx(40.0, abs=1.0)
    np.testing.assert_allclose(tumor["centroid_lps_mm"], [0, 0, 0], atol=0.05)
    np.testing.assert_allclose(tumor["bbox_lps_mm"]["min"], [-20] * 3, atol=1.0)
    np.testing.assert_allclose(tumor["bbox_lps_mm"]["max"], [20] * 3, atol=1.0)
    # No kidney: entirely exophytic, no distance.
    assert result["tumor"]["exophytic_fraction"] == 1.0 and "host_kidney" not in result["tumor"]


def test_max_diameter_exact_on_box_corners():
    corners = np.array([[x, y, z] for x in (0, 3) for y in (0, 4) for z in (0, 12)], float)
    inner = np.random.default_rng(0).uniform(0, 3, (500, 3))
    assert max_diameter_mm(np.vstack([corners, inner])) == pytest.approx(13.0)


def _kidney_with_cube_tumor(depth: int):
    """A 40×40×40 voxel kidney block on the patient's left, a 10-voxel cube tumor sunk ``depth`` voxels in."""
    arr = np.zeros((80, 80, 100), np.uint8)
    arr[20:60, 20:60, 45:75] = KIDNEY  # x index 45..74: LPS x > 0 → patient left
    arr[35:45, 35:45, 75 - depth:85 - depth] = TUMOR
    return LabelVolume(arr, GEOMETRY)


@pytest.mark.parametrize("depth, contact, score", [(5, 0.5, 1), (10, 5 / 6, 2), (20, 1.0, 3), (0, 1 / 6, 1)])
def test_tumor_contact_fraction_and_renal_category(depth, contact, score):
    labels = _kidney_with_cube_tumor(depth)
    result = measure_structures(labels, {})
    tumor = result["tumor"]
    assert tumor["kidney_contact_fraction"] == pytest.approx(contact, abs=1e-3)
    assert tumor["exophytic_fraction"] == pytest.approx(1 - contact, abs=1e-3)
    assert tumor["renal_exophytic_score"] == score
    assert tumor["host_kidney"] == "kidney_left"


def test_distance_to_kidney_centre():
    labels = _kidney_with_cube_tumor(5)
    meshes = labelmap_to_meshes(labels, smoothing=0.0)
    tumor = measure_structures(labels, meshes)["tumor"]
    centre = np.asarray(tumor["kidney_centre_lps_mm"])
    kidney_voxels = GEOMETRY.index_to_physical(np.argwhere(labels.array == KIDNEY)[:, ::-1])
    np.testing.assert_allclose(centre, kidney_voxels.mean(axis=0), atol=0.01)
    # Tumor cube spans x index 70..79 → its face at x = 69.5 - 40 = 29.5 mm (LPS); centre near y, z of cube.
    expected = 29.5 - centre[0]
    assert tumor["min_distance_to_kidney_centre_mm"] == pytest.approx(expected, abs=0.6)
    # A tumor around the kidney centre has distance 0.
    arr = labels.array.copy()
    arr[36:44, 36:44, 56:64] = TUMOR
    inner = measure_structures(LabelVolume(arr, GEOMETRY), labelmap_to_meshes(LabelVolume(arr, GEOMETRY)))
    assert inner["tumor"]["min_distance_to_kidney_centre_mm"] == 0.0
    assert inner["tumor"]["components"] == 2


def test_contact_areas_respect_anisotropic_spacing():
    ids = np.zeros((5, 5, 5), np.uint8)
    ids[2, 2, 2] = 1
    ids[3, 2, 2] = 2  # neighbour along z
    areas = contact_areas(ids, 1, (3.0, 1.0, 2.0))  # spacing z, y, x
    assert areas[2] == pytest.approx(1.0 * 2.0)
    assert sum(areas.values()) == pytest.approx(2 * (1 * 2) + 2 * (3 * 2) + 2 * (3 * 1))


def test_table_and_csv(tmp_path):
    labels = _kidney_with_cube_tumor(5)
    result = measure_structures(labels, labelmap_to_meshes(labels))
    table = measurements_table(result)
    assert "kidney_left" in table and "tumor" in table and "exophytic 50%" in table and "RENAL E=1" in table
    path = write_measurements_csv(result, tmp_path / "m.csv")
    rows = list(csv.DictReader(open(path, encoding="utf-8")))
    assert [r["structure"] for r in rows] == ["kidney_left", "tumor"]
    assert float(rows[1]["tumor_kidney_contact_fraction"]) == pytest.approx(0.5)
    assert float(rows[0]["volume_ml"]) == pytest.approx((40 * 40 * 30 - 10 * 10 * 5) / 1000)


def _box_mesh(lo, hi):
    """Closed, outward triangle mesh of an axis-aligned box (8 points, 12 triangles)."""
    corners = np.array([[x, y, z] for z in (lo[2], hi[2]) for y in (lo[1], hi[1]) for x in (lo[0], hi[0])], float)
    quads = [(0, 2, 3, 1), (4, 5, 7, 6), (0, 1, 5, 4), (2, 6, 7, 3), (0, 4, 6, 2), (1, 3, 7, 5)]
    return corners, np.array([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))], np.int64)


@pytest.mark.parametrize("point, expected", [
    ((5, 5, 5), -5.0),            # centre of the 10 mm box: 5 mm inside
    ((5, 5, 9), -1.0),            # 1 mm under the top face
    ((5, 5, 13), 3.0),            # 3 mm above the top face (closest point inside a face)
    ((13, 5, 14), 5.0),           # beside an edge: 3-4-5 triangle
    ((-1, -2, -2), 3.0),          # beyond a corner: sqrt(1 + 4 + 4)
])
def test_signed_distance_to_a_closed_mesh(point, expected):
    from SculptorGANLib.surfaces.meshutil import point_to_mesh_distance

    points, triangles = _box_mesh((0, 0, 0), (10, 10, 10))
    assert point_to_mesh_distance(points, triangles, np.array(point, float)) == pytest.approx(expected, abs=1e-9)
    # inside/outside by winding number: the triangles' orientation does not matter
    assert point_to_mesh_distance(points, triangles[:, ::-1], np.array(point, float)) == pytest.approx(expected, abs=1e-9)
