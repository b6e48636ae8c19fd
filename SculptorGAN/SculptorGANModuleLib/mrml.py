"""MRML ↔ SculptorGANLib conversion with exact geometry, and building the result nodes.

Slicer stores a volume as voxels (k, j, i) plus spacing, origin and IJK→RAS directions; the library
keeps (z, y, x) arrays with spacing, origin and direction in LPS. The two differ only by the sign of
the first two physical axes, so the conversion copies numbers and flips signs — nothing is resampled.
Everything here runs on a plain ``slicer-core`` scene as well as inside Slicer.
"""
from __future__ import annotations

import numpy as np
import vtk

import slicer

LPS_RAS = np.diag([-1.0, -1.0, 1.0])  # LPS ↔ RAS (its own inverse)
STRUCTURES = ("kidney_left", "kidney_right", "tumor")  # always present as segments (may be empty)


# ----------------------------------------------------------------------------- geometry
def geometryFromVolumeNode(volumeNode):
    """The node's voxel grid as a library ``Geometry`` (LPS)."""
    from SculptorGANLib.core.volume import Geometry

    directions = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASDirectionMatrix(directions)
    rasDirection = np.array([[directions.GetElement(r, c) for c in range(3)] for r in range(3)])
    origin = LPS_RAS @ np.asarray(volumeNode.GetOrigin(), dtype=float)
    return Geometry(tuple(volumeNode.GetSpacing()), tuple(origin), tuple((LPS_RAS @ rasDirection).ravel()))


def applyGeometry(volumeNode, geometry) -> None:
    """Give ``volumeNode`` the grid of a library ``Geometry``."""
    rasDirection = LPS_RAS @ geometry.direction_matrix
    directions = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            directions.SetElement(r, c, float(rasDirection[r, c]))
    volumeNode.SetIJKToRASDirectionMatrix(directions)
    volumeNode.SetSpacing(*geometry.spacing)
    volumeNode.SetOrigin(*(LPS_RAS @ np.asarray(geometry.origin, dtype=float)))


