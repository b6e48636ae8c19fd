"""Training samples for the fast residual slice generator: dropped slices and simulated thick slabs.

Volumes marked ``lowres`` (a fine real scan block-averaged in-plane to a coarse scanner's pixel size) are
drawn with probability ``lowres_prob`` and treated like any acquired volume.
Volumes marked ``inplane`` (a real volume re-stacked along y or x, its fine in-plane rows standing in for
slices: SMORE's idea, at training time) are drawn with probability ``inplane_prob``, with gaps in mm.
Each sample: the ``2·n_side`` acquired (or slab-averaged) slices around a gap, their signed distances in
mm, the cubic and linear estimates of a native slice inside the gap, that slice (the target) and the
slab thickness in mm when the network is told it (else 0). Patches are cropped in-plane, flipped,
rotated, intensity-jittered and sometimes reversed head-feet; mostly-air patches are mostly rejected.
"""
from __future__ import annotations

import numpy as np

from SculptorGANLib.interpolate.context import slab_weights
from SculptorGANLib.interpolate.learned import LOCAL_KNOTS, local_inputs
from training.interp_data import volume_weights

AIR = -1.024


class Sampler:
    """Random training samples from normalized volumes (``{"array", "dz", "real"}``) with ``cfg`` settings."""

    def __init__(self, vols, cfg, rng):
        self.cfg, self.rng = cfg, rng
        self.vols = [v for v in vols if not v.get("inplane") and not v.get("lowres")]
        self.inplane = [v for v in vols if v.get("inplane")]
        self.lowres = [v for v in vols if v.get("lowres")]
        self.p = volume_weights(self.vols, cfg["phantom_prob"])

    def _pick(self) -> tuple[dict, bool]:
        """A volume: with probability ``inplane_prob`` one of the in-plane re-stacked ones, else with
        probability ``lowres_prob`` one of the in-plane block-averaged ones (no random draw at all for a
        kind whose probability is 0, so runs without it keep their random streams)."""
        if self.inplane and self.cfg.get("inplane_prob", 0.0) > 0 and self.rng.random() < self.cfg["inplane_prob"]:
            return self.inplane[int(self.rng.integers(0, len(self.inplane)))], True
        if self.lowres and self.cfg.get("lowres_prob", 0.0) > 0 and self.rng.random() < self.cfg["lowres_prob"]:
            return self.lowres[int(self.rng.integers(0, len(self.lowres)))], False
        return self.vols[int(self.rng.choice(len(self.vols), p=self.p))], False

    def sample(self) -> tuple:
        """(context 2n×P×P, positions mm 2n, cubic 1×P×P, target 1×P×P, linear 1×P×P, thickness mm)."""
        cfg, rng = self.cfg, self.rng
        P = int(cfg["patch"])
        n_side = int(cfg["n_side"])
        while True:
            v, inplane = self._pick()
            arr, dz = v["array"], v["dz"]
            nz, h, w = arr.shape
            flipz = rng.random() < 0.5
            k_hi = min(int(cfg["k_max"]), int(cfg["max_gap_mm"] // dz), nz // 4)
            if inplane:  # fine rows: gaps drawn in mm, up to the widest the model is for
                k_hi = min(int(cfg["max_gap_mm"] // dz), nz // 4)
            if k_hi < 2:
                continue
            if inplane:
                gap = float(rng.uniform(max(2 * dz, 2.0), max(cfg["max_gap_mm"], 2 * dz)))
                k = int(np.clip(round(gap / dz), 2, k_hi))
            else:
                k = int(rng.integers(2, k_hi + 1))
            slab = rng.random() < cfg["slab_prob"]
            if rng.random() < cfg["irregular_prob"] and not slab:
                pos, known = int(rng.integers(0, k)), []
                while pos < nz:
                    known.append(pos)
                    pos += int(rng.integers(1, k_hi + 1))
                known = np.array(known)
            else:
                known = np.arange(int(rng.integers(0, k)), nz, k)
            gaps = np.setdiff1d(np.arange(known[0] + 1, known[-1]), known)
            if len(gaps) == 0:
                continue
            t = int(gaps[int(rng.integers(0, len(gaps)))])
            j = int(np.searchsorted(known, t))
            win = known[max(0, j - LOCAL_KNOTS):j + LOCAL_KNOTS]
            # in-plane crop
            y0 = int(rng.integers(0, max(h - P, 0) + 1))
            x0 = int(rng.integers(0, max(w - P, 0) + 1))
            thick_mm = 0.0
            if slab:
                gap_slices = float(np.median(np.diff(win))) if len(win) > 1 else float(k)
                tf = float(rng.choice([1.0, 1.0, 1.5, 2.0])) * gap_slices  # contiguous, or overlapping
                tf = max(tf, 1.0)
                rows = []
                for c in win:
                    ids, ws = slab_weights(float(c), tf, nz)
                    rows.append(np.tensordot(ws.astype(np.float32), arr[ids, y0:y0 + P, x0:x0 + P], axes=1))
                stack = np.stack(rows)
                if rng.random() < cfg["thickness_known_prob"]:
                    thick_mm = tf * dz
            else:
                stack = np.asarray(arr[win, y0:y0 + P, x0:x0 + P], dtype=np.float32)
                if rng.random() < cfg["thickness_known_prob"] * 0.5:
                    thick_mm = dz  # native thickness taken as the native step
            target = np.asarray(arr[t, y0:y0 + P, x0:x0 + P], dtype=np.float32)[None]
            if target.shape[1] < P or target.shape[2] < P:
                ph, pw = P - target.shape[1], P - target.shape[2]
                pad = ((0, 0), (0, ph), (0, pw))
                stack = np.pad(stack, pad, constant_values=AIR)
                target = np.pad(target, pad, constant_values=AIR)
            if float((target > -0.9).mean()) < 0.05 and rng.random() < 0.9:
                continue  # mostly air
            # augment
            if rng.random() < 0.5:
                stack, target = stack[..., ::-1], target[..., ::-1]
            if rng.random() < 0.5:
                stack, target = stack[:, ::-1], target[:, ::-1]
            r = int(rng.integers(0, 4))
            stack, target = np.rot90(stack, r, (1, 2)), np.rot90(target, r, (1, 2))
            jit = float(rng.uniform(1 - cfg["intensity_jitter"], 1 + cfg["intensity_jitter"]))
            stack = (stack + 1.0) * jit - 1.0
            target = (target + 1.0) * jit - 1.0
            kf = win.astype(float)
            tt = float(t)
            if flipz:
                kf, tt, stack = -kf[::-1], -tt, stack[::-1]
            stack = np.ascontiguousarray(stack, dtype=np.float32)
            ctx, pos, cub, lin = local_inputs(kf, stack, tt, dz, n_side)  # the inputs inference builds
            return (ctx, pos, cub, np.ascontiguousarray(target, dtype=np.float32), lin,
                    np.float32(thick_mm))

    def batch(self, n: int) -> tuple:
        """``n`` samples stacked as torch tensors."""
        import torch
        items = [self.sample() for _ in range(n)]
        return tuple(torch.from_numpy(np.stack(p)) for p in zip(*items))
