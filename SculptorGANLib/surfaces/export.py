"""Mesh writers: binary STL, OBJ (+MTL colours), PLY (vertex colours), VTP; LPS or RAS; one file or merged.

LPS is the default, like Slicer's STL/OBJ export; ``ras=True`` rotates by 180° about the
superior axis ((x, y, z) → (−x, −y, z)), a proper rotation, so triangle orientation is kept.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import vtk
from vtk.util.numpy_support import numpy_to_vtk, vtk_to_numpy

from ..core.errors import OutputError
from .meshutil import mesh_arrays, polydata_from_arrays
from ..core.volume import STRUCTURE_COLORS

MESH_FORMATS = ("stl", "obj", "ply", "vtp")
_DEFAULT_COLOR = (0.8, 0.8, 0.8)
_RAS = np.array([-1.0, -1.0, 1.0])


def structure_color(name: str) -> tuple[float, float, float]:
    """RGB (0–1) of a structure, grey when unknown."""
    return tuple(STRUCTURE_COLORS.get(name, _DEFAULT_COLOR))


def _normals(mesh: vtk.vtkPolyData) -> np.ndarray | None:
    array = mesh.GetPointData().GetNormals()
    return None if array is None else vtk_to_numpy(array).astype(np.float64)


def _coordinate_frame(mesh: vtk.vtkPolyData, ras: bool) -> vtk.vtkPolyData:
    """Copy of ``mesh`` with points (and normals) in RAS when asked."""
    if not ras:
        return mesh
    points, triangles = mesh_arrays(mesh)
    out = polydata_from_arrays(points * _RAS, triangles)
    normals = _normals(mesh)
    if normals is not None:
        array = numpy_to_vtk(np.ascontiguousarray(normals * _RAS, dtype=np.float32), deep=True)
        array.SetName("Normals")
        out.GetPointData().SetNormals(array)
    return out


def _with_colors(mesh: vtk.vtkPolyData, color: tuple[float, float, float]) -> vtk.vtkPolyData:
    """Shallow copy carrying a uint8 RGB point array 'RGB' (used by the PLY writer)."""
    out = vtk.vtkPolyData()
    out.ShallowCopy(mesh)
    rgb = np.tile(np.round(np.asarray(color) * 255).astype(np.uint8), (mesh.GetNumberOfPoints(), 1))
    array = numpy_to_vtk(rgb, deep=True, array_type=vtk.VTK_UNSIGNED_CHAR)
    array.SetName("RGB")
    out.GetPointData().AddArray(array)
    return out


def _format(path: Path) -> str:
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in MESH_FORMATS:
        raise OutputError(f"{path}: unknown mesh format; use one of {', '.join(MESH_FORMATS)}")
    return fmt


def _write_obj(named: dict[str, vtk.vtkPolyData], path: Path, ras: bool) -> list[Path]:
    """OBJ with one object + material per structure, and the MTL file beside it."""
    mtl = path.with_suffix(".mtl")
    try:
        with open(mtl, "w", encoding="ascii") as f:
            f.write("# SculptorGAN structure colours\n")
            for name in named:
                r, g, b = structure_color(name)
                f.write(f"newmtl {name}\nKa 0 0 0\nKd {r:.4f} {g:.4f} {b:.4f}\nKs 0.1 0.1 0.1\nNs 20\nd 1\nillum 2\n\n")
        with open(path, "w", encoding="ascii") as f:
            f.write(f"# SculptorGAN surface models, {'RAS' if ras else 'LPS'} millimetres\nmtllib {mtl.name}\n")
            base = 1
            for name, mesh in named.items():
                points, triangles = mesh_arrays(mesh)
                normals = _normals(mesh)
                f.write(f"o {name}\nusemtl {name}\n")
                np.savetxt(f, points * (_RAS if ras else 1.0), fmt="v %.4f %.4f %.4f")
                if normals is not None:
                    np.savetxt(f, normals * (_RAS if ras else 1.0), fmt="vn %.4f %.4f %.4f")
                    idx = np.repeat(triangles + base, 2, axis=1)
                    np.savetxt(f, idx, fmt="f %d//%d %d//%d %d//%d")
                else:
                    np.savetxt(f, triangles + base, fmt="f %d %d %d")
                base += len(points)
    except OSError as exc:
        raise OutputError(f"{path}: cannot be written ({exc.strerror})") from exc
    return [path, mtl]


def _write_vtk(mesh: vtk.vtkPolyData, path: Path, fmt: str, ras: bool) -> Path:
    writer = {"stl": vtk.vtkSTLWriter, "ply": vtk.vtkPLYWriter, "vtp": vtk.vtkXMLPolyDataWriter}[fmt]()
    if fmt in ("stl", "ply"):
        writer.SetFileTypeToBinary()
    if fmt == "stl":
        writer.SetHeader(f"SculptorGAN {'RAS' if ras else 'LPS'} mm")
    if fmt == "ply" and mesh.GetPointData().GetArray("RGB") is not None:
        writer.SetArrayName("RGB")
        writer.SetColorModeToDefault()
    writer.SetFileName(str(path))
    writer.SetInputData(mesh)
    if not writer.Write():
        raise OutputError(f"{path}: cannot be written")
    return path


def write_mesh(mesh: vtk.vtkPolyData, path: str | Path, ras: bool = False, name: str | None = None) -> Path:
    """Write one mesh as STL (binary), OBJ (+MTL), PLY or VTP by suffix; LPS unless ``ras``.

    ``name`` picks the structure colour for OBJ/PLY (default: the file stem).
    """
    path = Path(path)
    fmt = _format(path)
    if not path.parent.is_dir():
        raise OutputError(f"{path.parent}: folder does not exist")
    name = name or path.stem
    if fmt == "obj":
        return _write_obj({name: mesh}, path, ras)[0]
    mesh = _coordinate_frame(mesh, ras)
    if fmt == "ply":
        mesh = _with_colors(mesh, structure_color(name))
    return _write_vtk(mesh, path, fmt, ras)


def write_meshes(meshes: dict[str, vtk.vtkPolyData], out_dir: str | Path, fmt: str = "stl", ras: bool = False,
                 merged: bool = False, prefix: str = "") -> list[Path]:
    """Write each structure to ``out_dir/<prefix><name>.<fmt>``, or all into ``<prefix>models.<fmt>``.

    OBJ gets a ``.mtl`` with the structure colours (one material per structure, also when merged);
    PLY carries vertex colours; VTP a 'StructureId' cell array when merged. Returns written paths.
    """
    out_dir = Path(out_dir)
    fmt = fmt.lower().lstrip(".")
    _format(Path(f"x.{fmt}"))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot create folder ({exc.strerror})") from exc
    meshes = {name: mesh for name, mesh in meshes.items() if mesh.GetNumberOfCells() > 0}
    if not merged:
        written = []
        for name, mesh in meshes.items():
            path = out_dir / f"{prefix}{name}.{fmt}"
            written.append(write_mesh(mesh, path, ras=ras, name=name))
            if fmt == "obj":
                written.append(path.with_suffix(".mtl"))
        return written
    path = out_dir / f"{prefix}models.{fmt}"
    if fmt == "obj":
        return _write_obj(meshes, path, ras)
    append = vtk.vtkAppendPolyData()
    for index, (name, mesh) in enumerate(meshes.items()):
        part = _with_colors(_coordinate_frame(mesh, ras), structure_color(name))
        ids = numpy_to_vtk(np.full(part.GetNumberOfCells(), index, dtype=np.int32), deep=True)
        ids.SetName("StructureId")
        part.GetCellData().AddArray(ids)
        append.AddInputData(part)
    append.Update()
    return [_write_vtk(append.GetOutput(), path, fmt, ras)]
