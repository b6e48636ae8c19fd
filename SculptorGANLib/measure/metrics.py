"""Segmentation metrics (the paper's six): Dice, Jaccard, accuracy, precision, recall and the
Hausdorff distance (maximum and 95th percentile) in millimetres, honouring anisotropic spacing.

Conventions: both masks empty → Dice/Jaccard/precision/recall 1 and distances 0; exactly one empty →
overlap metrics 0 and distances NaN (undefined). HD95 follows MONAI: the larger of the two directed
95th-percentile surface distances.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

METRICS = ("dice", "jaccard", "accuracy", "precision", "recall", "hd", "hd95")


def overlap_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice, Jaccard, voxel accuracy, precision and recall of two boolean masks."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred & ~truth))
    fn = int(np.count_nonzero(~pred & truth))
    tn = pred.size - tp - fp - fn
    both_empty = tp + fp + fn == 0
    return {
        "dice": 1.0 if both_empty else 2 * tp / (2 * tp + fp + fn),
        "jaccard": 1.0 if both_empty else tp / (tp + fp + fn),
        "accuracy": (tp + tn) / pred.size,
        "precision": (1.0 if fn == 0 else 0.0) if tp + fp == 0 else tp / (tp + fp),
        "recall": (1.0 if fp == 0 else 0.0) if tp + fn == 0 else tp / (tp + fn),
    }


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1), border_value=0)


def surface_distances(pred: np.ndarray, truth: np.ndarray, spacing_zyx) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of ``pred`` to ``truth``'s surface, and vice versa."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    both = pred | truth
    idx = np.argwhere(both)
    lo, hi = np.maximum(idx.min(0) - 2, 0), idx.max(0) + 3  # crop for speed; distances unchanged
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    p, t = np.pad(pred[crop], 1), np.pad(truth[crop], 1)
    sp, st = _surface(p), _surface(t)
    dt_t = ndimage.distance_transform_edt(~st, sampling=spacing_zyx)
    dt_p = ndimage.distance_transform_edt(~sp, sampling=spacing_zyx)
    return dt_t[sp], dt_p[st]


def hausdorff(pred: np.ndarray, truth: np.ndarray, spacing_zyx, percentile: float | None = None) -> float:
    """Symmetric Hausdorff distance in mm (maximum, or the given percentile as in MONAI's HD95)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if not pred.any() and not truth.any():
        return 0.0
    if not pred.any() or not truth.any():
        return math.nan
    a, b = surface_distances(pred, truth, spacing_zyx)
    if percentile is None:
        return float(max(a.max(), b.max()))
    return float(max(np.percentile(a, percentile), np.percentile(b, percentile)))


def binary_metrics(pred: np.ndarray, truth: np.ndarray, spacing_xyz=(1.0, 1.0, 1.0)) -> dict[str, float]:
    """All six metrics for two boolean masks on the same grid; ``spacing_xyz`` in ITK (x, y, z) order."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if pred.shape != truth.shape:
        raise ValueError(f"masks differ in shape: {pred.shape} vs {truth.shape}")
    spacing_zyx = tuple(float(s) for s in spacing_xyz)[::-1]
    out = overlap_metrics(pred, truth)
    if not pred.any() and not truth.any():
        out.update(hd=0.0, hd95=0.0)
    elif not pred.any() or not truth.any():
        out.update(hd=math.nan, hd95=math.nan)
    else:
        a, b = surface_distances(pred, truth, spacing_zyx)
        out["hd"] = float(max(a.max(), b.max()))
        out["hd95"] = float(max(np.percentile(a, 95), np.percentile(b, 95)))
    return out


def label_metrics(pred: np.ndarray, truth: np.ndarray, spacing_xyz=(1.0, 1.0, 1.0)) -> dict[str, dict[str, float]]:
    """Metrics for 'kidney' (kidney+tumor, as in KiTS19) and 'tumor' (label 2) of two 0/1/2 labelmaps."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    return {"kidney": binary_metrics(pred > 0, truth > 0, spacing_xyz),
            "tumor": binary_metrics(pred == 2, truth == 2, spacing_xyz)}