def ijkToRAS(volumeNode) -> np.ndarray:
    """The node's 4x4 IJK→RAS matrix as a numpy array."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


# ----------------------------------------------------------------------------- volumes
def ctVolumeFromNode(volumeNode):
    """A library ``CTVolume`` (float32 HU copy) of a scalar volume node."""
    from SculptorGANLib.core.errors import InputError
    from SculptorGANLib.core.volume import CTVolume

    imageData = volumeNode.GetImageData() if volumeNode is not None else None
    if imageData is None:
        raise InputError("the input volume has no image data")
    if imageData.GetNumberOfScalarComponents() != 1:
        raise InputError(f"{volumeNode.GetName()}: has {imageData.GetNumberOfScalarComponents()} components "
                         "per voxel; a scalar CT volume is needed")
    array = np.array(slicer.util.arrayFromVolume(volumeNode), dtype=np.float32, copy=True)
    if array.ndim != 3 or min(array.shape) < 2:
        raise InputError(f"{volumeNode.GetName()}: has size {array.shape[::-1]}; a 3D volume is needed")
    return CTVolume(array, geometryFromVolumeNode(volumeNode), name=volumeNode.GetName())


def hasNonLinearTransform(volumeNode) -> bool:
    """True when the node's transform to world is not linear (e.g. Slicer's DICOM acquisition grid)."""
    transform = volumeNode.GetParentTransformNode() if volumeNode is not None else None
    return transform is not None and not transform.IsTransformToWorldLinear()


def _toWorld(volumeNode, point) -> np.ndarray:
    out = [0.0, 0.0, 0.0]
    volumeNode.TransformPointToWorld([float(v) for v in point], out)
    return np.asarray(out)


def acquisitionSlicesVolume(volumeNode, tolerance: float = 0.01):
    """The CT in world coordinates when its non-linear transform only moves whole slices along their
    normal (what Slicer's DICOM loader adds for irregular slice spacing); None otherwise.

    Slices that were not acquired (gaps that are a multiple of the smallest slice distance) become
    ``missing_slices`` on a regular grid, so the interpolation step fills them. Nothing is resampled.
    """
    from SculptorGANLib.io.dicom import regular_grid_indices
    from SculptorGANLib.core.volume import CTVolume, Geometry

    ct = ctVolumeFromNode(volumeNode)
    ijkToRas = ijkToRAS(volumeNode)
    nz, ny, nx = ct.shape
    probes = np.array([[0, 0], [nx - 1, 0], [0, ny - 1], [nx - 1, ny - 1], [(nx - 1) / 2, (ny - 1) / 2]], float)
    normal = ijkToRas[:3, 2] / np.linalg.norm(ijkToRas[:3, 2])
    shifts = []
    for k in range(nz):
        local = [ijkToRas[:3, :3] @ (x, y, k) + ijkToRas[:3, 3] for x, y in probes]
        moved = np.array([_toWorld(volumeNode, p) - p for p in local])
        along = moved @ normal
        if np.abs(moved - np.outer(along, normal)).max() > tolerance or np.ptp(along) > tolerance:
            return None  # slices are bent, tilted or moved in-plane: not a pure slice-position correction
        shifts.append(along.mean())
    positions = np.arange(nz) * float(np.linalg.norm(ijkToRas[:3, 2])) + np.asarray(shifts)
    if np.any(np.diff(positions) <= 0):
        return None
    try:
        indices, step = regular_grid_indices(positions)
    except ValueError:
        return None
    full = np.empty((int(indices[-1]) + 1, ny, nx), np.float32)
    full[indices] = ct.array
    missing = sorted(set(range(full.shape[0])) - set(int(i) for i in indices))
    for k in missing:  # linear placeholder between the nearest acquired slices (filled by interpolation)
        below, above = indices[indices < k].max(), indices[indices > k].min()
        w = (k - below) / (above - below)
        full[k] = (1 - w) * full[below] + w * full[above]
    g = ct.geometry
    origin = np.asarray(g.origin) + LPS_RAS @ (normal * shifts[0])
    geometry = Geometry((g.spacing[0], g.spacing[1], step), tuple(origin), g.direction)
    return CTVolume(full, geometry, name=ct.name, missing_slices=tuple(missing))


def hardenedVolume(volumeNode):
    """A CTVolume of ``volumeNode`` resampled through its parent transform into world coordinates
    (Slicer's own HardenTransform on a temporary clone; the input node is not touched)."""
    from SculptorGANLib.core.errors import InputError

    scene = volumeNode.GetScene()
    clone = slicer.vtkSlicerVolumesLogic.CloneVolume(scene, volumeNode, "SculptorGAN hardened copy (temporary)")
    try:
        if clone is None or not clone.HardenTransform():
            raise InputError(f"{volumeNode.GetName()}: its non-linear transform could not be applied to a copy; "
                             "harden the transform (Transforms module) and run again")
        ct = ctVolumeFromNode(clone)
    finally:
        if clone is not None:
            scene.RemoveNode(clone)
    ct.name = volumeNode.GetName()
    return ct


def inputCT(volumeNode):
    """(CTVolume to process, transform node ID of its frame, note) for an input node.

    With no or a linear parent transform the CT is the node's voxels in its own frame (exact,
    nothing resampled) and results go under the same transform (ID returned, note ""). With a
    non-linear one the CT is brought to world coordinates first — by reading the slice positions
    from it when it only moves whole slices (Slicer's DICOM acquisition transform), else by
    hardening a copy — and results are placed in world coordinates (ID None, note says how).
    """
    if not hasNonLinearTransform(volumeNode):
        return ctVolumeFromNode(volumeNode), volumeNode.GetTransformNodeID(), ""
    transformName = volumeNode.GetParentTransformNode().GetName()
    ct = acquisitionSlicesVolume(volumeNode)
    if ct is not None:
        found = f"{len(ct.missing_slices)} missing slice(s) found" if ct.missing_slices else "no missing slices"
        note = (f"the CT is under the non-linear transform '{transformName}', which only moves whole slices: the "
                f"slice positions were read from it ({found}); results are in world coordinates")
        return ct, None, note
    note = (f"the CT is under the non-linear transform '{transformName}': a copy was resampled through it "
            "(hardened) and processed; results are in world coordinates")
    return hardenedVolume(volumeNode), None, note


def _copyParentTransform(node, referenceNode) -> None:
    if referenceNode is not None and referenceNode.GetTransformNodeID():
        node.SetAndObserveTransformNodeID(referenceNode.GetTransformNodeID())


_SAME = object()


def volumeNodeFromCT(ct, name: str, scene, referenceNode=None, transformNodeID=_SAME):
    """A new scalar volume node holding ``ct`` (display copied from ``referenceNode`` when given).

    It goes under ``transformNodeID`` (default: ``referenceNode``'s parent transform), the frame in
    which ``ct``'s geometry is given.
    """
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(ct.array, dtype=np.float32))
    applyGeometry(node, ct.geometry)
    if transformNodeID is _SAME:
        _copyParentTransform(node, referenceNode)
    elif transformNodeID:
        node.SetAndObserveTransformNodeID(transformNodeID)
    node.CreateDefaultDisplayNodes()
    source = referenceNode.GetDisplayNode() if referenceNode is not None else None
    display = node.GetDisplayNode()
    if source is not None and display is not None:
        if source.GetColorNodeID():
            display.SetAndObserveColorNodeID(source.GetColorNodeID())
        display.SetAutoWindowLevel(source.GetAutoWindowLevel())
        display.SetWindowLevel(source.GetWindow(), source.GetLevel())
    return node


def labelmapNodeFromLabels(labels, scene, name: str = "SculptorGAN labels"):
    """A temporary labelmap volume node holding a library ``LabelVolume``."""
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName(name))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(labels.array, dtype=np.uint8))
    applyGeometry(node, labels.geometry)
    return node


