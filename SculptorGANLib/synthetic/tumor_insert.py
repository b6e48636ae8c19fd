"""Synthetic kidney tumors inserted into real kidneys (label-free tumor synthesis, after Hu et al. 2023).

Shapes come from real KiTS19 tumor masks (any grid; resampled copies on the target spacing), randomly
flipped, transposed in-plane and rescaled; each is placed endophytic (centre inside the kidney) or
exophytic (centre near the kidney surface, growing into the perirenal fat but never into bone, air or
other organs' labels). Appearance relative to the kidney's own parenchyma: hypo-, iso- or
hyper-enhancing, heterogeneous texture, necrotic core or cystic (fluid with a thin wall); the edge is
blended over about a voxel and the image's own noise level is kept.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .layout import smooth_noise

APPEARANCES = ("hypo", "iso", "hyper", "necrotic", "cystic")


def tumor_shapes(labels_list: list[np.ndarray], min_vox: int = 8) -> list[np.ndarray]:
    """Cropped boolean tumor components (label 2) from a list of labelmaps."""
    out = []
    for lab in labels_list:
        comps, n = ndimage.label(lab == 2)
        for sl in ndimage.find_objects(comps):
            m = comps[sl] > 0
            if m.sum() >= min_vox:
                out.append(m.copy())
    return out


def _transform(shape: np.ndarray, rng: np.random.Generator, max_vox: int) -> np.ndarray:
    m = shape
    for ax in range(3):
        if rng.random() < 0.5:
            m = np.flip(m, ax)
    if rng.random() < 0.5:
        m = np.swapaxes(m, 1, 2)
    scale = rng.uniform(0.6, 1.4)
    while m.sum() * scale ** 3 > max_vox:
        scale *= 0.8
    if abs(scale - 1) > 0.05:
        m = ndimage.zoom(m.astype(np.float32), scale, order=1) > 0.5
    return m if m.any() else shape


def place_tumor(kidney: np.ndarray, forbidden: np.ndarray, shape: np.ndarray, rng: np.random.Generator,
                exophytic: bool | None = None) -> np.ndarray:
    """Full-grid boolean tumor mask: ``shape`` centred in or on ``kidney``, never in ``forbidden``."""
    if exophytic is None:
        exophytic = rng.random() < 0.5
    surface = kidney & ~ndimage.binary_erosion(kidney)
    pts = np.argwhere(surface if exophytic else ndimage.binary_erosion(kidney, iterations=2))
    if len(pts) == 0:
        pts = np.argwhere(kidney)
    c = pts[rng.integers(len(pts))]
    lo = c - np.asarray(shape.shape) // 2
    out = np.zeros(kidney.shape, bool)
    src = tuple(slice(max(0, -a), min(s, n - a)) for a, s, n in zip(lo, shape.shape, kidney.shape))
    dst = tuple(slice(max(0, a), max(0, a) + (sl.stop - sl.start)) for a, sl in zip(lo, src))
    out[dst] = shape[src]
    out &= ~forbidden
    # keep the part connected to the kidney
    comps, n = ndimage.label(out)
    if n > 1:
        touch = np.unique(comps[ndimage.binary_dilation(kidney) & out])
        out = np.isin(comps, touch[touch > 0])
    return out


def tumor_hu(hu: np.ndarray, kidney: np.ndarray, tumor: np.ndarray, rng: np.random.Generator,
             appearance: str | None = None) -> tuple[np.ndarray, str]:
    """``hu`` with ``tumor`` painted in, relative to the kidney's median HU; returns (new HU, appearance)."""
    appearance = appearance or APPEARANCES[rng.choice(5, p=(0.35, 0.15, 0.15, 0.2, 0.15))]
    box = tuple(slice(max(0, a - 3), b + 4) for a, b in zip(np.argwhere(tumor).min(0), np.argwhere(tumor).max(0)))
    t, h = tumor[box], hu[box].astype(np.float32)
    core = kidney & ~tumor
    k = float(np.median(hu[core])) if core.sum() > 20 else 40.0
    enhanced = k > 80
    if appearance == "hypo":
        base = k - rng.uniform(25, 110) if enhanced else k - rng.uniform(5, 20)
    elif appearance == "iso":
        base = k + rng.uniform(-12, 12)
    elif appearance == "hyper":
        base = k + rng.uniform(20, 90) if enhanced else k + rng.uniform(5, 25)
    else:
        base = k - rng.uniform(20, 80) if enhanced else k - rng.uniform(0, 12)
    base = max(base, 15.0)
    val = base + rng.uniform(4, 30) * smooth_noise(t.shape, rng, rng.uniform(1.0, 2.5))
    dist = ndimage.distance_transform_edt(t)
    if appearance == "necrotic" and dist.max() > 2:
        nec = (dist > rng.uniform(1.5, max(1.6, 0.6 * dist.max()))) & (smooth_noise(t.shape, rng, 2) > rng.uniform(-1, 0.5))
        val = np.where(nec, rng.uniform(0, 30) + 5 * smooth_noise(t.shape, rng, 1.5), val)
    elif appearance == "cystic":
        wall = t & (dist <= 1.0)
        val = np.where(wall, base, rng.uniform(0, 22) + 3 * smooth_noise(t.shape, rng, 2.0))
    # keep the image's noise: local residual of the original added back
    resid = h - ndimage.gaussian_filter(h, 1.0)
    alpha = np.clip(ndimage.gaussian_filter(t.astype(np.float32), rng.uniform(0.4, 0.9)) * 1.6 - 0.3, 0, 1)
    alpha[t] = np.maximum(alpha[t], 0.85)
    new = (1 - alpha) * h + alpha * (val + resid)
    out = hu.astype(np.float32).copy()
    out[box] = new
    return out, appearance


def insert_tumor(hu: np.ndarray, labels: np.ndarray, shapes: list[np.ndarray], rng: np.random.Generator,
                 forbidden: np.ndarray | None = None, max_ml: float = 250.0, voxel_ml: float = 0.027) -> tuple[np.ndarray, np.ndarray, dict]:
    """A tumor in one of the labelled kidneys (label 1, per connected kidney) of a real CT.

    Returns (HU, labels with the tumor as 2, description). ``forbidden``: voxels the tumor may not enter
    (other organs); bone (> 300 HU) and air (< -300 HU) are always forbidden.
    """
    kid = labels == 1
    comps, n = ndimage.label(kid)
    if n == 0:
        return hu, labels, {"tumor": None}
    sizes = ndimage.sum_labels(kid, comps, range(1, n + 1))
    pick = 1 + int(rng.choice(n, p=sizes / sizes.sum()))
    kidney = comps == pick
    bad = (hu > 300) | (hu < -300) | ((labels > 0) & ~kidney)
    if forbidden is not None:
        bad |= forbidden & ~kidney
    shape = _transform(shapes[rng.integers(len(shapes))], rng, int(min(max_ml / voxel_ml, 0.8 * kidney.sum())))
    exo = rng.random() < 0.5
    tumor = place_tumor(kidney, bad, shape, rng, exo)
    if tumor.sum() < 4:
        return hu, labels, {"tumor": None}
    new_hu, app = tumor_hu(hu, kidney, tumor, rng)
    out = labels.copy()
    out[tumor] = 2
    return new_hu, out, {"tumor_ml": float(tumor.sum() * voxel_ml), "appearance": app, "exophytic": exo}
