"""report.json: input geometry, steps and methods, device, timings, volumes, versions."""
from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ..pipeline import PipelineResult
from ..core.volume import CTVolume

_PACKAGES = ("sculptorgan", "torch", "monai", "numpy", "SimpleITK", "vtk")


def software_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def volume_description(ct: CTVolume, source: str | None = None) -> dict[str, Any]:
    return {"source": source, "shape_zyx": list(ct.shape), **ct.geometry.to_dict(),
            "missing_slices": list(ct.missing_slices),
            "hu_range": [float(ct.array.min()), float(ct.array.max())]}


def structure_volumes_ml(result: PipelineResult) -> dict[str, float]:
    """mL per structure (kidney_left, kidney_right, tumor) from voxel counts."""
    if result.labels is None:
        return {}
    crops = result.structure_crops()  # counts need no full-grid masks
    return {name: round(float(mask.sum()) * result.labels.voxel_volume_ml, 3) for name, (mask, _) in crops.items()}


def build_report(result: PipelineResult, source: str | None, outputs: list[str],
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON-serialisable report of one pipeline run."""
    devices = {stage: info.get("device") for stage, info in result.methods.items() if info.get("device")}
    report = {
        "input": volume_description(result.input, source),
        "output_volume": volume_description(result.ct),
        "steps": list(result.methods),
        "methods": result.methods,
        "device": devices or {"all": "cpu"},
        "timings_s": result.timings,
        "volumes_ml": structure_volumes_ml(result),
        "measurements": result.measurements,
        "outputs": sorted(outputs),
        "software": software_versions(),
        "models": {stage: info.get("model") for stage, info in result.methods.items() if info.get("model")},
    }
    if extra:
        report.update(extra)
    return report


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


def write_report(report: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps(report, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    return path
