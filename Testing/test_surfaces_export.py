"""Mesh writers: binary STL, OBJ + MTL colours, PLY colours, VTP, LPS vs RAS, merged files."""
from __future__ import annotations

import struct

import numpy as np
import pytest
import vtk
from vtk.util.numpy_support import vtk_to_numpy

from SculptorGANLib.core.errors import OutputError
from SculptorGANLib.surfaces.meshutil import mesh_arrays, signed_volume_mm3
from SculptorGANLib.synthetic.phantom import make_phantom
from SculptorGANLib.surfaces.export import write_mesh, write_meshes
from SculptorGANLib.surfaces.meshing import labelmap_to_meshes
from SculptorGANLib.core.volume import STRUCTURE_COLORS


@pytest.fixture(scope="module")
def meshes():
    ct, labels = make_phantom(shape=(48, 64, 64), spacing=(5.0, 5.0, 5.0))
    return labelmap_to_meshes(labels, ct.array)


def read_points(path):
    reader = {".stl": vtk.vtkSTLReader, ".ply": vtk.vtkPLYReader, ".vtp": vtk.vtkXMLPolyDataReader,
              ".obj": vtk.vtkOBJReader}[path.suffix]()
    reader.SetFileName(str(path))
    reader.Update()
    return reader.GetOutput()


def test_binary_stl_lps_and_ras(meshes, tmp_path):
    tumor = meshes["tumor"]
    points, triangles = mesh_arrays(tumor)
    lps = write_mesh(tumor, tmp_path / "tumor.stl")
    ras = write_mesh(tumor, tmp_path / "tumor_ras.stl", ras=True)
    data = lps.read_bytes()
    assert struct.unpack("<I", data[80:84])[0] == len(triangles)
    assert len(data) == 84 + 50 * len(triangles)  # binary STL
    assert b"LPS" in data[:80] and b"RAS" in ras.read_bytes()[:80]
    back_lps, back_ras = mesh_arrays(read_points(lps)), mesh_arrays(read_points(ras))
    np.testing.assert_allclose(np.sort(back_lps[0], axis=0), np.sort(points, axis=0), atol=1e-3)
    np.testing.assert_allclose(np.sort(back_ras[0] * [-1, -1, 1], axis=0), np.sort(points, axis=0), atol=1e-3)
    assert signed_volume_mm3(*back_ras) > 0  # a rotation, not a mirror: still outward


def test_obj_with_mtl_colours(meshes, tmp_path):
    written = write_meshes(meshes, tmp_path, fmt="obj")
    names = {p.name for p in written}
    assert {"tumor.obj", "tumor.mtl", "kidney_left.obj", "kidney_left.mtl"} <= names
    obj = (tmp_path / "tumor.obj").read_text()
    mtl = (tmp_path / "tumor.mtl").read_text()
    assert "mtllib tumor.mtl" in obj and "usemtl tumor" in obj and "newmtl tumor" in mtl
    r, g, b = STRUCTURE_COLORS["tumor"]
    assert f"Kd {r:.4f} {g:.4f} {b:.4f}" in mtl
    n_points = mesh_arrays(meshes["tumor"])[0].shape[0]
    assert sum(line.startswith("v ") for line in obj.splitlines()) == n_points
    assert sum(line.startswith("vn ") for line in obj.splitlines()) == n_points
    back = read_points(tmp_path / "tumor.obj")
    assert back.GetNumberOfPolys() == meshes["tumor"].GetNumberOfCells()


def test_merged_obj_has_one_material_per_structure(meshes, tmp_path):
    written = write_meshes(meshes, tmp_path, fmt="obj", merged=True, ras=True)
    assert [p.name for p in written] == ["models.obj", "models.mtl"]
    obj, mtl = written[0].read_text(), written[1].read_text()
    for name in meshes:
        assert f"o {name}" in obj and f"usemtl {name}" in obj and f"newmtl {name}" in mtl
    total = sum(m.GetNumberOfCells() for m in meshes.values())
    faces = [line for line in obj.splitlines() if line.startswith("f ")]
    assert len(faces) == total
    max_index = max(int(tok.split("//")[0]) for line in faces for tok in line.split()[1:])
    assert max_index == sum(m.GetNumberOfPoints() for m in meshes.values())


def test_ply_and_vtp(meshes, tmp_path):
    (ply,) = write_meshes({"tumor": meshes["tumor"]}, tmp_path, fmt="ply")
    back = read_points(ply)
    rgb = vtk_to_numpy(back.GetPointData().GetArray("RGB"))
    np.testing.assert_array_equal(rgb[0], np.round(np.asarray(STRUCTURE_COLORS["tumor"]) * 255))
    (vtp,) = write_meshes(meshes, tmp_path, fmt="vtp", merged=True)
    merged = read_points(vtp)
    ids = vtk_to_numpy(merged.GetCellData().GetArray("StructureId"))
    assert set(ids) == set(range(len(meshes)))


def test_bad_format_and_folder(meshes, tmp_path):
    with pytest.raises(OutputError):
        write_mesh(meshes["tumor"], tmp_path / "tumor.xyz")
    with pytest.raises(OutputError):
        write_mesh(meshes["tumor"], tmp_path / "missing" / "tumor.stl")
    with pytest.raises(OutputError):
        write_meshes(meshes, tmp_path, fmt="dae")
