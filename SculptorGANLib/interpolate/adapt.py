"""Adapt the slice generator to one scan (optional, self-supervised; SMORE / SR4ZCT style).

A thick-slice CT is finely sampled in-plane. Its axial slices, read along y (or x) and degraded to the
scan's through-plane sampling — every r-th row kept, r·dy ≈ the slice gap, each row averaged over the
slice thickness when it is known — give training pairs of the very kind the network meets along z:
"restore the rows in the gap". The network is fine-tuned on those pairs alone (batch norm frozen,
Adam), so only this scan's acquired data is used and none of its slices are held out of anything the
self-check later looks at along z. The stage's self-check then compares the adapted network, the
unadapted one and cubic on held-back acquired slices and keeps the best (``stage.py``).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..core.errors import CancelledError
from .context import slab_weights
from .learned import LOCAL_KNOTS, local_inputs

AIR = -1.024          # normalized units (HU / 1000)


@dataclass(frozen=True)
class AdaptSettings:
    """How long and how hard to fine-tune: ~0.1 s per step on one CPU core at the defaults."""

    steps: int = 400
    lr: float = 3e-4
    batch_size: int = 8
    patch: int = 96
    seed: int = 0


def in_plane_stacks(slices: np.ndarray, spacing_xy: tuple[float, float]) -> list[tuple[np.ndarray, float]]:
    """The acquired slices (Z×Y×X) re-stacked along y and along x: [(Y×Z×X, dy), (X×Z×Y, dx)]."""
    dx, dy = (float(s) for s in spacing_xy)
    return [(np.ascontiguousarray(slices.transpose(1, 0, 2)), dy), (np.ascontiguousarray(slices.transpose(2, 0, 1)), dx)]


def degraded_sample(stack: np.ndarray, step_mm: float, keep_every: int, thickness_rows: float,
                    rng: np.random.Generator, patch: int, n_side: int) -> tuple | None:
    """One training pair from ``stack`` (N×H×W planes, ``step_mm`` apart): every ``keep_every``-th plane kept
    (random phase), each averaged over ``thickness_rows`` planes when > 1, and a dropped plane as target.

    Returns (context 2n×h×w, distances mm, cubic 1×h×w, target 1×h×w, linear 1×h×w, thickness mm),
    or None when the patch is mostly air."""
    n, h, w = stack.shape
    ph, pw = min(patch, h // 8 * 8), min(patch, w // 8 * 8)
    known = np.arange(int(rng.integers(0, keep_every)), n, keep_every)
    gaps = np.setdiff1d(np.arange(known[0] + 1, known[-1]), known)
    t = int(gaps[int(rng.integers(0, len(gaps)))])
    j = int(np.searchsorted(known, t))
    win = known[max(0, j - LOCAL_KNOTS):j + LOCAL_KNOTS]
    y0, x0 = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    crop = (slice(y0, y0 + ph), slice(x0, x0 + pw))
    target = stack[(t,) + crop][None]
    if float((target > AIR + 0.124).mean()) < 0.05 and rng.random() < 0.9:
        return None
    if thickness_rows > 1:
        planes = np.stack([np.tensordot(wt.astype(np.float32), stack[(ids,) + crop], 1)
                           for ids, wt in (slab_weights(float(c), thickness_rows, n) for c in win)])
    else:
        planes = stack[(win,) + crop]
    if rng.random() < 0.5:
        planes, target = planes[..., ::-1], target[..., ::-1]
    pos, tt = win.astype(float), float(t)
    if rng.random() < 0.5:
        pos, tt, planes = -pos[::-1], -tt, planes[::-1]
    context, distances, cubic, linear = local_inputs(pos, np.ascontiguousarray(planes, np.float32), tt, step_mm, n_side)
    thick_mm = thickness_rows * step_mm if thickness_rows > 1 else 0.0
    return context, distances, cubic, np.ascontiguousarray(target, np.float32), linear, np.float32(thick_mm)


def adapt_generator(net, slices: np.ndarray, gap_mm: float, spacing_xy: tuple[float, float], *,
                    thickness_mm: float = 0.0, settings: AdaptSettings = AdaptSettings(), device=None,
                    progress: Callable[[float, str], None] | None = None,
                    cancel: Callable[[], bool] | None = None) -> tuple[object, dict]:
    """A copy of ``net`` (an unfused generator) fine-tuned on this scan's in-plane data.

    ``slices``: the acquired slices, normalized (Z×Y×X); ``gap_mm``: their through-plane gap;
    ``spacing_xy``: in-plane pixel size (x, y) mm; ``thickness_mm``: slice thickness (0 = unknown: thin
    rows); ``device``: where to train (default CPU). Returns (adapted network in eval mode, info: steps, seconds, loss first/last 10% of steps),
    or (``net``, info with ``skipped``) when the scan is too small or too coarse in-plane to learn from."""
    import torch
    import torch.nn.functional as F

    stacks = []
    for stack, step in in_plane_stacks(slices, spacing_xy):
        keep_every = int(round(gap_mm / step))
        if keep_every >= 2 and stack.shape[0] > 3 * keep_every and min(stack.shape[1:]) >= 16:
            rows = thickness_mm / step if thickness_mm > step else 1.0
            stacks.append((stack, step, keep_every, rows))
    if not stacks:
        return net, {"skipped": "in-plane pixels are not finer than the slice gap, or the scan is too small"}
    rng = np.random.default_rng(settings.seed)
    device = device or torch.device("cpu")
    adapted = copy.deepcopy(net).float().to(device).eval()  # eval: batch-norm statistics stay those of training
    opt = torch.optim.Adam(adapted.parameters(), lr=settings.lr)
    losses, t0 = [], time.perf_counter()
    with torch.inference_mode(False), torch.enable_grad():
        for step in range(settings.steps):
            if cancel is not None and cancel():
                raise CancelledError("cancelled by the user")
            groups: dict = {}
            while sum(len(g) for g in groups.values()) < settings.batch_size:
                stack, mm, keep_every, rows = stacks[int(rng.integers(0, len(stacks)))]
                item = degraded_sample(stack, mm, keep_every, rows, rng, settings.patch, adapted.n_side)
                if item is not None:
                    groups.setdefault(item[0].shape, []).append(item)
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for items in groups.values():
                ctx, pos, cub, tgt, lin, thick = (torch.from_numpy(np.stack(p)).to(device) for p in zip(*items))
                pred = adapted(ctx, cub, pos, lin, thick)
                loss = (F.l1_loss(pred, tgt) + 10.0 * F.mse_loss(pred, tgt)) * len(items) / settings.batch_size
                loss.backward()
                total += float(loss.detach())
            opt.step()
            losses.append(total)
            if progress is not None and (step % 10 == 0 or step == settings.steps - 1):
                progress((step + 1) / settings.steps, f"adapting the network to this scan: step {step + 1}/{settings.steps}")
    tenth = max(1, len(losses) // 10)
    return adapted.eval(), {"steps": settings.steps, "seconds": round(time.perf_counter() - t0, 1),
                            "loss_start": round(float(np.mean(losses[:tenth])), 5),
                            "loss_end": round(float(np.mean(losses[-tenth:])), 5),
                            "axes": len(stacks), "rows_kept_every": [s[2] for s in stacks]}
