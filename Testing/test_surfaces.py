"""Surface models: watertight, outward, in LPS on the voxels, right volumes, joint smoothing, thick slices."""
from __future__ import annotations

import numpy as np
import pytest
from vtk.util.numpy_support import vtk_to_numpy

from SculptorGANLib.core.anatomy import padded_structure_crops, split_structures
from SculptorGANLib.surfaces.meshutil import edge_counts, is_watertight, mesh_arrays, orientation_consistent, signed_volume_mm3
from SculptorGANLib.synthetic.phantom import make_phantom, thick_labels
from SculptorGANLib.surfaces.shape_interpolation import interpolate_field, shape_interpolate_labels, thick_axis
from SculptorGANLib.surfaces.meshing import labelmap_to_meshes, mask_to_mesh, mesh_volume_ml
from SculptorGANLib.core.volume import Geometry, LabelVolume

# A rotated, mirrored (det = -1) direction matrix: columns are the x, y, z index axes in LPS.
_C, _S = np.cos(0.4), np.sin(0.4)
OBLIQUE = Geometry(spacing=(0.8, 0.9, 1.1), origin=(-31.0, 12.5, 240.0),
                   direction=np.array([[_C, -_S, 0], [_S, _C, 0], [0, 0, -1.0]]).ravel())


def sphere_mask(shape, geometry: Geometry, centre_lps, radius) -> np.ndarray:
    """Voxels (z, y, x) whose LPS centre lies within ``radius`` of ``centre_lps``."""
    zyx = np.indices(shape).reshape(3, -1).T
    lps = geometry.index_to_physical(zyx[:, ::-1])
    return (np.linalg.norm(lps - np.asarray(centre_lps), axis=1) <= radius).reshape(shape)


def voxel_centroid(mask, geometry):
    return geometry.index_to_physical(np.argwhere(mask)[:, ::-1]).mean(axis=0)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom()


@pytest.fixture(scope="module")
def oblique_sphere():
    shape = (40, 60, 60)
    centre = OBLIQUE.index_to_physical(np.array([29.5, 30.0, 19.5]))
    return sphere_mask(shape, OBLIQUE, centre, 15.0), centre


def assert_closed_outward(mesh):
    counts = edge_counts(mesh)
    assert counts == {"boundary_edges": 0, "non_manifold_edges": 0}, counts
    points, triangles = mesh_arrays(mesh)
    assert orientation_consistent(triangles)
    assert signed_volume_mm3(points, triangles) > 0  # normals point outward
    normals = mesh.GetPointData().GetNormals()
    assert normals is not None
    # Point normals agree with the (outward) triangle orientation around each vertex.
    face = np.cross(points[triangles[:, 1]] - points[triangles[:, 0]], points[triangles[:, 2]] - points[triangles[:, 0]])
    vertex = np.zeros_like(points)
    for i in range(3):
        np.add.at(vertex, triangles[:, i], face)
    assert np.mean(np.einsum("ij,ij->i", vtk_to_numpy(normals), vertex) > 0) > 0.99


@pytest.mark.parametrize("method", ["flying_edges", "surface_nets"])
def test_oblique_sphere_sits_on_its_voxels(oblique_sphere, method):
    mask, centre = oblique_sphere
    mesh = mask_to_mesh(mask, OBLIQUE, smoothing=0.5, method=method)
    points, triangles = mesh_arrays(mesh)
    if method == "flying_edges":
        assert_closed_outward(mesh)
    else:
        assert edge_counts(mesh)["boundary_edges"] == 0 and signed_volume_mm3(points, triangles) > 0
    voxel_ml = mask.sum() * np.prod(OBLIQUE.spacing) / 1000
    assert mesh_volume_ml(mesh) == pytest.approx(voxel_ml, rel=0.03)
    np.testing.assert_allclose(points.mean(axis=0), voxel_centroid(mask, OBLIQUE), atol=0.3)
    radii = np.linalg.norm(points - centre, axis=1)
    assert abs(radii.mean() - 15.0) < 0.5 and radii.std() < 0.5


def test_phantom_structures_are_watertight_with_voxel_volumes(phantom):
    ct, labels = phantom
    meshes = labelmap_to_meshes(labels, ct.array)
    masks = split_structures(labels, ct.array)
    assert set(meshes) == {"kidney_left", "kidney_right", "tumor"} == set(masks)
    for name, mesh in meshes.items():
        assert_closed_outward(mesh)
        voxel_ml = masks[name].sum() * labels.voxel_volume_ml
        if voxel_ml > 10:
            assert mesh_volume_ml(mesh) == pytest.approx(voxel_ml, rel=0.03), name
    # LPS: +x is the patient's left.
    assert mesh_arrays(meshes["kidney_left"])[0][:, 0].mean() > 0 > mesh_arrays(meshes["kidney_right"])[0][:, 0].mean()


