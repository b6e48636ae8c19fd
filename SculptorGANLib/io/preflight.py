"""Checks made before a run reads its input: named models are usable, and the work fits the size limits.

The doors (CLI, batch) call :func:`read_checked` instead of :func:`.volumes.read_ct`, so a broken model card
is an error instead of a silent fallback, and an input whose work is beyond :mod:`.limits` is refused with
its estimate before any stage starts.
"""
from __future__ import annotations

import os

from ..core.volume import CTVolume
from .limits import check_work
from .volumes import read_ct

DEFAULT_MODEL_SPACING = (3.0, 3.0, 3.0)


def check_models(options) -> None:
    """Every model ``options`` names must be usable (its card found and verified); raises InputError."""
    from ..nn.cards import find_model

    if options.interpolation_model and "interpolate" in options.steps:
        find_model("interpolation", options.interpolation_model)
    if options.segmentation_model and options.segmentation_model != "threshold" and "segment" in options.steps:
        find_model("segmentation", options.segmentation_model)


def model_spacing(options) -> tuple[float, float, float]:
    """The segmentation model's grid spacing in mm (its card's preprocessing), for the size estimate."""
    from ..nn.cards import find_model

    if "segment" not in options.steps or options.segmentation_model == "threshold":
        return DEFAULT_MODEL_SPACING
    card = find_model("segmentation", options.segmentation_model)
    spacing = (card.preprocessing.get("spacing") if card else None) or DEFAULT_MODEL_SPACING
    return tuple(float(s) for s in spacing)  # type: ignore[return-value]


def read_checked(source: str | os.PathLike, options, series: str | None = None,
                 allow_large: bool = False) -> CTVolume:
    """The CT of ``source`` after the model and size checks (``allow_large`` lifts the size limits)."""
    check_models(options)
    ct = read_ct(source, series=series, allow_large=allow_large)
    check_work(source, ct.shape, ct.spacing, ct.geometry.direction, options, allow_large, model_spacing(options))
    return ct
