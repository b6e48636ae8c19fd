"""The CT under a parent transform, on a real MRML scene (slicer-core): segments must sit on the
anatomy in *world* coordinates.

* Linear transforms (rotation + translation, nested transforms): results go under the CT's transform
  and every segment's world position is the plain run's moved by that transform — in process and
  through the worker.
* Non-linear transforms: Slicer's DICOM loader puts a series with irregular slice spacing under a
  grid ("acquisition") transform that only moves whole slices; the module reads the slice positions
  from it (missing slices found, nothing resampled). Any other non-linear transform is taken out of
  a hardened copy. Either way results are in world coordinates and the log says so.
* A failed load leaves no nodes behind.
"""
from __future__ import annotations

import numpy as np
import pytest

import slicer_env

slicer = slicer_env.require_slicer()
import vtk  # noqa: E402


@pytest.fixture(scope="module")
def env():
    scene = slicer_env.new_scene()
    module = slicer_env.import_module()
    from SculptorGANLib.synthetic.phantom import make_phantom
    from SculptorGANModuleLib import mrml

    ct, _ = make_phantom(shape=(40, 64, 64), spacing=(5.0, 4.5, 6.0), seed=3)
    node = mrml.volumeNodeFromCT(ct, "Phantom CT", scene)
    logic = module.SculptorGANLogic()
    plain = logic.process(node, steps=("segment",), device="cpu")
    return dict(scene=scene, module=module, logic=logic, ct=ct, node=node, plain=plain,
                centroids=segment_centroids(plain.segmentationNode))


def segment_points(segNode, segmentId, every: int = 1) -> np.ndarray:
    """World (RAS) centres of a segment's voxels (every ``every``-th), its parent transforms applied."""
    from SculptorGANModuleLib import mrml

    to_world = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(segNode.GetParentTransformNode(), None, to_world)
    reference = segNode.GetNodeReference(segNode.GetReferenceImageGeometryReferenceRole())
    mask, geometry = mrml.labelsFromSegment(segNode, segmentId, reference)
    k, j, i = np.nonzero(mask)
    lps = geometry.index_to_physical(np.stack([i, j, k], axis=1).astype(float))
    local_ras = (lps * np.array([-1.0, -1.0, 1.0]))[::every]
    return np.array([to_world.TransformPoint(p) for p in local_ras]).reshape(-1, 3)


def segment_centroids(segNode) -> dict:
    """World (RAS) centroid of each non-empty segment's voxels (a subsample), its parent transforms applied."""
    from SculptorGANModuleLib import mrml

    out = {}
    for segmentId in mrml.segmentIds(segNode):
        points = segment_points(segNode, segmentId, every=7)
        if len(points):
            out[segmentId] = points.mean(axis=0)
    return out


def linear_transform(scene, name, degrees=0.0, shift=(0.0, 0.0, 0.0), parent=None):
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    t = vtk.vtkTransform()
    t.Translate(*shift)
    t.RotateZ(degrees)
    node.SetMatrixTransformToParent(t.GetMatrix())
    if parent is not None:
        node.SetAndObserveTransformNodeID(parent.GetID())
    return node


def world_of(transformNode, point):
    to_world = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(transformNode, None, to_world)
    return np.array(to_world.TransformPoint([float(v) for v in point]))


def assert_moved_with(transformNode, result, env, atol=0.6, only=None):
    got = segment_centroids(result.segmentationNode)
    assert set(got) == set(env["centroids"]) and got
    for segmentId, plain in env["centroids"].items():
        if only and segmentId not in only:
            continue
        np.testing.assert_allclose(got[segmentId], world_of(transformNode, plain), atol=atol, err_msg=segmentId)


@pytest.fixture
def under(env):
    """Put the CT under a transform for one test; removes it afterwards."""
    created = []

    def put(transformNode):
        env["node"].SetAndObserveTransformNodeID(transformNode.GetID())
        created.append(transformNode)
        return transformNode

    yield put
    env["node"].SetAndObserveTransformNodeID(None)


def test_plain_run_finds_kidneys(env):
    assert {"kidney_left", "kidney_right"} <= set(env["centroids"])


