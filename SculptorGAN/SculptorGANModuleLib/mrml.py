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


def _copyParentTransform(node, referenceNode) -> None:
    if referenceNode is not None and referenceNode.GetTransformNodeID():
        node.SetAndObserveTransformNodeID(referenceNode.GetTransformNodeID())


def volumeNodeFromCT(ct, name: str, scene, referenceNode=None):
    """A new scalar volume node holding ``ct`` (display copied from ``referenceNode`` when given)."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(ct.array, dtype=np.float32))
    applyGeometry(node, ct.geometry)
    _copyParentTransform(node, referenceNode)
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


def segmentationNodeFromLabels(structures, referenceVolumeNode, name: str, scene):
    """A segmentation node with one named, colored, terminology-tagged segment per structure.

    Segment IDs are the structure names (``kidney_left``, ``kidney_right``, ``tumor`` and any further
    label names); the three kidney/tumor segments always exist, empty when nothing was found, so they
    can be painted in the Segment Editor. The reference geometry is ``referenceVolumeNode``'s grid.
    """
    from SculptorGANLib.io.segfile import TERMINOLOGY, display_name
    from SculptorGANLib.core.volume import STRUCTURE_COLORS

    segNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", scene.GenerateUniqueName(name))
    segNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
    _copyParentTransform(segNode, referenceVolumeNode)
    segmentation = segNode.GetSegmentation()
    byValue = dict(sorted((int(v), n) for v, n in structures.labels.items()))
    names = list(dict.fromkeys([*STRUCTURES, *byValue.values()]))
    for structure in names:
        color = STRUCTURE_COLORS.get(structure, (0.5, 0.5, 0.5))
        segmentation.AddEmptySegment(structure, display_name(structure), color)
        segment = segmentation.GetSegment(structure)
        if structure in TERMINOLOGY:
            segment.SetTerminology(TERMINOLOGY[structure])
        if hasattr(segment, "SetNameAutoGenerated"):
            segment.SetNameAutoGenerated(False)
        if hasattr(segment, "SetColorAutoGenerated"):
            segment.SetColorAutoGenerated(False)
    if byValue:
        # Label value v goes to the v-th ID of this list (values without a name get a throw-away slot).
        top = max(byValue)
        ids = [byValue.get(v, f"_unused_{v}") for v in range(1, top + 1)]
        labelNode = labelmapNodeFromLabels(structures, scene)
        try:
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
