""""Never worse than cubic": decide per scan, from its own acquired slices, whether the network is used.

Every other acquired slice is held back (both phases), a spread of up to ``max_slices`` of them is
restored from the rest by the network and by cubic, and the network is chosen only when its PSNR
there beats cubic's by ``margin_db`` and its SSIM-like structure term (mean absolute error) is not worse.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .context import HU_MAX, HU_MIN, HU_SCALE, spline_weights
from .learned import predict

LO, HI = HU_MIN / HU_SCALE, HU_MAX / HU_SCALE


@dataclass
class Decision:
    use_network: bool
    text: str
    gain_db: float | None = None
    checked_slices: int = 0


def self_check(net, known: np.ndarray, slices: np.ndarray, dz: float, *, thickness_mm: float = 0.0,
               max_slices: int = 8, batch_size: int = 4, device=None) -> dict | None:
    """MSE and MAE (normalized units) of network, cubic and linear on held-back acquired slices; None
    when the scan has too few acquired slices (fewer than 5) to hold any back."""
    known = np.asarray(known, float)
    n = len(known)
    if n < 5:
        return None
    candidates = []
    for phase in (0, 1):
        keep = np.arange(phase, n, 2)
        candidates += [(phase, i) for i in range(n) if i % 2 != phase and known[keep[0]] < known[i] < known[keep[-1]]]
    if not candidates:
        return None
    picks = [candidates[int(round(j))] for j in np.linspace(0, len(candidates) - 1, min(max_slices, len(candidates)))]
    sums = {m: [0.0, 0.0] for m in ("network", "cubic", "linear")}
    count = 0
    for phase in (0, 1):
        held = sorted({i for p, i in picks if p == phase})
        if not held:
            continue
        keep = np.arange(phase, n, 2)
        kk, tg = known[keep], known[held]
        sub = slices[keep]
        preds = {"network": predict(net, kk, sub, tg, dz * 1.0, thickness_mm=thickness_mm, batch_size=batch_size,
                                    device=device),
                 "cubic": np.tensordot(spline_weights(kk, tg, "cubic").astype(np.float32), sub, 1),
                 "linear": np.tensordot(spline_weights(kk, tg, "linear").astype(np.float32), sub, 1)}
        truth = slices[held]
        for m, p in preds.items():
            err = np.clip(p, LO, HI) - truth
            sums[m][0] += float(np.sum(err.astype(np.float64) ** 2))
            sums[m][1] += float(np.sum(np.abs(err)))
        count += truth.size
    return {m: {"mse": s[0] / count, "mae": s[1] / count} for m, s in sums.items()} | {"slices": len(picks)}


def decide(net, known: np.ndarray, slices: np.ndarray, dz: float, *, thickness_mm: float = 0.0,
           margin_db: float = 0.05, max_slices: int = 8, batch_size: int = 4, device=None) -> Decision:
    """Whether the network beats cubic on this scan's held-back acquired slices (PSNR and MAE)."""
    check = self_check(net, known, slices, dz, thickness_mm=thickness_mm, max_slices=max_slices,
                       batch_size=batch_size, device=device)
    if check is None:
        return Decision(False, "too few acquired slices to check the network on this scan: cubic used")
    net_r, cub = check["network"], check["cubic"]
    gain = float(10 * np.log10(max(cub["mse"], 1e-12) / max(net_r["mse"], 1e-12)))
    n = check["slices"]
    if gain > margin_db and net_r["mae"] <= cub["mae"]:
        return Decision(True, f"network beat cubic by {gain:.2f} dB on {n} held-back acquired slices", gain, n)
    return Decision(False, f"network did not beat cubic on {n} held-back acquired slices ({gain:+.2f} dB): "
                           "cubic used", gain, n)
