"""Labelmap → one closed, smoothed, outward-oriented surface per structure, in LPS millimetres.

The recipe follows 3D Slicer's binary-labelmap → closed-surface conversion: contour a cropped, padded
mask (VTK discrete flying edges, or surface nets), optionally decimate, smooth with a windowed-sinc
filter whose pass band is ``10 ** (-4 * smoothing)`` (Slicer's 0–1 "smoothing factor"), then map to
physical space and add normals. Extras:

* ``joint=True`` meshes all structures at once with multi-label surface nets and smooths the joint
  mesh, so neighbouring structures (tumor in kidney) share their interface exactly and cannot
  intersect;
* ``interpolate="auto"`` applies shape-based interpolation (:mod:`.shape_interpolation`) to masks
  acquired on thick slices, and contours the interpolated signed distance at sub-voxel precision,
  so models are not staircased.

Writers live in :mod:`.mesh_export` and are re-exported here.
"""
from __future__ import annotations

import numpy as np
import vtk
from vtk.util.numpy_support import numpy_to_vtk, vtk_to_numpy

from ..core.anatomy import StructureCrops, bounding_box, padded_crop, padded_structure_crops, shifted_geometry
from .meshutil import add_point_normals, compact, mesh_arrays, polydata_from_arrays, signed_volume_mm3
from .shape_interpolation import shape_interpolate, shape_interpolate_labels, thick_axis, upsample_factor
from ..core.volume import Geometry, LabelVolume

METHODS = ("flying_edges", "surface_nets")
#: Windowed-sinc iterations, as in Slicer ("ten or twenty iterations is all that is usually necessary").
SMOOTHING_ITERATIONS = 20


# --------------------------------------------------------------------------- VTK stages
def _image(array: np.ndarray, spacing_xyz: tuple[float, float, float]) -> vtk.vtkImageData:
    """vtkImageData at origin 0 with identity axes (index scaled by spacing)."""
    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    image.SetSpacing(spacing_xyz)
    vtk_type = vtk.VTK_FLOAT if array.dtype == np.float32 else vtk.VTK_UNSIGNED_CHAR
    image.GetPointData().SetScalars(numpy_to_vtk(np.ascontiguousarray(array).ravel(), deep=True, array_type=vtk_type))
    return image


def _contour(array: np.ndarray, spacing_xyz, method: str) -> vtk.vtkPolyData:
    """Triangle surface of a uint8 mask (discrete) or of the zero level of a float32 signed distance."""
    image = _image(array, spacing_xyz)
    if array.dtype == np.float32:
        contour = vtk.vtkFlyingEdges3D()
        contour.SetValue(0, 0.0)
    elif method == "surface_nets":
        contour = vtk.vtkSurfaceNets3D()
        contour.SetValue(0, 1)
        contour.SmoothingOff()
        contour.SetOutputMeshTypeToTriangles()
    elif method == "flying_edges":
        contour = vtk.vtkDiscreteFlyingEdges3D()
        contour.SetValue(0, 1)
    else:
        raise ValueError(f"unknown surface method {method!r}; use one of {', '.join(METHODS)}")
    if hasattr(contour, "ComputeNormalsOff"):
        contour.ComputeNormalsOff()
        contour.ComputeGradientsOff()
        contour.ComputeScalarsOff()
    contour.SetInputData(image)
    contour.Update()
    return contour.GetOutput()


def _decimate(mesh: vtk.vtkPolyData, reduction: float) -> vtk.vtkPolyData:
    """Remove about ``reduction`` (0–1) of the triangles, keeping topology (Slicer's decimation factor)."""
    if reduction <= 0 or mesh.GetNumberOfCells() == 0:
        return mesh
    dec = vtk.vtkDecimatePro()
    dec.SetInputData(mesh)
    dec.SetTargetReduction(min(float(reduction), 0.99))
    dec.PreserveTopologyOn()
    dec.SplittingOff()
    dec.BoundaryVertexDeletionOff()
    dec.Update()
    return dec.GetOutput()


def smoothing_pass_band(smoothing: float) -> float:
    """Windowed-sinc pass band for Slicer's 0–1 smoothing factor."""
    return 10.0 ** (-4.0 * float(smoothing))


def _smooth(mesh: vtk.vtkPolyData, smoothing: float) -> vtk.vtkPolyData:
    """Windowed-sinc smoothing (Taubin-style, volume-preserving low-pass), Slicer's settings."""
    if smoothing <= 0 or mesh.GetNumberOfCells() == 0:
        return mesh
    smoother = vtk.vtkWindowedSincPolyDataFilter()
    smoother.SetInputData(mesh)
    smoother.SetNumberOfIterations(SMOOTHING_ITERATIONS)
    smoother.SetPassBand(smoothing_pass_band(min(smoothing, 1.0)))
    smoother.BoundarySmoothingOff()
    smoother.FeatureEdgeSmoothingOff()
    smoother.SetFeatureAngle(120.0)
    smoother.NonManifoldSmoothingOn()
    smoother.NormalizeCoordinatesOn()
    smoother.Update()
    return smoother.GetOutput()


