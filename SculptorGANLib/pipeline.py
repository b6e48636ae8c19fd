"""The stages wired together: interpolate → segment → surfaces, with progress and cancellation.

Everything works on in-memory volumes; reading inputs and writing outputs happen in the callers
(CLI, Slicer module). Progress is reported as ``progress(fraction 0–1, message)``; ``cancel()``
returning True stops the run between (and, where the stage supports it, inside) stages.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .core.errors import CancelledError, SculptorGANError
from .core.options import STEPS, PipelineOptions
from .core.volume import CTVolume, LabelVolume

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]
#: Share of the progress bar given to each stage.
_STAGE_WEIGHT = {"interpolate": 0.3, "segment": 0.55, "surfaces": 0.15}


@dataclass
class PipelineResult:
    """What a run produced, with what ran and how long it took."""

    input: CTVolume
    ct: CTVolume
    labels: LabelVolume | None = None
    meshes: dict[str, Any] = field(default_factory=dict)
    measurements: dict[str, Any] = field(default_factory=dict)
    methods: dict[str, dict] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    _cache: dict[str, tuple] = field(default_factory=dict, repr=False, compare=False)

    def _per_labels(self, key: str, compute: Callable[[LabelVolume], dict]) -> dict:
        """``compute(labels)`` once per ``labels`` object (again when ``labels`` is replaced); {} without labels."""
        if self.labels is None:
            return {}
        labels, value = self._cache.get(key, (None, None))
        if labels is not self.labels:
            value = compute(self.labels)
            self._cache[key] = (self.labels, value)
        return value

    def structure_crops(self) -> dict:
        """:func:`.anatomy.structure_crops` of ``labels`` — the left/right split done once per result."""
        from .core.anatomy import structure_crops

        return self._per_labels("crops", lambda labels: structure_crops(
            labels, self.ct.array if self.ct.same_grid(labels) else None))

    def padded_structure_crops(self) -> dict:
        """:func:`.anatomy.padded_structure_crops` of :meth:`structure_crops` — what surfaces and
        measurements share, padded once per result."""
        from .core.anatomy import padded_structure_crops

        return self._per_labels("padded", lambda labels: padded_structure_crops(labels, crops=self.structure_crops()))


class _StageProgress:
    """Maps a stage's own 0–1 progress onto the overall bar."""

    def __init__(self, progress: ProgressFn | None, start: float, weight: float):
        self.progress, self.start, self.weight = progress, start, weight

    def __call__(self, fraction: float, message: str = "") -> None:
        if self.progress:
            self.progress(self.start + self.weight * min(max(fraction, 0.0), 1.0), message)


def _check_cancel(cancel: CancelFn | None) -> None:
    if cancel is not None and cancel():
        raise CancelledError("cancelled by the user")


def _run_interpolate(ct: CTVolume, options: PipelineOptions, progress, cancel) -> tuple[CTVolume, dict]:
    from .interpolate.stage import interpolate

    needs_work = options.factor not in (None, 1) or options.target_spacing is not None or (
        options.fill_missing and ct.missing_slices)
    if not needs_work:
        return ct, {"method": "none (no factor, target spacing or missing slices given)"}
    return interpolate(ct, factor=options.factor, target_spacing=options.target_spacing,
                       fill_missing=options.fill_missing, method=options.interpolation_method,
                       device=options.device, model=options.interpolation_model, enhance=options.enhance,
                       adapt=options.adapt, progress=progress, cancel=cancel)


def _run_segment(ct: CTVolume, options: PipelineOptions, progress, cancel) -> tuple[LabelVolume, dict]:
    from .segment.stage import segment

    return segment(ct, model=options.segmentation_model, device=options.device, progress=progress, cancel=cancel,
                   postprocess=options.postprocess, morph_mm=options.morph_mm, overlap=options.overlap)


def _run_surfaces(result: PipelineResult, options: PipelineOptions) -> tuple[dict, dict, dict]:
    from .measure.structures import measure_structures
    from .surfaces.shape_interpolation import thick_axis
    from .surfaces.meshing import labelmap_to_meshes

    labels, ct = result.labels, result.ct
    ct_array = ct.array if ct.same_grid(labels) else None
    padded = result.padded_structure_crops()
    meshes = labelmap_to_meshes(labels, ct_array, smoothing=options.smoothing, padded_crops=padded)
    measurements = measure_structures(labels, meshes, ct_array, padded_crops=padded)
    method = "discrete flying edges + windowed-sinc smoothing (VTK)"
    if thick_axis(labels.geometry.spacing[::-1]) is not None:
        method = "shape-based interpolation + " + method
    info = {"method": method, "smoothing": options.smoothing, "structures": sorted(meshes)}
    return meshes, measurements, info


def _apply_roi(result: PipelineResult, options: PipelineOptions):
    """Crop ``result.ct`` to ``options.roi`` plus context (:mod:`.core.roi`); returns the ROI or None."""
    from .core.roi import crop_to_roi, parse_roi

    roi = parse_roi(options.roi)
    if roi is not None:
        result.ct = crop_to_roi(result.ct, roi)
        result.methods["roi"] = {"method": f"cropped to the ROI: {result.input.shape} -> {result.ct.shape} voxels "
                                           "(z, y, x)", "roi": roi.to_dict()}
    return roi


def run_pipeline(ct: CTVolume, options: PipelineOptions | None = None, progress: ProgressFn | None = None,
                 cancel: CancelFn | None = None) -> PipelineResult:
    """Run the chosen steps on ``ct`` (never modified; ``options.missing_slices`` are marked on a copy) and
    return everything they produced."""
    options = options or PipelineOptions()
    if options.missing_slices:
        ct = ct.with_missing(options.missing_slices)
    result = PipelineResult(input=ct, ct=ct)
    roi = _apply_roi(result, options)
    steps = [s for s in STEPS if s in options.steps]
    total = sum(_STAGE_WEIGHT[s] for s in steps) or 1.0
    done = 0.0
    for step in steps:
        _check_cancel(cancel)
        stage_progress = _StageProgress(progress, done / total, _STAGE_WEIGHT[step] / total)
        stage_progress(0.0, f"{step}…")
        started = time.perf_counter()
        if step == "interpolate":
            result.ct, result.methods[step] = _run_interpolate(result.ct, options, stage_progress, cancel)
        elif step == "segment":
            result.labels, result.methods[step] = _run_segment(result.ct, options, stage_progress, cancel)
            if roi is not None:  # nothing outside the box the user drew
                from .core.roi import clear_outside

                result.labels = clear_outside(result.labels, roi)
        elif step == "surfaces":
            if result.labels is None:
                raise SculptorGANError("the surfaces step needs a segmentation: add the segment step")
            result.meshes, result.measurements, result.methods[step] = _run_surfaces(result, options)
        result.timings[step] = round(time.perf_counter() - started, 3)
        done += _STAGE_WEIGHT[step]
        stage_progress(1.0, f"{step} done")
    if progress:
        progress(1.0, "done")
    return result
