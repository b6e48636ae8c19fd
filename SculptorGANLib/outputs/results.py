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
    """Labelmap with one value per structure (kidney_left, kidney_right, tumor...) for .seg.nrrd."""
    import numpy as np

    array = np.zeros(labels.shape, np.uint8)
    names = {}
    for value, (name, mask) in enumerate(masks.items(), start=1):
        array[mask] = value
        names[value] = name
    return LabelVolume(array, labels.geometry, name=labels.name, labels=names)


def write_results(result: PipelineResult, out_dir: str | Path, source: str | None = None,
                  options: OutputOptions | None = None, extra_report: dict[str, Any] | None = None,
                  extra_volumes: dict[str, Volume] | None = None) -> Path:
    """Write everything (plus ``extra_volumes`` by file name) into ``out_dir`` atomically; returns the report path."""
    options = options or OutputOptions()
    out_dir = Path(out_dir)
    with staged_output_dir(out_dir) as stage:
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

            for path in write_meshes(result.meshes, stage, fmt=options.mesh_format, ras=options.ras):
                keep(Path(path))
        if result.measurements:
            from ..measure.structures import write_measurements_csv

            keep(write_measurements_csv(result.measurements, stage / "measurements.csv"))
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