def _to_physical(points: np.ndarray, triangles: np.ndarray, geometry: Geometry, normals: bool) -> vtk.vtkPolyData:
    """Map spacing-scaled index points of a crop (``geometry`` = crop grid) to LPS; face outward."""
    direction = geometry.direction_matrix
    points = points @ direction.T + np.asarray(geometry.origin)
    if signed_volume_mm3(points, triangles) < 0:  # contour convention or a mirroring direction matrix
        triangles = triangles[:, ::-1]
    mesh = polydata_from_arrays(points, triangles)
    return add_point_normals(mesh) if normals else mesh


def _surface_from_crop(array: np.ndarray, geometry: Geometry, spacing_xyz, method: str, smoothing: float,
                       decimation: float, normals: bool) -> vtk.vtkPolyData:
    mesh = _contour(array, spacing_xyz, method)
    mesh = _smooth(_decimate(mesh, decimation), smoothing)
    points, triangles = mesh_arrays(mesh)
    return _to_physical(points, triangles, geometry, normals)


# --------------------------------------------------------------------------- public API
def mask_to_mesh(mask: np.ndarray, geometry: Geometry, smoothing: float = 0.5, method: str = "flying_edges",
                 decimation: float = 0.0, interpolate: str | bool | float = "auto", normals: bool = True,
                 offset_zyx: np.ndarray | None = None) -> vtk.vtkPolyData:
    """Closed, smoothed, outward-oriented triangle surface of a binary mask, in LPS millimetres.

    ``smoothing``: Slicer's 0–1 smoothing factor (0 = raw contour). ``method``: 'flying_edges'
    (discrete flying edges) or 'surface_nets'. ``decimation``: fraction of triangles to remove.
    ``interpolate``: 'auto' (shape-based interpolation when one axis is > 1.5× the finest spacing),
    False, True, or a target slice spacing in mm. ``offset_zyx``: where ``mask`` (a crop) starts in
    ``geometry``'s grid; masks are cropped here otherwise.
    """
    mask = np.asarray(mask, dtype=bool)
    if offset_zyx is None:
        box = bounding_box(mask)
        if box is None:
            return polydata_from_arrays(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64))
        mask, offset_zyx = padded_crop(mask, *box)
    crop_geometry = shifted_geometry(geometry, offset_zyx)
    spacing_zyx = tuple(geometry.spacing[::-1])
    axis = _interpolation_axis(spacing_zyx, interpolate)
    if axis is None:
        return _surface_from_crop(mask.astype(np.uint8), crop_geometry, geometry.spacing, method, smoothing,
                                  decimation, normals)
    factor = upsample_factor(spacing_zyx, axis, interpolate if _is_number(interpolate) else None)
    field = shape_interpolate(mask, spacing_zyx, axis, factor)
    spacing_xyz = list(geometry.spacing)
    spacing_xyz[2 - axis] /= factor
    return _surface_from_crop(field, crop_geometry, tuple(spacing_xyz), method, smoothing, decimation, normals)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _interpolation_axis(spacing_zyx, interpolate) -> int | None:
    if interpolate is False or interpolate is None:
        return None
    axis = thick_axis(spacing_zyx)
    if axis is None and (interpolate is True or _is_number(interpolate)):
        axis = int(np.argmax(spacing_zyx))
    if axis is not None and _is_number(interpolate) and spacing_zyx[axis] <= float(interpolate) * 1.01:
        return None
    return axis


def labelmap_to_meshes(labels: LabelVolume, ct_array: np.ndarray | None = None, smoothing: float = 0.5,
                       method: str = "flying_edges", joint: bool = False, decimation: float = 0.0,
                       interpolate: str | bool | float = "auto", normals: bool = True,
                       padded_crops: StructureCrops | None = None) -> dict[str, vtk.vtkPolyData]:
    """One closed LPS surface per structure ('kidney_left', 'kidney_right', 'tumor', others by name).

    See :func:`mask_to_mesh` for the options. ``joint=True`` meshes all structures together with
    multi-label surface nets (``method`` is then ignored) so shared interfaces coincide exactly.
    ``ct_array`` (same grid) only serves to find the body midline for the left/right split;
    ``padded_crops`` reuses an :func:`.anatomy.padded_structure_crops` result instead of splitting again.
    """
    structures = padded_crops if padded_crops is not None else padded_structure_crops(labels, ct_array)
    if not structures:
        return {}
    if joint:
        return _joint_meshes(structures, labels.geometry, smoothing, decimation, interpolate, normals)
    return {name: mask_to_mesh(mask, labels.geometry, smoothing, method, decimation, interpolate, normals, offset)
            for name, (mask, offset) in structures.items()}


