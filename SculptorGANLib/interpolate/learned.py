"""Running a slice generator on new slices: inputs per target, batches, padding, in-plane tiles.

Works for both generator families: the fast residual generator (``nn/fastgen.py``, also told the
slice thickness) and the original WP-UNet generator (``nn/gan.py``). Everything is in normalized
units (``context.normalize``); positions are in units of the input slice index.
"""
from __future__ import annotations

import numpy as np

from .context import context_indices, spline_weights

LOCAL_KNOTS = 6  # acquired slices each side for the local spline (weights decay ~3.7× per knot)


def local_inputs(known: np.ndarray, slices: np.ndarray, target: float, dz: float, n_side: int,
                 exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(context 2n×H×W, signed distances mm, cubic 1×H×W, linear 1×H×W) for one target position: the
    network's inputs, built the same way for inference, training (``training/interp_sampler.py``) and
    per-scan adaptation (``adapt.py``)."""
    keep = np.ones(len(known), bool)
    if exclude_self:
        keep &= ~np.isclose(known, target)
    known, slices_idx = known[keep], np.nonzero(keep)[0]
    j = int(np.searchsorted(known, target))
    lo, hi = max(0, j - LOCAL_KNOTS), min(len(known), j + LOCAL_KNOTS)
    kw, rows = known[lo:hi], slices_idx[lo:hi]
    idx = context_indices(kw, target, n_side)
    win = slices[rows]
    weights = spline_weights(kw, np.array([target]), "cubic")[0].astype(np.float32)
    lin_w = spline_weights(kw, np.array([target]), "linear")[0].astype(np.float32)
    return (win[idx], ((kw[idx] - target) * dz).astype(np.float32),
            np.tensordot(weights, win, 1)[None], np.tensordot(lin_w, win, 1)[None])


def _run(net, ctx: np.ndarray, base: np.ndarray, pos: np.ndarray, lin: np.ndarray, thick: np.ndarray,
         device, amp: bool) -> np.ndarray:
    """One forward pass on a batch, padded (edge values) to the network's multiple."""
    import torch

    h, w = ctx.shape[-2:]
    m = net.multiple
    ph, pw = (-h) % m, (-w) % m
    arrays = [np.pad(a, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="edge") if (ph or pw) else a
              for a in (ctx, base, lin)]
    ts = [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays]
    if getattr(net, "channels_last", False):
        ts = [t.contiguous(memory_format=torch.channels_last) for t in ts]
    pos_t = torch.from_numpy(pos).to(device)
    with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
        if getattr(net, "takes_thickness", False):
            y = net(ts[0], ts[1], pos_t, ts[2], torch.from_numpy(thick).to(device))
        else:
            y = net(ts[0], ts[1], pos_t, ts[2] if getattr(net, "use_linear", False) else None)
    return y[:, 0, :h, :w].float().cpu().numpy()


def predict(net, known: np.ndarray, slices: np.ndarray, targets: np.ndarray, dz: float, *,
            thickness_mm: float = 0.0, base: np.ndarray | None = None, linear: np.ndarray | None = None,
            exclude_self: np.ndarray | None = None, batch_size: int = 4, tile: int | None = None,
            overlap: int = 32, device=None, amp: bool = False, on_batch=None) -> np.ndarray:
    """Generator output (normalized) at ``targets`` from acquired ``slices`` at positions ``known``.

    ``base`` / ``linear`` (T×H×W): precomputed classical estimates (else local splines); ``exclude_self``
    (bool per target): leave-one-out context for targets that are acquired slices; ``tile``: in-plane
    tiles of this size (with ``overlap``) bound the memory; ``on_batch(done)`` is called after each batch.
    """
    import torch

    device = device or torch.device("cpu")
    known = np.asarray(known, float)
    targets = np.asarray(targets, float)
    out = np.empty((len(targets),) + slices.shape[1:], np.float32)
    for s in range(0, len(targets), batch_size):
        tt = targets[s:s + batch_size]
        loo = exclude_self[s:s + batch_size] if exclude_self is not None else np.zeros(len(tt), bool)
        parts = [local_inputs(known, slices, float(t), dz, net.n_side, bool(e)) for t, e in zip(tt, loo)]
        ctx = np.stack([p[0] for p in parts])
        pos = np.stack([p[1] for p in parts])
        b = np.stack([p[2] for p in parts]) if base is None else base[s:s + batch_size, None]
        li = np.stack([p[3] for p in parts]) if linear is None else linear[s:s + batch_size, None]
        th = np.full(len(tt), float(thickness_mm), np.float32)
        h, w = ctx.shape[-2:]
        if not tile or (h <= tile and w <= tile):
            out[s:s + len(tt)] = _run(net, ctx, b, pos, li, th, device, amp)
        else:
            step = tile - 2 * overlap
            for y0 in range(0, h, step):
                for x0 in range(0, w, step):
                    ys, xs = max(0, y0 - overlap), max(0, x0 - overlap)
                    ye, xe = min(h, y0 + step + overlap), min(w, x0 + step + overlap)
                    part = (Ellipsis, slice(ys, ye), slice(xs, xe))
                    pred = _run(net, ctx[part], b[part], pos, li[part], th, device, amp)
                    ty, tx = min(h, y0 + step), min(w, x0 + step)
                    out[s:s + len(tt), y0:ty, x0:tx] = pred[:, y0 - ys:ty - ys, x0 - xs:tx - xs]
        if on_batch is not None:
            on_batch(s + len(tt))
    return out
