"""Labelmap → closed surface meshes in physical (LPS) space, and mesh writers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import vtk
from vtk.util.numpy_support import numpy_to_vtk

from .anatomy import split_structures
from .errors import OutputError
from .volume import Geometry, LabelVolume

MESH_FORMATS = ("stl", "obj", "ply", "vtp")


def _mask_to_image(mask: np.ndarray, spacing: tuple[float, float, float]) -> tuple[vtk.vtkImageData, np.ndarray]:
    """Crop ``mask`` to its bounding box plus a 1-voxel margin; return it as vtkImageData and the offset (zyx)."""
    nz = np.argwhere(mask)
    lo = np.maximum(nz.min(axis=0) - 1, 0)
    hi = nz.max(axis=0) + 2
    crop = np.zeros(tuple(hi - lo + 1), dtype=np.uint8)
    crop[1:-1, 1:-1, 1:-1] = 0  # ensure a zero border
    sub = mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    crop[1:1 + sub.shape[0], 1:1 + sub.shape[1], 1:1 + sub.shape[2]] = sub
    offset = lo - 1
    image = vtk.vtkImageData()
    image.SetDimensions(crop.shape[2], crop.shape[1], crop.shape[0])
    image.SetSpacing(spacing)
    image.SetOrigin(0.0, 0.0, 0.0)
    image.GetPointData().SetScalars(numpy_to_vtk(crop.ravel(), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR))
    return image, offset


def _index_to_lps_transform(geometry: Geometry, offset_zyx: np.ndarray) -> vtk.vtkTransform:
    """Rigid part of the voxel→LPS map for points already scaled by spacing, shifted by the crop offset."""
    direction = geometry.direction_matrix
    origin = np.asarray(geometry.origin) + direction @ (np.asarray(geometry.spacing) * offset_zyx[::-1])
    matrix = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            matrix.SetElement(r, c, direction[r, c])
        matrix.SetElement(r, 3, origin[r])
    transform = vtk.vtkTransform()
    transform.SetMatrix(matrix)
    return transform


def mask_to_mesh(mask: np.ndarray, geometry: Geometry, smoothing: float = 0.5) -> vtk.vtkPolyData:
    """Closed, smoothed triangle surface of a binary mask, in LPS millimetres.

    ``smoothing`` is Slicer's 0–1 smoothing factor (windowed-sinc pass band 10^(-4·factor)).
    """
    image, offset = _mask_to_image(mask, geometry.spacing)
    contour = vtk.vtkDiscreteFlyingEdges3D()
    contour.SetInputData(image)
    contour.SetValue(0, 1)
    contour.ComputeNormalsOff()
    contour.ComputeGradientsOff()
    output = contour.GetOutputPort()
    if smoothing > 0:
        smoother = vtk.vtkWindowedSincPolyDataFilter()
        smoother.SetInputConnection(output)
        smoother.SetNumberOfIterations(20)
        smoother.SetPassBand(10.0 ** (-4.0 * smoothing))
        smoother.BoundarySmoothingOff()
        smoother.FeatureEdgeSmoothingOff()
        smoother.NonManifoldSmoothingOn()
        smoother.NormalizeCoordinatesOn()
        output = smoother.GetOutputPort()
    transform = vtk.vtkTransformPolyDataFilter()
    transform.SetInputConnection(output)
    transform.SetTransform(_index_to_lps_transform(geometry, offset))
    normals = vtk.vtkPolyDataNormals()
    normals.SetInputConnection(transform.GetOutputPort())
    normals.ConsistencyOn()
    normals.AutoOrientNormalsOn()
    normals.SplittingOff()
    normals.Update()
    mesh = vtk.vtkPolyData()
    mesh.DeepCopy(normals.GetOutput())
    return mesh


def labelmap_to_meshes(labels: LabelVolume, ct_array: np.ndarray | None = None,
                       smoothing: float = 0.5) -> dict[str, vtk.vtkPolyData]:
    """One mesh per structure ('kidney_left', 'kidney_right', 'tumor', other labels by name)."""
    return {name: mask_to_mesh(mask, labels.geometry, smoothing)
            for name, mask in split_structures(labels, ct_array).items()}


def mesh_volume_ml(mesh: vtk.vtkPolyData) -> float:
    props = vtk.vtkMassProperties()
    props.SetInputData(mesh)
    props.Update()
    return props.GetVolume() / 1000.0


def write_mesh(mesh: vtk.vtkPolyData, path: str | Path, ras: bool = False) -> Path:
    """Write STL (binary), OBJ, PLY or VTP by suffix; LPS coordinates unless ``ras``."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in MESH_FORMATS:
        raise OutputError(f"{path}: unknown mesh format; use one of {', '.join(MESH_FORMATS)}")
    if ras:
        flip = vtk.vtkTransform()
        flip.Scale(-1, -1, 1)
        f = vtk.vtkTransformPolyDataFilter()
        f.SetInputData(mesh)
        f.SetTransform(flip)
        # (-1, -1, 1) is a 180° rotation about z, so triangle orientation is preserved.
        f.Update()
        mesh = f.GetOutput()
    writer = {"stl": vtk.vtkSTLWriter, "obj": vtk.vtkOBJWriter, "ply": vtk.vtkPLYWriter,
              "vtp": vtk.vtkXMLPolyDataWriter}[fmt]()
    if fmt == "stl":
        writer.SetFileTypeToBinary()
        writer.SetHeader("SculptorGAN LPS" if not ras else "SculptorGAN RAS")
    writer.SetFileName(str(path))
    writer.SetInputData(mesh)
    if not writer.Write():
        raise OutputError(f"{path}: cannot be written")
    return path
