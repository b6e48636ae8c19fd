"""Small numpy ⇄ VTK helpers for triangle meshes: arrays, orientation, watertightness checks."""
from __future__ import annotations

import numpy as np
import vtk
from vtk.util.numpy_support import numpy_to_vtk, numpy_to_vtkIdTypeArray, vtk_to_numpy


def mesh_arrays(mesh: vtk.vtkPolyData) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) float64 points and (M, 3) int64 triangles of a triangle-only polydata."""
    n_points = mesh.GetNumberOfPoints()
    points = vtk_to_numpy(mesh.GetPoints().GetData()).astype(np.float64) if n_points else np.zeros((0, 3))
    polys = mesh.GetPolys()
    if polys is None or polys.GetNumberOfCells() == 0:
        return points, np.zeros((0, 3), dtype=np.int64)
    offsets = vtk_to_numpy(polys.GetOffsetsArray())
    if not np.all(np.diff(offsets) == 3):
        raise ValueError("mesh has non-triangle polygons; triangulate it first")
    return points, vtk_to_numpy(polys.GetConnectivityArray()).astype(np.int64).reshape(-1, 3)


def polydata_from_arrays(points: np.ndarray, triangles: np.ndarray) -> vtk.vtkPolyData:
    """Triangle polydata from (N, 3) points and (M, 3) point indices."""
    pts = vtk.vtkPoints()
    pts.SetData(numpy_to_vtk(np.ascontiguousarray(points, dtype=np.float32), deep=True))
    cells = vtk.vtkCellArray()
    triangles = np.ascontiguousarray(triangles, dtype=np.int64)
    offsets = np.arange(0, 3 * len(triangles) + 1, 3, dtype=np.int64)
    cells.SetData(numpy_to_vtkIdTypeArray(offsets, deep=True),
                  numpy_to_vtkIdTypeArray(triangles.ravel(), deep=True))
    mesh = vtk.vtkPolyData()
    mesh.SetPoints(pts)
    mesh.SetPolys(cells)
    return mesh


def compact(points: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop points no triangle uses and renumber the triangles."""
    used, inverse = np.unique(triangles.ravel(), return_inverse=True)
    return points[used], inverse.reshape(-1, 3)


def signed_volume_mm3(points: np.ndarray, triangles: np.ndarray) -> float:
    """Enclosed volume by the divergence theorem: positive when triangles face outward."""
    if len(triangles) == 0:
        return 0.0
    centre = points.mean(axis=0)  # reduces round-off far from the origin
    a, b, c = (points[triangles[:, i]] - centre for i in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def surface_area_mm2(points: np.ndarray, triangles: np.ndarray) -> float:
    """Total triangle area."""
    if len(triangles) == 0:
        return 0.0
    a, b, c = (points[triangles[:, i]] for i in range(3))
    return float(0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1).sum())


def _segment_distances(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of point ``p`` to each segment a[i]–b[i] ((M, 3) arrays)."""
    ab = b - a
    t = np.clip(np.einsum("ij,ij->i", p - a, ab) / np.maximum(np.einsum("ij,ij->i", ab, ab), 1e-300), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[:, None] * ab), axis=1)


def point_to_mesh_distance(points: np.ndarray, triangles: np.ndarray, p: np.ndarray) -> float:
    """Signed distance of point ``p`` to a closed triangle mesh: negative inside.

    The magnitude is the exact distance to the nearest triangle; inside/outside comes from the mesh's
    winding number around ``p`` (the sum of the triangles' solid angles, Van Oosterom & Strackee), so
    neither normals nor the triangles' orientation are needed."""
    if len(triangles) == 0:
        return float("inf")
    p = np.asarray(p, np.float64)
    a, b, c = (points[triangles[:, k]] for k in range(3))
    normal = np.cross(b - a, c - a)
    area2 = np.einsum("ij,ij->i", normal, normal)
    height = np.einsum("ij,ij->i", p - a, normal) / np.sqrt(np.maximum(area2, 1e-300))
    foot = p - height[:, None] * normal / np.sqrt(np.maximum(area2, 1e-300))[:, None]
    # the foot of the perpendicular lies inside the triangle when it is left of all three edges
    inside = np.ones(len(triangles), bool)
    for u, v in ((a, b), (b, c), (c, a)):
        inside &= np.einsum("ij,ij->i", np.cross(v - u, foot - u), normal) >= 0
    inside &= area2 > 0
    edges = np.minimum.reduce([_segment_distances(p, u, v) for u, v in ((a, b), (b, c), (c, a))])
    distance = float(np.where(inside, np.abs(height), edges).min())
    ra, rb, rc = a - p, b - p, c - p
    la, lb, lc = (np.linalg.norm(r, axis=1) for r in (ra, rb, rc))
    numerator = np.einsum("ij,ij->i", ra, np.cross(rb, rc))
    denominator = (la * lb * lc + np.einsum("ij,ij->i", ra, rb) * lc + np.einsum("ij,ij->i", rb, rc) * la
                   + np.einsum("ij,ij->i", rc, ra) * lb)
    winding = np.sum(np.arctan2(numerator, denominator)) / (2 * np.pi)
    return -distance if abs(winding) > 0.5 else distance


def edge_counts(mesh: vtk.vtkPolyData) -> dict[str, int]:
    """Boundary (open) and non-manifold edge counts, from ``vtkFeatureEdges``."""
    counts = {}
    for kind in ("boundary", "non_manifold"):
        edges = vtk.vtkFeatureEdges()
        edges.SetInputData(mesh)
        edges.FeatureEdgesOff()
        edges.ManifoldEdgesOff()
        edges.SetBoundaryEdges(kind == "boundary")
        edges.SetNonManifoldEdges(kind == "non_manifold")
        edges.Update()
        counts[f"{kind}_edges"] = int(edges.GetOutput().GetNumberOfLines())
    return counts


def is_watertight(mesh: vtk.vtkPolyData) -> bool:
    """Closed 2-manifold: every edge shared by exactly two triangles, and at least one triangle."""
    counts = edge_counts(mesh)
    return mesh.GetNumberOfCells() > 0 and counts["boundary_edges"] == 0 and counts["non_manifold_edges"] == 0


def orientation_consistent(triangles: np.ndarray) -> bool:
    """True when every directed edge occurs once: neighbours traverse shared edges in opposite sense."""
    if len(triangles) == 0:
        return True
    directed = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    return len(np.unique(directed, axis=0)) == len(directed)


def add_point_normals(mesh: vtk.vtkPolyData) -> vtk.vtkPolyData:
    """Point normals for an already consistently oriented mesh (no splitting, no reordering)."""
    normals = vtk.vtkPolyDataNormals()
    normals.SetInputData(mesh)
    normals.ComputePointNormalsOn()
    normals.ComputeCellNormalsOff()
    normals.SplittingOff()
    normals.ConsistencyOff()
    normals.AutoOrientNormalsOff()
    normals.Update()
    out = vtk.vtkPolyData()
    out.ShallowCopy(normals.GetOutput())
    return out