def test_rotated_and_shifted_ct_in_process(env, under):
    transform = under(linear_transform(env["scene"], "Registration", degrees=30, shift=(50, -20, 15)))
    result = env["logic"].process(env["node"], steps=("segment",), device="cpu")
    assert result.segmentationNode.GetTransformNodeID() == transform.GetID()
    assert_moved_with(transform, result, env)
    # the rotation is really applied: the centroids moved by more than the translation alone would
    plain = env["centroids"]["kidney_left"]
    assert np.linalg.norm(world_of(transform, plain) - (plain + [50, -20, 15])) > 5


def test_nested_transforms_through_the_worker(env, under):
    outer = linear_transform(env["scene"], "Outer", degrees=-15, shift=(0, 30, 0))
    inner = under(linear_transform(env["scene"], "Inner", degrees=10, shift=(-40, 0, 5), parent=outer))
    result = env["logic"].process(env["node"], steps=("interpolate", "segment"), factor=2, device="cpu",
                                  interpolation_method="linear", useWorker=True)
    assert result.volumeNode.GetTransformNodeID() == inner.GetID()
    assert result.segmentationNode.GetTransformNodeID() == inner.GetID()
    # segmented on the interpolated grid: the kidneys' centroids agree to a fraction of a voxel (the small
    # tumor's shape changes more with the grid); the new volume starts where the input does, in world space
    assert_moved_with(inner, result, env, atol=2.0, only=("kidney_left", "kidney_right"))
    from SculptorGANModuleLib import mrml

    np.testing.assert_allclose(world_of(inner, mrml.ijkToRAS(result.volumeNode)[:3, 3]),
                               world_of(inner, mrml.ijkToRAS(env["node"])[:3, 3]), atol=1e-6)


def _grid_transform(scene, name, node, displacement):
    """A grid transform node sampling ``displacement(ras_points) -> (n, 3)`` at each slice centre and corner."""
    from SculptorGANModuleLib import mrml

    matrix = mrml.ijkToRAS(node)
    nz, ny, nx = slicer.util.arrayFromVolume(node).shape
    grid = vtk.vtkImageData()
    grid.SetDimensions(2, 2, nz)
    grid.SetOrigin(*matrix[:3, 3])
    grid.SetSpacing((nx - 1) * np.linalg.norm(matrix[:3, 0]), (ny - 1) * np.linalg.norm(matrix[:3, 1]),
                    np.linalg.norm(matrix[:3, 2]))
    grid.AllocateScalars(vtk.VTK_DOUBLE, 3)
    directions = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            directions.SetElement(r, c, matrix[r, c] / np.linalg.norm(matrix[:3, c]))
    points = np.array([matrix[:3, :3] @ (x, y, k) + matrix[:3, 3]
                       for k in range(nz) for y in (0, ny - 1) for x in (0, nx - 1)])
    values = np.asarray(displacement(points), dtype=float)
    array = vtk.util.numpy_support.numpy_to_vtk(values, deep=True)
    grid.GetPointData().SetScalars(array)
    transform = slicer.vtkOrientedGridTransform()
    transform.SetDisplacementGridData(grid)
    transform.SetGridDirectionMatrix(directions)
    transform.SetInterpolationModeToLinear()
    node_t = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", name)
    node_t.SetAndObserveTransformToParent(transform)
    return node_t


