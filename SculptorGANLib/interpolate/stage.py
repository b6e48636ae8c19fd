"""Phase I stage: through-plane upsampling and missing-slice filling.

Methods:

* ``gan`` — SculptorGAN (``nn/gan.py``): a 2D WP-UNet generator, conditioned on the two acquired slices
  on each side of the gap and on the target's distance to them in millimetres, refines the cubic
  B-spline estimate of each new slice (it predicts a residual). Default when shipped weights exist.
* ``cubic`` (B-spline along z) and ``linear`` — classical baselines, and the fallback when no weights
  exist or where the network was not trained (gaps wider than its card's ``max_gap_mm``).

Acquired slices are copied unchanged unless ``enhance=True``. The output grid starts at the first
input slice: slice i lies at ``origin + direction[:, z] · i · spacing``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage
from scipy.interpolate import make_interp_spline

from ..core.errors import CancelledError, InputError
from ..core.volume import CTVolume

log = logging.getLogger(__name__)

CLASSICAL_METHODS = ("linear", "cubic")
METHODS = ("gan",) + CLASSICAL_METHODS


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
        degree = 1 if method == "linear" or len(known) < 4 else 3
        spline = make_interp_spline(known.astype(float), ct.array[known], k=degree, axis=0)
        out = spline(np.clip(plan.targets, known[0], known[-1])).astype(np.float32)
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


def load_generator(model: str | None = None, device=None):
    """(generator in eval mode, its model card) for a shipped model name, a card path, or the default."""
    from ..nn.cards import find_model, load_into
    from ..nn.gan import GENERATOR_ARCH, build_generator

    card = find_model("interpolation", model)
    if card is None:
        raise InputError("no SculptorGAN interpolation model is installed (Resources/Models)")
    if card.architecture != GENERATOR_ARCH:
        raise InputError(f"{card.path}: architecture {card.architecture!r} is not {GENERATOR_ARCH!r}")
    net = load_into(build_generator(card.arch_args), card)
    if device is not None:
        net.to(device)
    return net, card


def _forward(net, ctx, base, pos, device, amp: bool, tile: int | None, overlap: int = 32, linear=None):
    """Generator on one batch (numpy in, numpy out), padded to the network's multiple; tiled in-plane if asked.

    ``base`` (and ``linear`` for generators that use it) are B×1×H×W classical estimates."""
    import torch

    from .context import pad_to_multiple

    air = -1.024
    h, w = ctx.shape[-2:]
    pos_t = torch.from_numpy(pos).to(device)

    n_ctx = ctx.shape[1]
    stack = np.concatenate([ctx, base] + ([linear] if linear is not None else []), axis=1)

    def run(part: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(part)).to(device)
        x, (hh, ww) = pad_to_multiple(x, net.multiple, air)
        lin = x[:, n_ctx + 1:n_ctx + 2] if linear is not None else None
        with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
            y = net(x[:, :n_ctx], x[:, n_ctx:n_ctx + 1], pos_t, lin)
        return y[:, 0, :hh, :ww].float().cpu().numpy()

    if not tile or (h <= tile and w <= tile):
        return run(stack)
    out = np.empty((ctx.shape[0], h, w), np.float32)
    step = tile - 2 * overlap
    for y0 in range(0, h, step):
        for x0 in range(0, w, step):
            ys, xs = max(0, y0 - overlap), max(0, x0 - overlap)
            ye, xe = min(h, y0 + step + overlap), min(w, x0 + step + overlap)
            pred = run(stack[..., ys:ye, xs:xe])
            ty, tx = min(h, y0 + step), min(w, x0 + step)
            out[:, y0:ty, x0:tx] = pred[:, y0 - ys:ty - ys, x0 - xs:tx - xs]
    return out


def _gan_slices(ct: CTVolume, plan: InterpolationPlan, base_hu: np.ndarray, net, card, device, enhance: bool,
                enhance_weight: float, batch_size: int | None, tile: int | None, progress, cancel) -> tuple[np.ndarray, dict]:
    """Refine ``base_hu`` (cubic) at synthesized positions with the generator; optionally enhance acquired slices."""
    from .context import context_arrays, denormalize_hu, local_spline, normalize_hu

    dz = ct.geometry.spacing[2]
    known = plan.known.astype(float)
    slices = normalize_hu(ct.array[plan.known])
    n_side = net.n_side
    max_gap = float(card.preprocessing.get("max_gap_mm", np.inf)) if card else np.inf
    min_gap = float(card.preprocessing.get("min_gap_mm", 0.0)) if card else 0.0
    exact = _exact_known(plan)
    inside = (plan.targets > known[0]) & (plan.targets < known[-1])
    jobs, skipped_wide, skipped_narrow = [], 0, 0
    for i, t in enumerate(plan.targets):
        if exact[i]:
            if enhance and inside[i] and len(known) >= 3:
                jobs.append((i, True))
            continue
        if not inside[i]:
            continue
        j = np.searchsorted(known, t)
        gap = (known[j] - known[j - 1]) * dz
        if gap > max_gap + 1e-6:
            skipped_wide += 1
            continue
        if gap < min_gap - 1e-6:
            skipped_narrow += 1
            continue
        jobs.append((i, False))
    out = base_hu.copy()
    use_linear = getattr(net, "use_linear", False)
    linear_hu = classical_slices(ct, plan, "linear") if use_linear else None
    amp = device.type == "cuda"
    if batch_size is None:
        pixels = ct.shape[1] * ct.shape[2]
        batch_size = max(1, min(64 if device.type == "cuda" else 8, int(4e6 // max(pixels, 1))))
    if tile is None and device.type == "cpu" and ct.shape[1] * ct.shape[2] > 768 * 768:
        tile = 512
    done = 0
    for start in range(0, len(jobs), batch_size):
        if cancel is not None and cancel():
            raise CancelledError("cancelled by the user")
        batch = jobs[start:start + batch_size]
        ctx, pos, base, lin = [], [], [], []
        for i, loo in batch:
            t = float(plan.targets[i])
            c, p = context_arrays(known, slices, t, dz, n_side, exclude_self=loo)
            ctx.append(c)
            pos.append(p)
            if loo:
                keep = ~np.isclose(known, t)
                base.append(local_spline(known[keep], slices[keep], t)[None])
                if use_linear:
                    lin.append(local_spline(known[keep], slices[keep], t, method="linear")[None])
            else:
                base.append(normalize_hu(base_hu[i])[None])
                if use_linear:
                    lin.append(normalize_hu(linear_hu[i])[None])
        pred = denormalize_hu(_forward(net, np.stack(ctx), np.stack(base), np.stack(pos), device, amp, tile,
                                    linear=np.stack(lin) if use_linear else None))
        for (i, loo), p in zip(batch, pred):
            if loo:
                out[i] = base_hu[i] + enhance_weight * (np.clip(p, -1024, 3071) - base_hu[i])
            else:
                out[i] = p
        done += len(batch)
        if progress is not None:
            progress(done / max(len(jobs), 1), f"SculptorGAN: {done}/{len(jobs)} slices")
    stats = {"synthesized_by_gan": sum(1 for _, loo in jobs if not loo),
             "enhanced_slices": sum(1 for _, loo in jobs if loo),
             "cubic_fallback_slices_gap_too_wide": skipped_wide,
             "cubic_fallback_slices_gap_too_narrow": skipped_narrow}
    return out, stats


# ----------------------------------------------------------------------------- the stage
def interpolate(ct: CTVolume, factor: int | None = None, target_spacing: float | None = None,
                fill_missing: bool = True, method: str | None = None, *, device: str = "auto",
                model: str | None = None, progress: Callable[[float, str], None] | None = None,
                cancel: Callable[[], bool] | None = None, enhance: bool = False, enhance_weight: float = 0.5,
                smoothing_mm: float = 0.0, batch_size: int | None = None,
                tile_size: int | None = None) -> tuple[CTVolume, dict]:
    """Upsample ``ct`` through-plane and fill its missing slices.

    Args:
        factor / target_spacing: new through-plane spacing = input spacing / factor, or target_spacing mm.
        fill_missing: synthesize the slices listed in ``ct.missing_slices`` (DICOM gaps, ``--missing``).
        method: 'gan' (default when a model is installed), 'cubic' or 'linear'. 'gan' without weights
            falls back to cubic and says so in ``info['fallback']``.
        device: 'auto', 'cpu', 'cuda', 'mps' (CUDA out of memory → retried on the CPU).
        model: a model card path or shipped model name (default: the shipped interpolation model).
        enhance: also refine the acquired slices (GAN only): each is blended, with ``enhance_weight``,
            with the generator's leave-one-out prediction from its neighbours (suppresses slice noise).
        smoothing_mm: optional Gaussian smoothing along z (sigma in mm) of the synthesized slices.
        batch_size / tile_size: inference batch and in-plane tile (None: chosen from the image size).
        progress(fraction, message), cancel() -> bool: callbacks.

    Returns the new volume (slice i at z0 + i·spacing along the slice normal) and a dict describing
    what ran (method, model, device, input/output spacing and slice counts, fallbacks, seconds).
    """
    t0 = time.perf_counter()
    if method is None:
        method = "gan" if gan_available(model) else "cubic"
    method = method.lower()
    if method not in METHODS:
        raise InputError(f"unknown interpolation method {method!r}; choose from {', '.join(METHODS)}")
    if smoothing_mm < 0:
        raise InputError("smoothing must be >= 0 mm")
    plan = plan_grid(ct, factor, target_spacing, fill_missing)
    if progress is not None:
        progress(0.0, f"interpolating ({method})")
    info: dict = {"method": method, "requested_method": method, "model": None, "model_version": None, "device": "cpu"}
    if method == "gan":
        base = classical_slices(ct, plan, "cubic")
        try:
            import torch

            from ..core.device import is_out_of_memory, resolve_device

            dev = resolve_device(device)
            net, card = load_generator(model, dev)
        except InputError as exc:
            if model:  # the user named a model: a broken one is an error, not a silent fallback
                raise
            log.warning("SculptorGAN weights unavailable (%s); using cubic interpolation", exc)
            info.update(method="cubic", fallback=f"no GAN weights: {exc}")
            slices = base
        else:
            info.update(model=card.name, model_version=card.version, device=str(dev))
            args = (ct, plan, base, net, card)
            kw = dict(enhance=enhance, enhance_weight=enhance_weight, batch_size=batch_size, tile=tile_size,
                      progress=progress, cancel=cancel)
            try:
                slices, stats = _gan_slices(*args, dev, **kw)
            except RuntimeError as exc:
                if dev.type == "cpu" or not is_out_of_memory(exc):
                    raise
                log.warning("out of memory on %s; retrying SculptorGAN on the CPU", dev)
                torch.cuda.empty_cache()
                dev = torch.device("cpu")
                args = (ct, plan, base, net.to(dev), card)
                slices, stats = _gan_slices(*args, dev, **kw)
                info.update(device="cpu", fallback="GPU out of memory; ran on the CPU")
            info.update(stats)
            wide, narrow = stats["cubic_fallback_slices_gap_too_wide"], stats["cubic_fallback_slices_gap_too_narrow"]
            if wide or narrow:
                info["note"] = (f"{wide + narrow} slices lie in gaps outside the model's range "
                                f"({card.preprocessing.get('min_gap_mm', 0)}–{card.preprocessing.get('max_gap_mm')} mm): "
                                "cubic used there")
    else:
        slices = classical_slices(ct, plan, method)
    if smoothing_mm > 0:
        sigma = smoothing_mm / plan.out_spacing
        smoothed = ndimage.gaussian_filter1d(slices, sigma, axis=0, mode="nearest")
        keep = _exact_known(plan) & (not enhance)
        slices = np.where(keep[:, None, None], slices, smoothed).astype(np.float32)
    geometry = ct.geometry.with_z_spacing(plan.out_spacing)
    out = CTVolume(slices, geometry, name=f"{ct.name}_interpolated")
    info.update({
        "input_slices": ct.shape[0],
        "output_slices": out.shape[0],
        "input_spacing_mm": ct.geometry.spacing[2],
        "output_spacing_mm": plan.out_spacing,
        "filled_missing": sorted(int(i) for i in ct.missing_slices) if fill_missing else [],
        "enhanced": bool(enhance and info["method"] == "gan"),
        "smoothing_mm": smoothing_mm,
        "seconds": round(time.perf_counter() - t0, 3),
    })
    if progress is not None:
        progress(1.0, "interpolation done")
    return out, info