def _joint_meshes(structures: dict[str, tuple[np.ndarray, np.ndarray]], geometry: Geometry, smoothing: float,
                  decimation: float, interpolate, normals: bool) -> dict[str, vtk.vtkPolyData]:
    """Multi-label flying edges → shared interfaces → joint windowed-sinc smoothing → per-structure surfaces."""
    names = list(structures)
    lo = np.min([off for _, off in structures.values()], axis=0)
    hi = np.max([off + np.asarray(m.shape) for m, off in structures.values()], axis=0)
    combined = np.zeros(tuple(hi - lo), dtype=np.uint8)
    for value, name in enumerate(names, start=1):
        mask, off = structures[name]
        start = off - lo
        region = combined[start[0]:start[0] + mask.shape[0], start[1]:start[1] + mask.shape[1],
                          start[2]:start[2] + mask.shape[2]]
        region[mask] = value
    spacing_zyx = tuple(geometry.spacing[::-1])
    spacing_xyz = list(geometry.spacing)
    axis = _interpolation_axis(spacing_zyx, interpolate)
    if axis is not None:
        factor = upsample_factor(spacing_zyx, axis, interpolate if _is_number(interpolate) else None)
        combined = shape_interpolate_labels(combined, spacing_zyx, axis, factor)
        spacing_xyz[2 - axis] /= factor
    points, triangles, pair = _multilabel_surface(combined, tuple(spacing_xyz), len(names))
    joint_mesh = _smooth(polydata_from_arrays(points, triangles), smoothing)
    points = mesh_arrays(joint_mesh)[0]
    crop_geometry = shifted_geometry(geometry, lo)
    meshes = {}
    for value, name in enumerate(names, start=1):
        tris = np.concatenate([triangles[pair[:, 0] == value], triangles[pair[:, 1] == value][:, ::-1]])
        pts, tris = compact(points, tris)
        mesh = _to_physical(pts, tris, crop_geometry, normals=False)
        if decimation > 0:  # per structure: interfaces stay close but no longer coincide exactly
            mesh = _decimate(mesh, decimation)
        meshes[name] = add_point_normals(mesh) if normals else mesh
    return meshes


def _multilabel_surface(labels: np.ndarray, spacing_xyz, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All label surfaces from one discrete flying edges pass, with interfaces stored once.

    Returns points, triangles and per-triangle (label, other label or 0): a triangle separating
    labels a and b appears once, oriented for a; b uses it reversed. Each label's own triangles keep
    the manifold topology of its flying-edges surface, so per-label meshes stay watertight.
    """
    contour = vtk.vtkDiscreteFlyingEdges3D()
    contour.SetInputData(_image(labels, spacing_xyz))
    for i in range(count):
        contour.SetValue(i, i + 1)
    contour.ComputeNormalsOff()
    contour.ComputeGradientsOff()
    contour.ComputeScalarsOn()
    contour.Update()
    output = contour.GetOutput()
    points, triangles = mesh_arrays(output)
    point_label = vtk_to_numpy(output.GetPointData().GetScalars()).astype(np.int64)
    # Interface points of two labels coincide (edge midpoints): merge them by their grid position.
    keys = np.round(points * (2.0 / np.asarray(spacing_xyz))).astype(np.int64)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    label = point_label[triangles[:, 0]]  # before merging: each label has its own points
    points = points[first]
    triangles = inverse[triangles]
    pair = np.stack([label, np.zeros_like(label)], axis=1)
    shared = np.bincount(inverse, minlength=len(points))[triangles].min(axis=1) > 1  # all 3 points merged
    if shared.any():
        idx = np.flatnonzero(shared)
        key = np.sort(triangles[idx], axis=1)
        _, group, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
        group = group.ravel()
        dup = counts[group] == 2
        order = np.argsort(group[dup], kind="stable")
        first_of_pair, second_of_pair = idx[dup][order][0::2], idx[dup][order][1::2]
        pair[first_of_pair, 1] = label[second_of_pair]
        keep = np.ones(len(triangles), dtype=bool)
        keep[second_of_pair] = False
        triangles, pair = triangles[keep], pair[keep]
    return points, triangles, pair

def mesh_volume_ml(mesh: vtk.vtkPolyData) -> float:
    """Enclosed volume of a closed, outward-oriented mesh in millilitres."""
    return abs(signed_volume_mm3(*mesh_arrays(mesh))) / 1000.0