def test_dicom_acquisition_transform_gives_missing_slices(env, under):
    """Slices 20.. of the series lie one slice further up than the uniform grid says (one slice was
    not acquired), as Slicer's DICOM loader models it with a grid transform."""
    import vtk.util.numpy_support  # noqa: F401

    node, spacing_z = env["node"], env["ct"].geometry.spacing[2]
    nz = env["ct"].shape[0]
    shift = np.where(np.arange(nz) >= 20, spacing_z, 0.0)
    transform = under(_grid_transform(env["scene"], "Acquisition transform", node,
                                      lambda p: np.repeat(np.stack([np.zeros(nz), np.zeros(nz), shift], 1), 4, 0)))
    assert not transform.IsTransformToWorldLinear()
    from SculptorGANModuleLib import mrml

    ct, transformID, note = mrml.inputCT(node)
    assert transformID is None and "only moves whole slices" in note and "1 missing slice" in note
    assert ct.shape[0] == nz + 1 and ct.missing_slices == (20,)
    np.testing.assert_array_equal(ct.array[:20], env["ct"].array[:20])
    np.testing.assert_array_equal(ct.array[21:], env["ct"].array[20:])
    result = env["logic"].process(node, steps=("interpolate", "segment"), device="cpu", interpolation_method="linear")
    assert result.volumeNode.GetTransformNodeID() is None and result.segmentationNode.GetTransformNodeID() is None
    assert slicer.util.arrayFromVolume(result.volumeNode).shape[0] == nz + 1  # the gap filled, grid regular
    assert any("missing slice" in n for n in result.info["notes"])
    assert "interpolate" in result.info["methods"]


def test_other_non_linear_transform_is_hardened(env, under):
    """A warp that moves slices in-plane (here 12 mm to the right, as a grid) is not a slice-position
    correction: a hardened copy is processed and the segments follow the warp in world coordinates."""
    import vtk.util.numpy_support  # noqa: F401

    node, scene = env["node"], env["scene"]
    nodes_before = scene.GetNumberOfNodes()
    under(_grid_transform(scene, "Warp", node, lambda p: np.tile([12.0, 0.0, 0.0], (len(p), 1))))
    result = env["logic"].process(node, steps=("segment",), device="cpu")
    assert result.segmentationNode.GetTransformNodeID() is None
    assert result.volumeNode is not None and result.volumeNode.GetName().endswith("(world)")
    assert any("hardened" in n for n in result.info["notes"])
    got = segment_centroids(result.segmentationNode)
    for segmentId, plain in env["centroids"].items():
        np.testing.assert_allclose(got[segmentId], plain + [12.0, 0, 0], atol=3.0, err_msg=segmentId)
    # the temporary hardened clone is gone: only the results were added
    added = scene.GetNumberOfNodes() - nodes_before
    names = [scene.GetNthNode(i).GetName() for i in range(scene.GetNumberOfNodes())]
    assert not any("temporary" in (n or "") for n in names), names
    assert added > 0


def test_roi_is_taken_in_the_ct_frame(env, under):
    """A ROI drawn in world coordinates around the left kidney of a transformed CT: only that kidney is found."""
    transform = under(linear_transform(env["scene"], "Shift", degrees=20, shift=(30, 10, -5)))
    left = world_of(transform, env["centroids"]["kidney_left"])
    roi = env["scene"].AddNewNodeByClass("vtkMRMLMarkupsROINode", "Left kidney ROI")
    roi.SetCenter(*left)
    roi.SetSize(80, 80, 160)
    result = env["logic"].process(env["node"], steps=("segment",), device="cpu", roi=roi)
    got = segment_centroids(result.segmentationNode)
    assert "kidney_left" in got and "kidney_right" not in got, got
    np.testing.assert_allclose(got["kidney_left"], left, atol=4.0)
    points = segment_points(result.segmentationNode, "kidney_left")
    assert np.all(np.abs(points - left) <= np.array([40, 40, 80]) + 1e-6)  # nothing outside the box
    assert "roi" in result.info["methods"]


def test_failed_load_leaves_no_nodes(env, monkeypatch):
    from SculptorGANModuleLib import mrml

    scene = env["scene"]
    before = scene.GetNumberOfNodes()

    def broken(*args, **kwargs):
        raise RuntimeError("closed surface failed")

    monkeypatch.setattr(mrml, "updateClosedSurfaces", broken)
    with pytest.raises(RuntimeError, match="closed surface failed"):
        env["logic"].process(env["node"], steps=("interpolate", "segment", "surfaces"), factor=2, device="cpu",
                             interpolation_method="linear")
    assert scene.GetNumberOfNodes() == before
    with pytest.raises(RuntimeError, match="closed surface failed"):
        env["logic"].process(env["node"], steps=("segment", "surfaces"), device="cpu", useWorker=True)
    assert scene.GetNumberOfNodes() == before
