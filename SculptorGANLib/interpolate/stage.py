"""Phase I stage: through-plane upsampling and missing-slice filling.

Methods:

* default (``method=None`` or ``'auto'``): the network where this scan shows it beats cubic. Every other
  acquired slice is held back, restored by the network and by cubic from the rest, and compared
  (``selfcheck.py``); when the network does not win, every new slice comes from cubic and
  ``info['decision']`` says why. "Never worse than cubic" on the scan's own data.
* ``gan`` — the SculptorGAN generator (``nn/fastgen.py``; older ``nn/gan.py`` cards still load),
  conditioned on the two acquired slices on each side of the gap, their distances in mm and the slice
  thickness when known, refines the cubic B-spline estimate of each new slice (a residual), always.
* ``cubic`` (B-spline along z) and ``linear`` — classical baselines; cubic is also the fallback where the
  model has no weights or was not trained (gaps wider than its card's ``max_gap_mm``).

``info['slices_by_method']`` counts the synthesized slices each method made. Acquired slices are copied
unchanged unless ``enhance=True``. The output grid starts at the first input slice: slice i lies at
``origin + direction[:, z] · i · spacing``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage

from ..core.errors import CancelledError, InputError
from ..core.volume import CTVolume
from .context import HU_MAX, HU_MIN, banded_spline, normalize_hu

log = logging.getLogger(__name__)

CLASSICAL_METHODS = ("linear", "cubic")
METHODS = ("auto", "gan") + CLASSICAL_METHODS


@dataclass
class InterpolationPlan:
    """Where the output slices go, in units of the input slice index."""

    known: np.ndarray      # input z indices that hold acquired slices
    targets: np.ndarray    # output slice positions in input-index units
    out_spacing: float     # output through-plane spacing (mm)


def plan_grid(ct: CTVolume, factor: int | None = None, target_spacing: float | None = None,
              fill_missing: bool = True) -> InterpolationPlan:
    """Output grid for upsampling by ``factor`` or to ``target_spacing`` mm (first slice kept in place)."""
    nz = ct.shape[0]
    dz = ct.geometry.spacing[2]
    missing = set(ct.missing_slices) if fill_missing else set()
    known = np.array([i for i in range(nz) if i not in missing])
    if factor is not None and target_spacing is not None:
        raise ValueError("give either factor or target_spacing, not both")
    if target_spacing is not None:
        if target_spacing <= 0:
            raise ValueError("target spacing must be positive")
        step = target_spacing / dz
    else:
        factor = int(factor or 1)
        if factor < 1:
            raise ValueError("factor must be >= 1")
        step = 1.0 / factor
    count = int(np.floor((nz - 1) / step + 1e-6)) + 1
    return InterpolationPlan(known, np.arange(count) * step, step * dz)


def _exact_known(plan: InterpolationPlan) -> np.ndarray:
    """Mask of output slices that coincide with an acquired slice."""
    return np.isclose(plan.targets, np.round(plan.targets), atol=1e-6) & np.isin(np.round(plan.targets), plan.known)


def classical_slices(ct: CTVolume, plan: InterpolationPlan, method: str = "cubic") -> np.ndarray:
    """Slices at ``plan.targets`` from the acquired slices by linear or cubic B-spline interpolation."""
    if method not in CLASSICAL_METHODS:
        raise ValueError(f"unknown classical method {method!r}; choose from {CLASSICAL_METHODS}")
    known = plan.known
    if len(known) == 1:
        out = np.repeat(ct.array[known[:1]], len(plan.targets), axis=0).astype(np.float32)
    else:
        out = banded_spline(known.astype(float), ct.array[known], plan.targets, method)
    exact = _exact_known(plan)
    out[exact] = ct.array[np.round(plan.targets[exact]).astype(int)]  # acquired slices stay untouched
    return out


# ----------------------------------------------------------------------------- the learned method
def gan_available(model: str | None = None) -> bool:
    """True when a SculptorGAN interpolation model (shipped or ``model``) can be found."""
    from ..nn.cards import find_model

    try:
        return find_model("interpolation", model) is not None
    except InputError:
        return False


def load_generator(model: str | None = None, device=None, fast: bool = True):
    """(generator ready for inference, its model card) for a shipped model name, a card path, or the default.

    ``fast``: batch norm folded into the convolutions and channels-last layout (CPU speed)."""
    from ..nn.cards import find_model, load_into
    from ..nn.fastgen import FAST_ARCH, build_fast_generator, prepare_for_inference
    from ..nn.gan import GENERATOR_ARCH, build_generator

    card = find_model("interpolation", model)
    if card is None:
        raise InputError("no SculptorGAN interpolation model is installed (Resources/Models)")
    builders = {FAST_ARCH: build_fast_generator, GENERATOR_ARCH: build_generator}
    if card.architecture not in builders:
        raise InputError(f"{card.path}: architecture {card.architecture!r} is not one of {sorted(builders)}")
    net = load_into(builders[card.architecture](card.arch_args), card)
    if fast:
        net = prepare_for_inference(net, channels_last=getattr(device, "type", "cpu") == "cpu")
    if device is not None:
        net.to(device)
    return net, card


def _jobs(plan: InterpolationPlan, dz: float, card, enhance: bool) -> tuple[list, dict]:
    """(target index, leave-one-out?) pairs for the network, and counts of slices left to cubic."""
    known = plan.known.astype(float)
    max_gap = float(card.preprocessing.get("max_gap_mm", np.inf)) if card else np.inf
    min_gap = float(card.preprocessing.get("min_gap_mm", 0.0)) if card else 0.0
    exact = _exact_known(plan)
    inside = (plan.targets > known[0]) & (plan.targets < known[-1])
    jobs, skipped = [], {"gap_too_wide": 0, "gap_too_narrow": 0, "outside": 0}
    for i, t in enumerate(plan.targets):
        if exact[i]:
            if enhance and inside[i] and len(known) >= 3:
                jobs.append((i, True))
            continue
        if not inside[i]:
            skipped["outside"] += 1
            continue
        j = np.searchsorted(known, t)
        gap = (known[j] - known[j - 1]) * dz
        if gap > max_gap + 1e-6:
            skipped["gap_too_wide"] += 1
        elif gap < min_gap - 1e-6:
            skipped["gap_too_narrow"] += 1
        else:
            jobs.append((i, False))
    return jobs, skipped


def _gan_slices(ct: CTVolume, plan: InterpolationPlan, base_hu: np.ndarray, net, card, device, jobs: list,
                acquired: np.ndarray, enhance_weight: float, thickness_mm: float, batch_size: int | None,
                tile: int | None, progress, cancel) -> np.ndarray:
    """Refine ``base_hu`` (cubic) at the ``jobs`` positions with the generator (``acquired``: the acquired
    slices, normalized)."""
    from .context import denormalize_hu
    from .learned import predict

    dz = ct.geometry.spacing[2]
    known = plan.known.astype(float)
    linear_hu = classical_slices(ct, plan, "linear")
    out = base_hu.copy()
    if not jobs:
        return out
    if batch_size is None:
        pixels = ct.shape[1] * ct.shape[2]
        batch_size = max(1, min(64 if device.type == "cuda" else 4, int(4e6 // max(pixels, 1))))
    if tile is None and device.type == "cpu" and ct.shape[1] * ct.shape[2] > 768 * 768:
        tile = 512
    idx = np.array([i for i, _ in jobs])
    loo = np.array([e for _, e in jobs])

    def on_batch(n):
        if cancel is not None and cancel():
            raise CancelledError("cancelled by the user")
        if progress is not None:
            progress(n / len(jobs), f"SculptorGAN: {n}/{len(jobs)} slices")

    if cancel is not None and cancel():
        raise CancelledError("cancelled by the user")
    # synthesized slices refine the global cubic/linear estimates; acquired ones (enhance) use local,
    # leave-one-out splines computed inside predict()
    new = ~loo
    pred = np.empty((len(idx),) + ct.shape[1:], np.float32)
    if new.any():
        sel = idx[new]
        pred[new] = predict(net, known, acquired, plan.targets[sel], dz, thickness_mm=thickness_mm,
                            base=normalize_hu(base_hu[sel]), linear=normalize_hu(linear_hu[sel]), batch_size=batch_size,
                            tile=tile, device=device, amp=device.type == "cuda", on_batch=on_batch)
    if loo.any():
        sel = idx[loo]
        offset = int(new.sum())
        pred[loo] = predict(net, known, acquired, plan.targets[sel], dz, thickness_mm=thickness_mm,
                            exclude_self=np.ones(len(sel), bool), batch_size=batch_size, tile=tile, device=device,
                            amp=device.type == "cuda", on_batch=lambda n: on_batch(offset + n))
    pred = np.clip(denormalize_hu(pred), HU_MIN, HU_MAX)
    for (i, is_loo), p in zip(jobs, pred):
        # outside the network's range (padding beyond the field of view, e.g. -2048; metal) cubic is kept
        p = np.where((base_hu[i] < HU_MIN) | (base_hu[i] > HU_MAX), base_hu[i], p)
        out[i] = base_hu[i] + enhance_weight * (p - base_hu[i]) if is_loo else p
    return out


# ----------------------------------------------------------------------------- the stage
def interpolate(ct: CTVolume, factor: int | None = None, target_spacing: float | None = None,
                fill_missing: bool = True, method: str | None = None, *, device: str = "auto",
                model: str | None = None, progress: Callable[[float, str], None] | None = None,
                cancel: Callable[[], bool] | None = None, enhance: bool = False, enhance_weight: float = 0.5,
                smoothing_mm: float = 0.0, batch_size: int | None = None, tile_size: int | None = None,
                thickness_mm: float | None = None, adapt=False) -> tuple[CTVolume, dict]:
    """Upsample ``ct`` through-plane and fill its missing slices.

    Args:
        factor / target_spacing: new through-plane spacing = input spacing / factor, or target_spacing mm.
        fill_missing: synthesize the slices listed in ``ct.missing_slices`` (DICOM gaps, ``--missing``).
        method: None/'auto' (network where this scan shows it beats cubic, else cubic), 'gan' (always the
            network), 'cubic' or 'linear'. Without weights the learned methods fall back to cubic
            (``info['fallback']``).
        device: 'auto', 'cpu', 'cuda', 'mps' (CUDA out of memory → retried on the CPU).
        model: a model card path or shipped model name (default: the shipped interpolation model).
        enhance: also refine the acquired slices (network only): each is blended, with ``enhance_weight``,
            with the generator's leave-one-out prediction from its neighbours (suppresses slice noise).
        smoothing_mm: optional Gaussian smoothing along z (sigma in mm) of the synthesized slices.
        batch_size / tile_size: inference batch and in-plane tile (None: chosen from the image size).
        thickness_mm: reconstructed slice thickness of the input (None: ``ct.slice_thickness_mm`` when the
            reader set it, else unknown); the network is told it.
        adapt: first fine-tune the network on this scan's own in-plane data (``adapt.py``, ~30-60 s on
            CPU; True: the default ``AdaptSettings``, or settings); with the default method the self-check
            then keeps the best of adapted network, unadapted network and cubic (``info['adaptation']``).
        progress(fraction, message), cancel() -> bool: callbacks.

    Returns the new volume and a dict describing what ran: ``method`` (what made the new slices),
    ``requested_method``, ``decision`` (why), ``slices_by_method`` ({method: synthesized slices}), model,
    device, input/output spacing and slice counts, fallbacks, seconds.
    """
    t0 = time.perf_counter()
    requested = (method or "auto").lower()
    if requested not in METHODS:
        raise InputError(f"unknown interpolation method {requested!r}; choose from {', '.join(METHODS)}")
    if smoothing_mm < 0:
        raise InputError("smoothing must be >= 0 mm")
    plan = plan_grid(ct, factor, target_spacing, fill_missing)
    exact = _exact_known(plan)
    n_new = int((~exact).sum())
    if thickness_mm is None:
        thickness_mm = float(getattr(ct, "slice_thickness_mm", 0.0) or 0.0)
    if progress is not None:
        progress(0.0, f"interpolating ({requested})")
    info: dict = {"method": requested, "requested_method": requested, "model": None, "model_version": None,
                  "device": "cpu", "decision": "", "slices_by_method": {}}
    dz = ct.geometry.spacing[2]
    slices = None
    if requested in CLASSICAL_METHODS:
        slices = classical_slices(ct, plan, requested)
        info.update(decision=f"{requested} requested", slices_by_method={requested: n_new} if n_new else {})
    elif n_new == 0 and not enhance:
        slices = classical_slices(ct, plan, "cubic")
        info.update(method="cubic", decision="no new slices to synthesize")
    else:
        slices = _learned(ct, plan, requested, device, model, progress, cancel, enhance, enhance_weight,
                          thickness_mm, batch_size, tile_size, info, n_new, adapt)
    if smoothing_mm > 0:
        sigma = smoothing_mm / plan.out_spacing
        smoothed = ndimage.gaussian_filter1d(slices, sigma, axis=0, mode="nearest")
        keep = exact & (not enhance)
        slices = np.where(keep[:, None, None], slices, smoothed).astype(np.float32)
    geometry = ct.geometry.with_z_spacing(plan.out_spacing)
    out = CTVolume(slices, geometry, name=f"{ct.name}_interpolated")
    info.update({
        "input_slices": ct.shape[0],
        "output_slices": out.shape[0],
        "acquired_slices": int(exact.sum()),
        "input_spacing_mm": dz,
        "output_spacing_mm": plan.out_spacing,
        "slice_thickness_mm": thickness_mm or None,
        "filled_missing": sorted(int(i) for i in ct.missing_slices) if fill_missing else [],
        "enhanced": bool(enhance and info["method"] == "gan"),
        "smoothing_mm": smoothing_mm,
        "seconds": round(time.perf_counter() - t0, 3),
    })
    if progress is not None:
        progress(1.0, "interpolation done")
    return out, info


def _adapted(raw, card, ct: CTVolume, plan: InterpolationPlan, slices: np.ndarray, dev, thickness_mm: float,
             adapt, progress, cancel, info: dict):
    """The unfused generator ``raw`` fine-tuned on this scan (``adapt.py``; ``slices``: the acquired ones,
    normalized), ready for inference; None when skipped."""
    from ..nn.fastgen import FAST_ARCH, prepare_for_inference
    from .adapt import AdaptSettings, adapt_generator

    if card.architecture != FAST_ARCH:
        info["adaptation"] = {"skipped": f"model architecture {card.architecture} cannot be adapted"}
        return None
    settings = adapt if isinstance(adapt, AdaptSettings) else AdaptSettings()
    known = plan.known.astype(float)
    gap_mm = float(np.median(np.diff(known))) * ct.geometry.spacing[2] if len(known) > 1 else 0.0
    net, summary = adapt_generator(raw, slices, gap_mm, ct.geometry.spacing[:2], thickness_mm=thickness_mm,
                                   settings=settings, device=dev, progress=progress, cancel=cancel)
    info["adaptation"] = summary
    if "skipped" in summary:
        return None
    return prepare_for_inference(net, channels_last=dev.type == "cpu")


def _choose(candidates: list, ct: CTVolume, plan: InterpolationPlan, slices: np.ndarray, thickness_mm: float, dev,
            info: dict):
    """The self-check over (name, network) candidates: the best one that beats cubic, or None (cubic)."""
    from .selfcheck import decide

    known = plan.known.astype(float)
    decisions = [(name, net, decide(net, known, slices, ct.geometry.spacing[2], thickness_mm=thickness_mm,
                                    device=dev)) for name, net in candidates]
    winners = [d for d in decisions if d[2].use_network]
    name, net, decision = max(winners or decisions, key=lambda d: -np.inf if d[2].gain_db is None else d[2].gain_db)
    info["self_check_gain_db"] = None if decision.gain_db is None else round(decision.gain_db, 3)
    if len(decisions) > 1:
        info["self_check_gains_db"] = {n: None if d.gain_db is None else round(d.gain_db, 3) for n, _, d in decisions}
        info["decision"] = (f"{name} network: {decision.text}" if winners else decision.text)
    else:
        info["decision"] = decision.text
    if "adaptation" in info and "skipped" not in info["adaptation"]:
        info["adaptation"]["used"] = bool(winners) and name == "adapted"
    return net if winners else None


def _learned(ct, plan, requested, device, model, progress, cancel, enhance, enhance_weight, thickness_mm,
             batch_size, tile_size, info, n_new, adapt=False) -> np.ndarray:
    """The 'auto' and 'gan' methods: load the generator, decide (auto), run it, fill ``info``."""
    base = classical_slices(ct, plan, "cubic")
    try:
        import torch

        from ..core.device import is_out_of_memory, resolve_device

        dev = resolve_device(device)
        net, card = load_generator(model, dev, fast=not adapt)  # adapting needs the unfused network too
    except InputError as exc:
        if model:  # the user named a model: a broken one is an error, not a silent fallback
            raise
        log.warning("SculptorGAN weights unavailable (%s); using cubic interpolation", exc)
        info.update(method="cubic", fallback=f"no GAN weights: {exc}", decision=f"no network weights ({exc}): cubic used",
                    slices_by_method={"cubic": n_new} if n_new else {})
        return base
    info.update(model=card.name, model_version=card.version, device=str(dev))
    dz = ct.geometry.spacing[2]
    acquired = normalize_hu(ct.array[plan.known])
    candidates = [("unadapted", net)]
    if adapt:  # ``net`` was loaded unfused: it is what adaptation fine-tunes (a copy)
        from ..nn.fastgen import prepare_for_inference

        candidates = [("unadapted", prepare_for_inference(net, channels_last=dev.type == "cpu"))]
        adapted = _adapted(net, card, ct, plan, acquired, dev, thickness_mm, adapt, progress, cancel, info)
        if adapted is not None:
            candidates.insert(0, ("adapted", adapted))
    if requested == "auto":
        if progress is not None:
            progress(0.0, "checking the network against cubic on this scan's acquired slices")
        chosen = _choose(candidates, ct, plan, acquired, thickness_mm, dev, info)
        if chosen is None:
            info.update(method="cubic", slices_by_method={"cubic": n_new} if n_new else {},
                        note=info["decision"])
            return base
        net = chosen
    else:
        net = candidates[0][1]
        info["decision"] = "network requested (--method gan)" + (", adapted to this scan" if len(candidates) > 1 else "")
        if len(candidates) > 1:
            info["adaptation"]["used"] = True
    jobs, skipped = _jobs(plan, dz, card, enhance)
    kw = dict(acquired=acquired, enhance_weight=enhance_weight, thickness_mm=thickness_mm, batch_size=batch_size, tile=tile_size,
              progress=progress, cancel=cancel)
    try:
        slices = _gan_slices(ct, plan, base, net, card, dev, jobs, **kw)
    except RuntimeError as exc:
        if dev.type == "cpu" or not is_out_of_memory(exc):
            raise
        log.warning("out of memory on %s; retrying SculptorGAN on the CPU", dev)
        torch.cuda.empty_cache()
        dev = torch.device("cpu")
        net = net.to(dev)
        slices = _gan_slices(ct, plan, base, net, card, dev, jobs, **kw)
        info.update(device="cpu", fallback="GPU out of memory; ran on the CPU")
    made = sum(1 for _, loo in jobs if not loo)
    cubic_n = n_new - made
    info.update(method="gan", synthesized_by_gan=made, enhanced_slices=sum(1 for _, loo in jobs if loo),
                slices_by_method={k: v for k, v in (("gan", made), ("cubic", cubic_n)) if v},
                cubic_fallback_slices_gap_too_wide=skipped["gap_too_wide"],
                cubic_fallback_slices_gap_too_narrow=skipped["gap_too_narrow"])
    if skipped["gap_too_wide"] or skipped["gap_too_narrow"]:
        info["note"] = (f"{skipped['gap_too_wide'] + skipped['gap_too_narrow']} slices lie in gaps outside the model's "
                        f"range ({card.preprocessing.get('min_gap_mm', 0)}–{card.preprocessing.get('max_gap_mm')} mm): "
                        "cubic used there")
    if made == 0 and not info.get("enhanced_slices"):
        info["method"] = "cubic"
    return slices
