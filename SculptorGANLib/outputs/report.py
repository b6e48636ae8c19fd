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
    """Where a volume came from and its grid (plus the DICOM series chosen, when there was a choice)."""
    return {"source": source, "shape_zyx": list(ct.shape), **ct.geometry.to_dict(),
            "missing_slices": list(ct.missing_slices),
            "hu_range": [float(ct.array.min()), float(ct.array.max())], **getattr(ct, "meta", {})}


def slices_by_method(info: dict) -> dict[str, int] | None:
    """{method: synthesized slices} of an interpolation: the stage's own count, else derived from its counts
    (never crediting the GAN with slices the cubic fallback made); None when nothing was interpolated."""
    counts = info.get("slices_by_method")
    if isinstance(counts, dict):
        return {str(k): int(v) for k, v in counts.items()}
    if "output_slices" not in info:
        return None
    acquired = int(info.get("input_slices", 0)) - len(info.get("filled_missing") or [])
    made = max(int(info["output_slices"]) - acquired, 0)
    method = str(info.get("method"))
    if method != "gan":
        return {method: made}
    fallback = int(info.get("cubic_fallback_slices_gap_too_wide", 0)) + int(info.get("cubic_fallback_slices_gap_too_narrow", 0))
    fallback = min(fallback, made)
    return {"gan": made - fallback, "cubic": fallback}




def structure_volumes_ml(result: PipelineResult) -> dict[str, float]:
    """mL per structure (kidney_left, kidney_right, tumor) from voxel counts."""
    if result.labels is None:
        return {}
    crops = result.structure_crops()  # counts need no full-grid masks
    return {name: round(float(mask.sum()) * result.labels.voxel_volume_ml, 3) for name, (mask, _) in crops.items()}


def _methods_with_counts(methods: dict) -> dict:
    """The stages' info; the interpolation's gets ``slices_by_method`` when the stage did not give it."""
    info = methods.get("interpolate")
    if not info or "slices_by_method" in info or slices_by_method(info) is None:
        return methods
    return {**methods, "interpolate": {**info, "slices_by_method": slices_by_method(info)}}


def build_report(result: PipelineResult, source: str | None, outputs: list[str],
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON-serialisable report of one pipeline run."""
    devices = {stage: info.get("device") for stage, info in result.methods.items() if info.get("device")}
    report = {
        "input": volume_description(result.input, source),
        "output_volume": volume_description(result.ct),
        "steps": list(result.methods),
        "methods": _methods_with_counts(result.methods),
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