def test_structure_masks_match_split_structures(phantom):
    ct, labels = phantom
    reference = split_structures(labels, ct.array)
    cropped = padded_structure_crops(labels, ct.array)
    assert set(cropped) == set(reference)
    for name, (mask, offset) in cropped.items():
        full = np.zeros(labels.shape, bool)
        lo = np.maximum(offset, 0)
        src = mask[lo[0] - offset[0]:, lo[1] - offset[1]:, lo[2] - offset[2]:]
        region = full[lo[0]:lo[0] + src.shape[0], lo[1]:lo[1] + src.shape[1], lo[2]:lo[2] + src.shape[2]]
        region |= src[:region.shape[0], :region.shape[1], :region.shape[2]]
        np.testing.assert_array_equal(full, reference[name])


def test_joint_smoothing_shares_the_tumor_kidney_interface(phantom):
    ct, labels = phantom

    def shared_vertices(meshes):
        kidney = {tuple(p) for p in np.round(mesh_arrays(meshes["kidney_right"])[0], 4)}
        return sum(tuple(p) in kidney for p in np.round(mesh_arrays(meshes["tumor"])[0], 4))

    joint = labelmap_to_meshes(labels, ct.array, joint=True)
    separate = labelmap_to_meshes(labels, ct.array)
    for mesh in joint.values():
        assert_closed_outward(mesh)
    assert shared_vertices(joint) > 100
    assert shared_vertices(separate) < shared_vertices(joint) / 10
    for name in joint:
        assert mesh_volume_ml(joint[name]) == pytest.approx(mesh_volume_ml(separate[name]), rel=0.02)


def test_smoothing_and_decimation_options(phantom):
    ct, labels = phantom
    raw = labelmap_to_meshes(labels, ct.array, smoothing=0.0)["tumor"]
    smooth = labelmap_to_meshes(labels, ct.array, smoothing=0.8)["tumor"]
    decimated = labelmap_to_meshes(labels, ct.array, decimation=0.6)["tumor"]
    assert is_watertight(decimated) and decimated.GetNumberOfCells() < 0.5 * raw.GetNumberOfCells()
    # Smoothing moves vertices off the voxel-face midpoint lattice (raw flying-edges points sit on it).
    lattice = np.asarray(labels.spacing) / 2

    def off_lattice(mesh):
        p = mesh_arrays(mesh)[0] - np.asarray(labels.geometry.origin)
        return np.abs(p / lattice - np.round(p / lattice)).max()
    assert off_lattice(raw) < 1e-3 < off_lattice(smooth)


def test_thick_slices_are_interpolated_not_staircased():
    thin_geometry = Geometry(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    centre, radius = np.array([32.0, 32.0, 40.0]), 20.0
    thin = sphere_mask((81, 64, 64), thin_geometry, centre, radius)
    thick = thick_labels(LabelVolume(thin.astype(np.uint8), thin_geometry), 5)
    assert thick_axis(thick.spacing[::-1]) == 0

    def radial_error(mesh):
        return np.abs(np.linalg.norm(mesh_arrays(mesh)[0] - centre, axis=1) - radius)

    stairs = mask_to_mesh(thick.array > 0, thick.geometry, smoothing=0.5, interpolate=False)
    shaped = mask_to_mesh(thick.array > 0, thick.geometry, smoothing=0.5)  # 'auto'
    assert_closed_outward(shaped)
    assert radial_error(shaped).mean() < 0.6 * radial_error(stairs).mean()
    assert radial_error(shaped).max() < 2.5
    thin_ml = thin.sum() / 1000
    assert mesh_volume_ml(shaped) == pytest.approx(thin_ml, rel=0.05)


def test_interpolate_field_keeps_end_slices():
    field = np.arange(3, dtype=np.float32)[:, None, None] * np.ones((3, 2, 2), np.float32)
    out = interpolate_field(field, 0, 4)
    assert out.shape == (9, 2, 2)
    np.testing.assert_allclose(out[:, 0, 0], np.arange(9) / 4)


def test_shape_interpolate_labels_keeps_both_labels():
    labels = np.zeros((5, 20, 20), np.uint8)
    labels[1:4, 4:16, 4:16] = 1
    labels[2, 8:12, 8:12] = 2
    out = shape_interpolate_labels(labels, (4.0, 1.0, 1.0), 0, 4)
    assert out.shape == (17, 20, 20)
    assert set(np.unique(out)) == {0, 1, 2}
    assert out[8, 10, 10] == 2 and out[8, 5, 5] == 1 and out[0].max() == 0


def test_empty_labelmap_gives_no_meshes():
    assert labelmap_to_meshes(LabelVolume(np.zeros((8, 8, 8), np.uint8))) == {}
