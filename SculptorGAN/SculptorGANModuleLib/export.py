"""Measurements of a (possibly hand-corrected) segmentation node and model export.

Measurements are the library's (:func:`SculptorGANLib.measure.structures.measure_structures`) computed on the
segments as they are now — each segment's own voxels on the reference grid plus its closed surface
from Slicer — so edits made in the Segment Editor are reflected. They become a Slicer table node and
a CSV file; models are written by Slicer's segmentation logic (STL per segment or one OBJ, LPS or RAS).
"""
from __future__ import annotations

import os

import numpy as np
import vtk

from . import mrml

#: Table columns: (measurement key, column title, unit for the table's column property).
TABLE_COLUMNS = [
    ("volume_ml", "Volume", "mL"),
    ("mesh_volume_ml", "Model volume", "mL"),
    ("surface_area_mm2", "Surface area", "mm2"),
    ("max_diameter_mm", "Max diameter", "mm"),
]
TUMOR_COLUMNS = [
    ("kidney_contact_fraction", "Kidney contact", "%", 100.0),
    ("exophytic_fraction", "Exophytic", "%", 100.0),
    ("renal_exophytic_score", "RENAL E", "", 1.0),
    ("min_distance_to_kidney_centre_mm", "Distance to kidney centre", "mm", 1.0),
]


def _surfaceLPS(segNode, segmentId: str):
    """The segment's closed surface in LPS millimetres (None when empty or not built)."""
    polyData = vtk.vtkPolyData()
    segNode.GetClosedSurfaceRepresentation(segmentId, polyData)
    if polyData.GetNumberOfCells() == 0:
        return None
    flip = vtk.vtkTransform()
    flip.Scale(-1.0, -1.0, 1.0)
    transform = vtk.vtkTransformPolyDataFilter()
    transform.SetTransform(flip)
    transform.SetInputData(polyData)
    transform.Update()
    return transform.GetOutput()


def segmentLabels(segNode, referenceVolumeNode):
    """(LabelVolume, {structure: mesh in LPS}) from the segmentation as it is now.

    Values follow the library's convention so :func:`measure_structures` keeps our names: tumor is 2
    and every other segment gets its own value ≥ 3 under its segment ID (kidney_left, kidney_right…).
    """
    from SculptorGANLib.core.volume import TUMOR, LabelVolume

    array, geometry, names, meshes = None, None, {}, {}
    nextValue = 3
    for segmentId in mrml.segmentIds(segNode):
        mask, segGeometry = mrml.labelsFromSegment(segNode, segmentId, referenceVolumeNode)
        if array is None:
            array, geometry = np.zeros(mask.shape, np.uint8), segGeometry
        if segmentId == "tumor":
            value = TUMOR
        else:
            value, nextValue = nextValue, nextValue + 1
        names[value] = segmentId
        array[mask] = value
        mesh = _surfaceLPS(segNode, segmentId) if mask.any() else None
        if mesh is not None:
            meshes[segmentId] = mesh
    if array is None:
        raise ValueError("the segmentation has no segments")
    return LabelVolume(array, geometry, name=segNode.GetName(), labels=names), meshes


def measure(segNode, referenceVolumeNode) -> dict:
    from SculptorGANLib.measure.structures import measure_structures

    labels, meshes = segmentLabels(segNode, referenceVolumeNode)
    return measure_structures(labels, meshes)


def _displayName(segNode, segmentId: str) -> str:
    segment = segNode.GetSegmentation().GetSegment(segmentId)
    return segment.GetName() if segment is not None else segmentId


def updateTableNode(tableNode, measurements: dict, segNode) -> None:
    """Fill ``tableNode`` with one row per measured segment."""
    table = tableNode.GetTable()
    wasModifying = tableNode.StartModify()
    table.Initialize()
    structures = measurements.get("structures", {})
    tumor = measurements.get("tumor") or {}
    nameColumn = vtk.vtkStringArray()
    nameColumn.SetName("Segment")
    table.AddColumn(nameColumn)
    columns = []
    for key, title, unit in TABLE_COLUMNS:
        columns.append((key, title, unit, 1.0, False))
    if tumor:
        columns += [(key, title, unit, scale, True) for key, title, unit, scale in TUMOR_COLUMNS]
    arrays = []
    for key, title, unit, scale, tumorOnly in columns:
        array = vtk.vtkDoubleArray()
        array.SetName(f"{title} ({unit})" if unit else title)
        table.AddColumn(array)
        arrays.append(array)
    table.SetNumberOfRows(len(structures))
    for row, (segmentId, block) in enumerate(structures.items()):
        table.SetValue(row, 0, _displayName(segNode, segmentId))
        for column, (key, _, _, scale, tumorOnly) in enumerate(columns, start=1):
            source = tumor if tumorOnly else block
            value = source.get(key) if (not tumorOnly or segmentId == "tumor") else None
            table.SetValue(row, column, float(value) * scale if value is not None else float("nan"))
    for key, title, unit, _, _ in columns:
        name = f"{title} ({unit})" if unit else title
        if unit:
            tableNode.SetColumnUnitLabel(name, unit)
    tableNode.Modified()
    tableNode.EndModify(wasModifying)


def measurementTable(segNode, referenceVolumeNode, tableNode=None):
    """(table node, measurements dict); creates the table node (in the segmentation's study) if needed."""
    scene = segNode.GetScene()
    measurements = measure(segNode, referenceVolumeNode)
    if tableNode is None:
        tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode",
                                            scene.GenerateUniqueName(f"{segNode.GetName()} measurements"))
        mrml.placeInStudyOf(tableNode, segNode)
    updateTableNode(tableNode, measurements, segNode)
    return tableNode, measurements


def exportModels(segNode, folder: str, fileFormat: str = "STL", coordinates: str = "LPS") -> list[str]:
    """Write the non-empty segments' closed surfaces into ``folder``; returns the files written."""
    fileFormat, coordinates = fileFormat.upper(), coordinates.upper()
    if fileFormat not in ("STL", "OBJ"):
        raise ValueError(f"model format must be STL or OBJ, not {fileFormat!r}")
    if coordinates not in ("LPS", "RAS"):
        raise ValueError(f"coordinates must be LPS or RAS, not {coordinates!r}")
    os.makedirs(folder, exist_ok=True)
    if not segNode.GetSegmentation().ContainsRepresentation("Closed surface"):
        segNode.CreateClosedSurfaceRepresentation()
    ids = [s for s in mrml.segmentIds(segNode) if _hasSurface(segNode, s)]
    if not ids:
        raise ValueError("the segmentation has no non-empty segment to export")
    before = set(os.listdir(folder))
    logic = mrml._segmentationsLogic()
    ok = logic.ExportSegmentsClosedSurfaceRepresentationToFiles(
        folder, segNode, mrml._stringArray(ids), fileFormat, coordinates == "LPS", 1.0, False)
    if not ok:
        raise RuntimeError(f"writing the models to {folder} failed")
    written = sorted(set(os.listdir(folder)) - before) or sorted(
        f for f in os.listdir(folder) if f.lower().endswith((".stl", ".obj", ".mtl")))
    return [os.path.join(folder, f) for f in written]


def _hasSurface(segNode, segmentId: str) -> bool:
    polyData = vtk.vtkPolyData()
    segNode.GetClosedSurfaceRepresentation(segmentId, polyData)
    return polyData.GetNumberOfCells() > 0


def writeMeasurementsCSV(measurements: dict, path: str) -> str:
    from SculptorGANLib.measure.structures import write_measurements_csv

    return str(write_measurements_csv(measurements, path))
