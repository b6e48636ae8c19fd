"""Write a pipeline result to a folder: CT, segmentation (.seg.nrrd + .nii.gz), models, report, preview."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.anatomy import crops_to_full
from ..io.volumes import write_volume
from ..io.atomic import staged_output_dir
from ..pipeline import PipelineResult
from .report import build_report, write_report
from ..core.volume import LabelVolume, Volume

log = logging.getLogger(__name__)


@dataclass
class OutputOptions:
    mesh_format: str = "stl"
    ras: bool = False
    write_nrrd: bool = False
    preview: bool = True


def structure_labelmap(labels: LabelVolume, masks: dict) -> LabelVolume:
    """Labelmap with each structure's fixed value (:data:`..core.structures.STRUCTURES`: kidney_left 1,
    kidney_right 2, tumor 3, whichever were found) for .seg.nrrd."""
    import numpy as np

    from ..core.structures import structure_value

    array = np.zeros(labels.shape, np.uint8)
    names = {}
    for position, (name, mask) in enumerate(masks.items()):
        value = structure_value(name, position)
        array[mask] = value
        names[value] = name
    return LabelVolume(array, labels.geometry, name=labels.name, labels=names)


#: Columns of measurements.csv when no structure was found (the per-structure columns it always has).
MEASUREMENT_COLUMNS = ("structure", "volume_ml", "voxels", "mesh_volume_ml", "surface_area_mm2", "max_diameter_mm",
                       "centroid_lps_mm_x", "centroid_lps_mm_y", "centroid_lps_mm_z",
                       "centroid_ras_mm_x", "centroid_ras_mm_y", "centroid_ras_mm_z",
                       "bbox_lps_mm_min_x", "bbox_lps_mm_min_y", "bbox_lps_mm_min_z",
                       "bbox_lps_mm_max_x", "bbox_lps_mm_max_y", "bbox_lps_mm_max_z",
                       "bbox_ras_mm_min_x", "bbox_ras_mm_min_y", "bbox_ras_mm_min_z",
                       "bbox_ras_mm_max_x", "bbox_ras_mm_max_y", "bbox_ras_mm_max_z",
                       "extent_lps_mm_x", "extent_lps_mm_y", "extent_lps_mm_z")


def write_measurements(measurements: dict, path: Path) -> Path:
    """measurements.csv: one row per structure; only the header row when nothing was found."""
    if (measurements or {}).get("structures"):
        from ..measure.structures import write_measurements_csv

        return write_measurements_csv(measurements, path)
    path.write_text(",".join(MEASUREMENT_COLUMNS) + "\n", encoding="utf-8")
    return path


def verify_meshes(paths, meshes: dict) -> None:
    """Each written model file parses back with its mesh's cells (a full disk cuts files silently in VTK)."""
    from ..io.verify import verify_mesh_file

    by_name = {name: mesh for name, mesh in meshes.items() if mesh.GetNumberOfCells() > 0}
    for path in map(Path, paths):
        mesh = next((m for name, m in by_name.items() if path.stem.endswith(name)), None)
        if mesh is not None and path.suffix.lower() != ".mtl":
            verify_mesh_file(path, mesh.GetNumberOfPoints(), mesh.GetNumberOfCells())
        elif not path.is_file() or path.stat().st_size == 0:
            from ..core.errors import OutputError

            raise OutputError(f"{path}: written incompletely (empty); is the disk full?")


def write_results(result: PipelineResult, out_dir: str | Path, source: str | None = None,
                  options: OutputOptions | None = None, extra_report: dict[str, Any] | None = None,
                  extra_volumes: dict[str, Volume] | None = None, inputs=(), overwrite: bool = False) -> Path:
    """Write everything (plus ``extra_volumes`` by file name) into ``out_dir`` atomically; returns the report path.

    ``out_dir`` is replaced as a whole (see :func:`..io.atomic.staged_output_dir`): never one of ``inputs``'
    folders, never a folder holding files we did not write unless ``overwrite``. Every file is read back
    before the folder is committed.
    """
    options = options or OutputOptions()
    out_dir = Path(out_dir)
    with staged_output_dir(out_dir, inputs, overwrite=overwrite) as stage:
        written: list[str] = []

        def keep(path: Path) -> None:
            written.append(path.name)

        keep(write_volume(result.ct, stage / "ct.nii.gz"))
        if options.write_nrrd:
            keep(write_volume(result.ct, stage / "ct.nrrd"))
        masks: dict = {}
        if result.labels is not None:
            keep(write_volume(result.labels, stage / "segmentation.nii.gz"))
            masks = crops_to_full(result.structure_crops(), result.labels.shape)
            keep(write_volume(structure_labelmap(result.labels, masks), stage / "segmentation.seg.nrrd"))
        if result.meshes:
            from ..surfaces.export import write_meshes

            paths = write_meshes(result.meshes, stage, fmt=options.mesh_format, ras=options.ras)
            verify_meshes(paths, result.meshes)
            for path in paths:
                keep(Path(path))
        if "surfaces" in result.methods:
            keep(write_measurements(result.measurements, stage / "measurements.csv"))
        for name, volume in (extra_volumes or {}).items():
            keep(write_volume(volume, stage / name))
        if options.preview:
            from .preview import write_preview

            keep(write_preview(result.ct, result.labels, masks, stage / "preview.png", result.meshes))
        report = build_report(result, source, written + ["report.json"], extra_report)
        report["output_folder"] = str(out_dir.absolute())
        report["coordinates"] = "RAS" if options.ras else "LPS"
        write_report(report, stage / "report.json")
    return out_dir / "report.json"