# ----------------------------------------------------------------------------- segmentations
def _segmentationsLogic():
    modules = getattr(slicer, "modules", None)
    segmentations = getattr(modules, "segmentations", None)
    if segmentations is not None:
        return segmentations.logic()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()  # headless slicer-core
    logic.SetMRMLScene(slicer.mrmlScene)
    return logic


def _stringArray(values) -> vtk.vtkStringArray:
    array = vtk.vtkStringArray()
    for value in values:
        array.InsertNextValue(value)
    return array


def setSegmentTerminology(segment, entry: str) -> None:
    """Tag ``segment`` with a terminology entry string, on every supported Slicer.

    ``vtkSegment.SetTerminology`` exists from Slicer 5.10; 5.8 (and older) store the same string
    in the tag named by ``vtkSegment.GetTerminologyEntryTagName()`` ("TerminologyEntry").
    """
    if hasattr(segment, "SetTerminology"):
        segment.SetTerminology(entry)
    else:
        segment.SetTag(segment.GetTerminologyEntryTagName(), entry)


def segmentTerminology(segment) -> str:
    """The segment's terminology entry string ("" when none), on every supported Slicer."""
    if hasattr(segment, "GetTerminology"):
        return segment.GetTerminology()
    value = vtk.reference("")
    return str(value) if segment.GetTag(segment.GetTerminologyEntryTagName(), value) else ""


def segmentationNodeFromLabels(structures, referenceVolumeNode, name: str, scene):
    """A segmentation node with one named, colored, terminology-tagged segment per structure.

    Segment IDs are the structure names (``kidney_left``, ``kidney_right``, ``tumor`` and any further
    label names); the three kidney/tumor segments always exist, empty when nothing was found, so they
    can be painted in the Segment Editor. ``structures`` is in the coordinates of
    ``referenceVolumeNode`` (its voxels' physical frame): the segmentation gets the same parent
    transform *before* the reference geometry is taken and the labelmap is imported under it too,
    so Slicer applies no transform on the way and the segments sit on the anatomy in world space.
    """
    from SculptorGANLib.io.segfile import TERMINOLOGY, display_name
    from SculptorGANLib.core.volume import STRUCTURE_COLORS

    segNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    _copyParentTransform(segNode, referenceVolumeNode)  # first: the reference geometry is taken in this frame
    segNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
    segmentation = segNode.GetSegmentation()
    byValue = dict(sorted((int(v), n) for v, n in structures.labels.items()))
    names = list(dict.fromkeys([*STRUCTURES, *byValue.values()]))
    for structure in names:
        color = STRUCTURE_COLORS.get(structure, (0.5, 0.5, 0.5))
        segmentation.AddEmptySegment(structure, display_name(structure), color)
        segment = segmentation.GetSegment(structure)
        if structure in TERMINOLOGY:
            setSegmentTerminology(segment, TERMINOLOGY[structure])
        segment.SetNameAutoGenerated(False)
        segment.SetColorAutoGenerated(False)
    if byValue:
        # Label value v goes to the v-th ID of this list (values without a name get a throw-away slot).
        top = max(byValue)
        ids = [byValue.get(v, f"_unused_{v}") for v in range(1, top + 1)]
        labelNode = labelmapNodeFromLabels(structures, scene)
        try:
            _copyParentTransform(labelNode, referenceVolumeNode)  # same frame as the segmentation
            if not _segmentationsLogic().ImportLabelmapToSegmentationNode(labelNode, segNode, _stringArray(ids)):
                raise RuntimeError("importing the labelmap into the segmentation failed")
        finally:
            scene.RemoveNode(labelNode)
        for segmentId in [i for i in ids if i.startswith("_unused_")]:
            if segmentation.GetSegment(segmentId) is not None:
                segmentation.RemoveSegment(segmentId)
    segNode.CreateDefaultDisplayNodes()
    return segNode


