"""SculptorGANLogic on a real MRML scene (slicer-core): nodes, geometry, segments, surfaces, export.

The phantom CT sits on an oblique grid so any mix-up of axes, LPS/RAS signs or spacing order shows.
The pipeline runs once per fixture (module scope) to keep the file fast.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import slicer_env

slicer = slicer_env.require_slicer()
import vtk  # noqa: E402


@pytest.fixture(scope="module")
def env(oblique_geometry_module):
    scene = slicer_env.new_scene()
    module = slicer_env.import_module()
    from SculptorGANLib.synthetic.phantom import make_phantom
    from SculptorGANLib.core.volume import CTVolume
    from SculptorGANModuleLib import mrml

    # the phantom is drawn at the geometry's own (anisotropic) spacing and covers 24 cm in z, so its
    # anatomy looks like a patient's to the segmentation model (a 14 cm slab stretched to other voxel
    # sizes did not, and the model found no kidney there)
    ct, _ = make_phantom(shape=(40, 64, 64), spacing=oblique_geometry_module.spacing, seed=3)
    ct = CTVolume(ct.array, oblique_geometry_module, name="Phantom CT")
    node = mrml.volumeNodeFromCT(ct, "Phantom CT", scene)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient 1")
    study = sh.CreateStudyItem(patient, "Study 1")
    sh.CreateItem(study, node)
    return dict(scene=scene, module=module, logic=module.SculptorGANLogic(), ct=ct, node=node, sh=sh, study=study,
                before=np.array(slicer.util.arrayFromVolume(node)), matrix=np.array(mrml_matrix(node)))


@pytest.fixture(scope="module")
def oblique_geometry_module():
    from SculptorGANLib.core.volume import Geometry

    a, b = np.deg2rad(20), np.deg2rad(10)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return Geometry((5.0, 4.5, 6.0), (-120.5, 33.0, 410.25), rz @ rx)


def mrml_geometry(node):
    from SculptorGANModuleLib import mrml

    return mrml.geometryFromVolumeNode(node)


def mrml_matrix(node):
    from SculptorGANModuleLib import mrml

    return mrml.ijkToRAS(node)


@pytest.fixture(scope="module")
def full_run(env):
    """interpolate (factor 2) + segment + surfaces, in process."""
    return env["logic"].process(env["node"], steps=("interpolate", "segment", "surfaces"), factor=2, device="cpu",
                                smoothing=0.3, interpolation_method="linear")


@pytest.fixture(scope="module")
def library_reference(env):
    """What the library alone produces for the same CT (ground truth for the conversion)."""
    from SculptorGANLib.slicer_worker import run_request

    return run_request(env["ct"], {"steps": ["interpolate", "segment"], "factor": 2, "device": "cpu",
                                   "interpolation_method": "linear"})


@pytest.fixture(scope="module")
def found(library_reference):
    """[(segment ID, segment name)] of the structures the segmentation found, in segment order."""
    from SculptorGANLib.io.segfile import display_name

    structures = library_reference.structures
    ids = [n for v, n in sorted(structures.labels.items()) if (structures.array == v).any()]
    assert ids, "the phantom should give some kidney voxels"
    return [(i, display_name(i)) for i in ids]


def exported_labelmap(segNode, segmentId, reference):
    from SculptorGANModuleLib import mrml

    mask, geometry = mrml.labelsFromSegment(segNode, segmentId, reference)
    return mask, geometry


def test_geometry_conversion_is_exact(env):
    from SculptorGANModuleLib import mrml

    g = mrml.geometryFromVolumeNode(env["node"])
    assert g.spacing == env["ct"].geometry.spacing
    np.testing.assert_allclose(g.origin, env["ct"].geometry.origin, rtol=0, atol=1e-12)
    np.testing.assert_allclose(g.direction, env["ct"].geometry.direction, rtol=0, atol=1e-12)
    expected = np.diag([-1.0, -1.0, 1.0, 1.0]) @ env["ct"].geometry.affine_lps()
    np.testing.assert_allclose(env["matrix"], expected, rtol=0, atol=1e-9)


def test_interpolated_volume_node(env, full_run, library_reference):
    node = full_run.volumeNode
    assert node is not None and node.GetName() == "Phantom CT SculptorGAN"
    assert node is not env["node"] and node.GetScene() is env["scene"]
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), library_reference.ct.array)
    expected = np.diag([-1.0, -1.0, 1.0, 1.0]) @ library_reference.ct.geometry.affine_lps()
    np.testing.assert_allclose(mrml_matrix(node), expected, rtol=0, atol=1e-9)
    # same grid start and axes as the input, half the slice spacing
    m_in, m_out = env["matrix"], mrml_matrix(node)
    np.testing.assert_allclose(m_out[:, :2], m_in[:, :2], atol=1e-9)
    np.testing.assert_allclose(m_out[:3, 2], m_in[:3, 2] / 2, atol=1e-9)


def test_segmentation_node_segments(env, full_run):
    from SculptorGANLib.io.segfile import TERMINOLOGY
    from SculptorGANLib.core.volume import STRUCTURE_COLORS
    from SculptorGANModuleLib import mrml

    seg = full_run.segmentationNode
    assert seg.GetName() == "Phantom CT SculptorGAN segmentation"
    segmentation = seg.GetSegmentation()
    assert mrml.segmentIds(seg)[:3] == ["kidney_left", "kidney_right", "tumor"]
    for segmentId, name in [("kidney_left", "Kidney left"), ("kidney_right", "Kidney right"), ("tumor", "Tumor")]:
        segment = segmentation.GetSegment(segmentId)
        assert segment.GetName() == name
        np.testing.assert_allclose(segment.GetColor(), STRUCTURE_COLORS[segmentId])
        assert segment.GetTerminology() == TERMINOLOGY[segmentId]
    # the segmentation references the interpolated volume and uses its grid
    assert seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole()) is full_run.volumeNode
    mask, geometry = exported_labelmap(seg, "kidney_left", full_run.volumeNode)
    assert mask.shape == slicer.util.arrayFromVolume(full_run.volumeNode).shape
    from SculptorGANModuleLib.mrml import geometryFromVolumeNode

    expected = geometryFromVolumeNode(full_run.volumeNode)  # Slicer's export rounds in the last digit
    np.testing.assert_allclose(geometry.affine_lps(), expected.affine_lps(), rtol=0, atol=1e-9)


def test_segments_equal_library_labels(full_run, library_reference):
    structures = library_reference.structures
    for value, name in structures.labels.items():
        mask, _ = exported_labelmap(full_run.segmentationNode, name, full_run.volumeNode)
        np.testing.assert_array_equal(mask, structures.array == value, err_msg=name)


def test_closed_surfaces_built_and_shown(full_run, found):
    seg = full_run.segmentationNode
    assert seg.GetSegmentation().ContainsRepresentation("Closed surface")
    assert seg.GetSegmentation().GetConversionParameter("Smoothing factor") == "0.3"
    for segmentId, _ in found:
        poly = vtk.vtkPolyData()
        seg.GetClosedSurfaceRepresentation(segmentId, poly)
        assert poly.GetNumberOfCells() > 0, segmentId
    display = seg.GetDisplayNode()
    assert display.GetVisibility3D() and display.GetPreferredDisplayRepresentationName3D() == "Closed surface"


def test_measurement_table_made_with_the_models(full_run, found):
    table = full_run.tableNode
    assert table is not None and table.GetName() == "Phantom CT SculptorGAN segmentation measurements"
    assert full_run.segmentationNode.GetNodeReference("SculptorGANMeasurements") is table
    rows = [table.GetTable().GetValue(r, 0).ToString() for r in range(table.GetTable().GetNumberOfRows())]
    assert sorted(rows) == sorted(name for _, name in found)


def test_results_in_input_study(env, full_run):
    sh = env["sh"]
    for node in (full_run.volumeNode, full_run.segmentationNode, full_run.tableNode):
        item = sh.GetItemByDataNode(node)
        assert item and sh.GetItemParent(item) == env["study"], node.GetName()


def test_input_untouched(env, full_run):
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(env["node"]), env["before"])
    np.testing.assert_array_equal(mrml_matrix(env["node"]), env["matrix"])
    assert env["node"].GetName() == "Phantom CT"


def _read_stl(path):
    reader = vtk.vtkSTLReader()
    reader.SetFileName(path)
    reader.Update()
    return reader.GetOutput()


def test_export_models_stl_lps_ras_and_measurements(env, full_run, found, tmp_path):
    seg = full_run.segmentationNode
    out_lps, out_ras = tmp_path / "lps", tmp_path / "ras"
    exported = env["logic"].exportModels(seg, str(out_lps), "STL", "LPS")
    env["logic"].exportModels(seg, str(out_ras), "STL", "RAS")
    stls = sorted(p for p in os.listdir(out_lps) if p.endswith(".stl"))
    # one file per non-empty segment (an empty Tumor segment gives no file)
    assert stls == sorted(f"Phantom CT SculptorGAN segmentation_{name}.stl" for _, name in found)
    assert all(os.path.dirname(f) == str(out_lps) for f in exported.files)
    surface = vtk.vtkPolyData()
    first_id, first_name = found[0]
    seg.GetClosedSurfaceRepresentation(first_id, surface)
    stl = f"Phantom CT SculptorGAN segmentation_{first_name}.stl"
    ras = _read_stl(str(out_ras / stl))
    lps = _read_stl(str(out_lps / stl))
    np.testing.assert_allclose(ras.GetBounds(), surface.GetBounds(), atol=1e-3)
    b = surface.GetBounds()
    np.testing.assert_allclose(lps.GetBounds(), (-b[1], -b[0], -b[3], -b[2], b[4], b[5]), atol=1e-3)
    # measurements: table node and CSV, volumes = voxel count × voxel volume on the reference grid
    assert os.path.isfile(exported.csvPath) and os.path.dirname(exported.csvPath) == str(out_lps)
    table = exported.tableNode.GetTable()
    names = [table.GetValue(r, 0).ToString() for r in range(table.GetNumberOfRows())]
    assert sorted(names) == sorted(name for _, name in found)
    mask, geometry = exported_labelmap(seg, first_id, full_run.volumeNode)
    expected_ml = mask.sum() * np.prod(geometry.spacing) / 1000
    assert table.GetValue(names.index(first_name), 1).ToDouble() == pytest.approx(expected_ml, rel=1e-3)
    with open(exported.csvPath, encoding="utf-8") as f:
        header, *rows = f.read().strip().splitlines()
    assert header.startswith("structure,volume_ml") and len(rows) == len(found)


def test_export_obj_and_bad_format(env, full_run, tmp_path):
    exported = env["logic"].exportModels(full_run.segmentationNode, str(tmp_path), "OBJ", "RAS")
    assert any(f.endswith(".obj") for f in exported.files)
    with pytest.raises(ValueError):
        env["logic"].exportModels(full_run.segmentationNode, str(tmp_path), "PLY", "LPS")


def test_update_models_after_edit(env, full_run, found):
    seg = full_run.segmentationNode
    reference = full_run.volumeNode
    before = env["logic"].updateModels(seg, 0.5)
    assert before is full_run.tableNode and before.GetTable().GetNumberOfRows() == len(found)
    # erase one structure and paint a small tumor, as a user would in the Segment Editor
    erased_id = [i for i, _ in found if i != "tumor"][-1]
    mask, _ = exported_labelmap(seg, erased_id, reference)
    slicer.util.updateSegmentBinaryLabelmapFromArray(np.zeros(mask.shape, np.uint8), seg, erased_id, reference)
    tumor = np.zeros(mask.shape, np.uint8)
    tumor[10:13, 20:24, 20:24] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(tumor, seg, "tumor", reference)
    table = env["logic"].updateModels(seg, 0.5)
    assert table is before  # same table node, refreshed
    names = [table.GetTable().GetValue(r, 0).ToString() for r in range(table.GetTable().GetNumberOfRows())]
    expected = [name for i, name in found if i not in (erased_id, "tumor")] + ["Tumor"]
    assert sorted(names) == sorted(expected)
    tumor_row = names.index("Tumor")
    voxel_ml = np.prod(mrml_geometry(reference).spacing) / 1000
    assert table.GetTable().GetValue(tumor_row, 1).ToDouble() == pytest.approx(tumor.sum() * voxel_ml, rel=1e-3)
    poly = vtk.vtkPolyData()
    seg.GetClosedSurfaceRepresentation(erased_id, poly)
    assert poly.GetNumberOfCells() == 0
    seg.GetClosedSurfaceRepresentation("tumor", poly)
    assert poly.GetNumberOfCells() > 0


def test_worker_route_gives_identical_nodes(env, library_reference):
    """The PythonSlicer-subprocess route (files in between) yields the in-process result (voxels to
    float32 rounding, labels up to a few boundary voxels)."""
    nodes_before = env["scene"].GetNumberOfNodes()
    result = env["logic"].process(env["node"], steps=("interpolate", "segment"), factor=2, device="cpu",
                                  interpolation_method="linear", useWorker=True)
    assert env["scene"].GetNumberOfNodes() > nodes_before
    np.testing.assert_allclose(slicer.util.arrayFromVolume(result.volumeNode), library_reference.ct.array,
                               rtol=0, atol=0.01)
    expected = np.diag([-1.0, -1.0, 1.0, 1.0]) @ library_reference.ct.geometry.affine_lps()
    np.testing.assert_allclose(mrml_matrix(result.volumeNode), expected, rtol=0, atol=1e-9)
    for value, name in library_reference.structures.labels.items():
        mask, _ = exported_labelmap(result.segmentationNode, name, result.volumeNode)
        expected = library_reference.structures.array == value
        # another process sums in another order (thread count): a boundary voxel may flip, a misplaced or
        # misconverted segment would differ in thousands
        assert np.count_nonzero(mask != expected) <= max(3, expected.sum() // 1000), name
    assert not result.segmentationNode.GetSegmentation().ContainsRepresentation("Closed surface")  # no surfaces step


def test_cancel_leaves_nothing(env):
    module, logic = env["module"], env["logic"]
    nodes_before = env["scene"].GetNumberOfNodes()
    run = logic.startProcessing(env["node"], steps=("segment",), device="cpu", extraArguments=["--test-delay", "60"])
    events = []
    while not any(e.get("event") == "start" for e in events):
        events += run.job.poll()
        assert not run.job.finished, events
    run.job.cancel()
    with pytest.raises(module.SculptorGANRunError) as info:
        logic.finishProcessing(run)
    assert info.value.kind == "cancelled" and run.job.returncode == 3
    assert "Nothing was added" in info.value.userMessage()
    assert env["scene"].GetNumberOfNodes() == nodes_before
    assert not os.path.exists(run.tempDir)


def test_worker_error_becomes_run_error(env):
    module, logic = env["module"], env["logic"]
    run = logic.startProcessing(env["node"], steps=("interpolate",), device="cpu", missingSlices=(0,))
    with pytest.raises(module.SculptorGANRunError) as info:
        logic.finishProcessing(run)
    assert info.value.kind == "input" and "inner slices" in info.value.message


def test_in_process_errors_and_cancel(env):
    module, logic = env["module"], env["logic"]
    with pytest.raises(module.SculptorGANRunError) as info:
        logic.process(env["node"], steps=("interpolate",), missingSlices=(0,))
    assert info.value.kind == "input" and "inner slices" in info.value.message
    nodes = env["scene"].GetNumberOfNodes()
    with pytest.raises(module.SculptorGANRunError) as info:
        logic.process(env["node"], steps=("segment",), cancel=lambda: True)
    assert info.value.kind == "cancelled" and env["scene"].GetNumberOfNodes() == nodes
    progress = []
    logic.process(env["node"], steps=("segment",), progress=lambda f, m: progress.append(f))
    assert progress and progress[-1] == 1.0


def test_process_rejects_bad_steps(env):
    with pytest.raises(ValueError):
        env["logic"].process(env["node"], steps=("surfaces",))
    with pytest.raises(ValueError):
        env["logic"].process(env["node"], steps=())


def test_input_removed_while_running_loads_nothing(env):
    """Scene closed / input deleted while the worker runs: the finished run is discarded, not loaded."""
    from SculptorGANModuleLib import mrml

    module, logic, scene = env["module"], env["logic"], env["scene"]
    temporary = mrml.volumeNodeFromCT(env["ct"], "Temporary CT", scene)
    run = logic.startProcessing(temporary, steps=("interpolate",), factor=2, interpolation_method="linear")
    scene.RemoveNode(temporary)
    nodes = scene.GetNumberOfNodes()
    with pytest.raises(module.SculptorGANRunError) as info:
        logic.finishProcessing(run)
    assert info.value.kind == "cancelled" and scene.GetNumberOfNodes() == nodes


def test_module_self_test_runs(env):
    """SculptorGANTest (what Slicer's "Reload and Test" runs) passes on slicer-core too."""
    import unittest

    case = env["module"].SculptorGANTest("test_SculptorGAN_phantom")
    case.setUp = lambda: None  # keep this module's scene (Slicer's setUp clears the scene)
    outcome = unittest.TestResult()
    case.run(outcome)
    assert outcome.wasSuccessful(), outcome.errors + outcome.failures
    assert not outcome.skipped


def test_reload_and_test_skips_without_packages(env, monkeypatch):
    """Slicer's Reload and Test calls runTest() outside unittest: missing packages must give a message,
    not an exception (which Slicer shows as an error dialog)."""
    from SculptorGANModuleLib import dependencies

    monkeypatch.setattr(dependencies, "missingPackages", lambda *a, **k: ["monai>=1.3"])
    case = env["module"].SculptorGANTest()
    shown = []
    case.delayDisplay = lambda message, msec=0: shown.append(message)
    nodes = env["scene"].GetNumberOfNodes()
    case.runTest()  # no exception
    assert shown and "skipped" in shown[0] and "monai" in shown[0]
    assert env["scene"].GetNumberOfNodes() == nodes  # and it did not clear the scene either


def test_nothing_found_gives_empty_segments_to_paint(env, tmp_path):
    """A CT without kidneys: the three segments exist (empty, ready to paint); export says why it cannot."""
    from SculptorGANLib.core.volume import CTVolume
    from SculptorGANModuleLib import mrml

    air = mrml.volumeNodeFromCT(CTVolume(np.full((10, 32, 32), -1000, np.float32)), "Air", env["scene"])
    result = env["logic"].process(air, steps=("segment", "surfaces"))
    assert mrml.segmentIds(result.segmentationNode) == ["kidney_left", "kidney_right", "tumor"]
    assert result.tableNode.GetTable().GetNumberOfRows() == 0
    with pytest.raises(ValueError, match="no non-empty segment"):
        env["logic"].exportModels(result.segmentationNode, str(tmp_path))