def labelsFromSegment(segNode, segmentId: str, referenceVolumeNode):
    """One segment as a boolean (z, y, x) mask on ``referenceVolumeNode``'s grid, with that geometry."""
    scene = segNode.GetScene()
    labelNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "SculptorGAN export (temporary)")
    try:
        ok = _segmentationsLogic().ExportSegmentsToLabelmapNode(
            segNode, _stringArray([segmentId]), labelNode, referenceVolumeNode,
            slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
        if not ok:
            raise RuntimeError(f"segment {segmentId!r} could not be exported to a labelmap")
        mask = np.array(slicer.util.arrayFromVolume(labelNode)) > 0
        return mask, geometryFromVolumeNode(labelNode)
    finally:
        scene.RemoveNode(labelNode)


def segmentIds(segNode) -> list[str]:
    segmentation = segNode.GetSegmentation()
    return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]


def updateClosedSurfaces(segNode, smoothing: float) -> bool:
    """(Re)build the closed-surface representation (Slicer's converter) with ``smoothing`` 0–1."""
    segmentation = segNode.GetSegmentation()
    segmentation.SetConversionParameter("Smoothing factor", f"{float(smoothing):g}")
    if segmentation.ContainsRepresentation("Closed surface"):
        segmentation.RemoveRepresentation("Closed surface")  # force a rebuild from the current labelmaps
    return bool(segNode.CreateClosedSurfaceRepresentation())


# ----------------------------------------------------------------------------- ROI
def _transformPoints(sourceTransformNode, targetTransformNode, points) -> np.ndarray:
    transform = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(sourceTransformNode, targetTransformNode, transform)
    return np.array([transform.TransformPoint([float(v) for v in p]) for p in points])


def roiInFrame(roiNode, frameTransformNode=None) -> dict:
    """A markups ROI node as the library's ROI dict (LPS, :func:`SculptorGANLib.core.roi.parse_roi`)
    in the coordinates of ``frameTransformNode`` (the CT's parent transform; None: world).

    Its 8 corners are taken through the ROI's own parent transform to world and from world into the
    frame, so any linear transform on either side is exact (a non-linear one is approximated by
    where the corners go).
    """
    from SculptorGANLib.core.errors import InputError
    from SculptorGANLib.core.roi import Roi

    if roiNode.GetInsideOut():
        raise InputError(f"{roiNode.GetName()}: an inside-out ROI (everything except a box) is not supported")
    matrix = roiNode.GetObjectToNodeMatrix()
    objectToNode = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    size = np.asarray(roiNode.GetSize(), dtype=float)
    if np.any(size <= 0):
        raise InputError(f"{roiNode.GetName()}: the ROI has zero size; place it around the kidneys")
    signs = np.array([[i, j, k] for i in (-0.5, 0.5) for j in (-0.5, 0.5) for k in (-0.5, 0.5)])
    corners = (objectToNode[:3, :3] @ (signs * size).T).T + objectToNode[:3, 3]
    corners = _transformPoints(roiNode.GetParentTransformNode(), None, corners)
    corners = _transformPoints(None, frameTransformNode, corners) @ LPS_RAS.T  # LPS, in the CT's frame
    center = corners.mean(axis=0)
    edges = np.stack([(corners[signs[:, a] > 0] - corners[signs[:, a] < 0]).mean(axis=0) for a in range(3)], axis=1)
    return Roi(tuple(center), tuple(edges.ravel())).to_dict()


# ----------------------------------------------------------------------------- failed loads
class NewNodesRemovedOnError:
    """``with NewNodesRemovedOnError(scene): ...`` — if the block raises, every node it added to the
    scene is removed again, so a failed load leaves the scene as it was."""

    def __init__(self, scene):
        self.scene = scene

    def _ids(self) -> set:
        nodes = self.scene.GetNodes()
        return {nodes.GetItemAsObject(i).GetID() for i in range(nodes.GetNumberOfItems())}

    def __enter__(self):
        self.before = self._ids()
        return self

    def __exit__(self, kind, value, traceback) -> bool:
        if kind is not None:
            for nodeId in self._ids() - self.before:
                node = self.scene.GetNodeByID(nodeId)
                if node is not None:
                    self.scene.RemoveNode(node)
        return False


# ----------------------------------------------------------------------------- subject hierarchy
def placeInStudyOf(node, inputNode) -> int:
    """Put ``node`` under the same subject-hierarchy parent (the study) as ``inputNode``; returns its item."""
    scene = node.GetScene()
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if shNode is None:
        return 0
    inputItem = shNode.GetItemByDataNode(inputNode) if inputNode is not None else 0
    parent = shNode.GetItemParent(inputItem) if inputItem else shNode.GetSceneItemID()
    item = shNode.GetItemByDataNode(node)
    if not item:  # Slicer's GUI creates items for new nodes; a bare scene does not
        item = shNode.CreateItem(parent, node)
    else:
        shNode.SetItemParent(item, parent)
    return item
