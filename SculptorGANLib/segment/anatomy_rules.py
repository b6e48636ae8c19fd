"""Anatomy rules for kidney (1) / tumor (2) labels on the model's canonical grid (identity LPS).

The network can merge a kidney with a neighbour of the same density (liver, colon) or call a neighbour
tumor. These rules use only the CT and the labels, and each returns what it changed so the stage can
report it:

* **landmarks**: the body midline and the vertebral column (bone near the midline, behind the body's
  centre) per scan; the liver-dome level (slices where lung fills much of the body cross-section);
* **kidney candidates** per body side are ranked by their kidney-label volume (not tumor), among those
  whose centre lies beside the spine at the spine's depth (anterior leaks, bowel, spleen, bladder fail);
* **leaks**: a kidney component longer than a kidney can be (``max_length_mm``) is cut back to a
  geodesic radius around its kidney core (the thickest point of its kidney label); kidney label at or
  above the liver dome is removed;
* **tumor only in or on a kidney**: tumor pieces must touch a kept kidney over a real contact
  (``min_contact`` of their surface); on a non-contrast scan (kidney median HU below the contrast
  module's threshold), where bowel content is as dense as kidney and tumor, tube-shaped pieces (more
  elongated than any KiTS19 tumor: bowel beside the kidney) are dropped too;
* **no fat in the kidney label** is applied later, on the input grid (``inference.labels_from_probabilities``).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..core.volume import KIDNEY, TUMOR, Geometry

_CONN = np.ones((3, 3, 3), bool)


def _mm(geometry: Geometry) -> np.ndarray:
    return np.asarray(geometry.spacing, float)[::-1]  # z, y, x


def landmarks(hu: np.ndarray, geometry: Geometry) -> dict:
    """Body midline x, spine depth y (index units), and the liver-dome slice (None if not in view)."""
    body = hu > -500
    sl_area = body.sum((1, 2))
    z_body = sl_area > 0.2 * max(1, sl_area.max())
    mid_x = float(ndimage.center_of_mass(body[z_body])[2]) if z_body.any() else hu.shape[2] / 2
    sp = _mm(geometry)
    band = int(round(35 / sp[2]))
    x0, x1 = max(0, int(mid_x) - band), int(mid_x) + band + 1
    bone = (hu[:, :, x0:x1] > 180) & body[:, :, x0:x1]
    ys = np.nonzero(bone)[1]
    body_y = float(ndimage.center_of_mass(body[z_body])[1]) if z_body.any() else hu.shape[1] / 2
    # the spine: the bone in the midline band behind the body's centre (sternum/ribs in front excluded)
    post = ys[ys > body_y - 10 / sp[1]]
    spine_y = float(np.percentile(post, 30)) if post.size > 50 else None  # vertebral body, not the processes
    # liver dome: the lowest slice of the run of slices, reaching the top of the scan's lung, where
    # lung fills more than 15 % of the body's filled cross-section
    dome = None
    filled = np.stack([ndimage.binary_fill_holes(s) for s in body[:, ::2, ::2]])
    frac = (filled & (hu[:, ::2, ::2] < -500)).sum((1, 2)) / np.maximum(1, filled.sum((1, 2)))
    lungy = np.nonzero(frac > 0.30)[0]
    if lungy.size:
        z = int(lungy[-1])
        while z - 1 >= 0 and frac[z - 1] > 0.30:
            z -= 1
        if lungy[-1] - z >= 2:
            dome = z
    return {"mid_x": mid_x, "spine_y": spine_y, "dome_z": dome, "body_y": body_y}


def _geodesic_keep(comp: np.ndarray, seed: tuple, radius_mm: float, sp: np.ndarray) -> np.ndarray:
    """Voxels of ``comp`` within a geodesic (in-mask) distance ``radius_mm`` of ``seed``."""
    step = float(sp.mean())
    n_iter = int(np.ceil(radius_mm / step))
    front = np.zeros_like(comp)
    front[seed] = True
    reach = front.copy()
    for _ in range(n_iter):
        grown = ndimage.binary_dilation(reach, structure=ndimage.generate_binary_structure(3, 1)) & comp
        if grown.sum() == reach.sum():
            break
        reach = grown
    return reach


def cut_leak(part: np.ndarray, sp: np.ndarray, max_length_mm: float, keep_radius_mm: float,
             depth_mm: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """A kidney component cut back to ``keep_radius_mm`` around its kidney core when its longest
    bounding-box side exceeds ``max_length_mm``; returns (labels, changed).

    The core is the thickest point of the kidney label, weighted by ``depth_mm`` (per y row of ``part``:
    mm anterior (-) or posterior (+) of the spine): a colon or liver leak is often as thick as the
    kidney but lies further forward."""
    fg = part > 0
    kid = part == KIDNEY
    idx = np.argwhere(kid if kid.any() else fg)  # kidney label only: a large tumor may reach further
    extent = (idx.max(0) - idx.min(0) + 1) * sp
    if extent.max() <= max_length_mm:
        return part, False
    dt = ndimage.distance_transform_edt(kid if kid.any() else fg, sampling=sp)
    if depth_mm is not None:
        excess = np.clip(np.abs(depth_mm) - 35.0, 0, None)
        dt = dt * np.exp(-(excess / 20.0) ** 2)[None, :, None]
    seed = np.unravel_index(int(np.argmax(dt)), dt.shape)
    keep = _geodesic_keep(fg, seed, keep_radius_mm, sp)
    # only kidney label is cut: a large tumor may well reach further than a kidney (tumor pieces left
    # without a kidney are removed by the tumor rule); kidney pieces cut off from the core go too
    out = np.where(keep | (part == TUMOR), part, 0).astype(np.uint8)
    comps, n = ndimage.label(out > 0, structure=_CONN)
    if n > 1:
        out[(comps != comps[seed]) & (out == KIDNEY)] = 0
    return out, bool((out != part).any())


def apply_rules(arr: np.ndarray, hu: np.ndarray, geometry: Geometry, *, min_kidney_ml: float = 5.0,
                max_length_mm: float = 160.0, keep_radius_mm: float = 85.0, min_contact: float = 0.08,
                dome_cut: bool = True) -> tuple[np.ndarray, list[str]]:
    """The rules above on a 0/1/2 array; returns (labels, notes on every rule that changed something)."""
    notes: list[str] = []
    vml = float(np.prod(geometry.spacing)) / 1000.0
    sp = _mm(geometry)
    lm = landmarks(hu, geometry)
    out = arr.astype(np.uint8).copy()
    if dome_cut and lm["dome_z"] is not None:
        above = out[lm["dome_z"]:] > 0
        if above.sum() * vml > 0.5:
            notes.append(f"removed {above.sum() * vml:.0f} ml of label at or above the liver dome (lung level)")
            out[lm["dome_z"]:] = 0
    comps, n = ndimage.label(out > 0, structure=_CONN)
    if n == 0:
        return out, notes
    idx = np.arange(1, n + 1)
    kid_ml = ndimage.sum_labels(out == KIDNEY, comps, idx) * vml
    cents = np.asarray(ndimage.center_of_mass(out > 0, comps, idx)).reshape(-1, 3)
    # patient left/right: +x of the identity-LPS grid is the patient's left
    side = np.sign(cents[:, 2] - lm["mid_x"] + 1e-9)
    plausible = np.ones(n, bool)
    if lm["spine_y"] is not None:
        dy = (cents[:, 1] - lm["spine_y"]) * sp[1]   # + = posterior of the spine's median depth
        dx = np.abs(cents[:, 2] - lm["mid_x"]) * sp[2]
        plausible = (dy > -75) & (dy < 60) & (dx > 20) & (dx < 170)
    keep = []
    for s, name in ((1, "left"), (-1, "right")):
        cand = [i for i in range(n) if side[i] == s and kid_ml[i] >= min_kidney_ml]
        good = [i for i in cand if plausible[i]]
        if cand and not good:
            notes.append(f"{name}: no kidney candidate beside the spine; kept the largest anyway")
        pool = good or cand
        if pool:
            best = max(pool, key=lambda i: kid_ml[i])
            keep.append(best)
            passed = sorted((i for i in cand if i != best and kid_ml[i] > kid_ml[best] * 0.5), key=lambda i: -kid_ml[i])
            if passed and best != max(cand, key=lambda i: kid_ml[i]):
                notes.append(f"{name}: passed over a larger candidate away from the spine ({kid_ml[passed[0]]:.0f} ml)")
    dropped = (out > 0) & ~np.isin(comps, np.asarray(keep, int) + 1)
    out[dropped] = 0
    for i in keep:
        m = comps == i + 1
        box = tuple(slice(max(0, a - 1), b + 2) for a, b in zip(np.argwhere(m).min(0), np.argwhere(m).max(0)))
        part = np.where(m[box], out[box], 0).astype(np.uint8)
        depth = None if lm["spine_y"] is None else (np.arange(box[1].start, box[1].start + part.shape[1]) - lm["spine_y"]) * sp[1]
        cut, changed = cut_leak(part, sp, max_length_mm, keep_radius_mm, depth)
        if changed:
            lost = ((part > 0) & (cut == 0)).sum() * vml
            notes.append(f"{'left' if side[i] > 0 else 'right'} kidney longer than {max_length_mm:.0f} mm: cut {lost:.0f} ml of leak")
            region = out[box]
            region[(m[box]) & (cut == 0)] = 0
    # on a non-contrast scan bowel content is as dense as kidney and tumor: there a tube-shaped "tumor"
    # beside the kidney is taken for bowel (on enhanced scans the network's tumor shapes are trusted)
    from .contrast import contrast_phase, kidney_median_hu

    noncontrast = contrast_phase(kidney_median_hu(hu, out)) == "non-contrast"
    out, tnote = tumor_on_kidney(out, vml, min_contact, sp if noncontrast else None)
    notes += tnote
    return out, notes


#: Largest principal-axis ratio (longest / middle) a tumor piece may have: the 77 KiTS19 training tumors
#: over 3 ml measure at most 1.62 (99th percentile 1.50) on the 3 mm grid; bowel labelled tumor is a tube.
MAX_TUMOR_ELONGATION = 1.9


def elongation(mask: np.ndarray, spacing_zyx) -> float:
    """sqrt(λ1/λ2) of the voxel-coordinate covariance (mm): 1 for a sphere, large for a tube."""
    pts = np.argwhere(mask) * np.asarray(spacing_zyx, float)
    if len(pts) < 10:
        return 1.0
    ev = np.sort(np.linalg.eigvalsh(np.cov(pts.T)))[::-1]
    return float(np.sqrt(ev[0] / max(ev[1], 1e-9)))


def tumor_on_kidney(arr: np.ndarray, voxel_ml: float, min_contact: float, spacing_zyx=None,
                    min_ml_shape: float = 2.0) -> tuple[np.ndarray, list[str]]:
    """Tumor pieces kept only where a real part of their surface touches kidney label and (pieces of
    ``min_ml_shape`` ml or more, when ``spacing_zyx`` is given) when not tube-shaped like bowel."""
    out = arr.copy()
    tumor = out == TUMOR
    comps, n = ndimage.label(tumor, structure=_CONN)
    if n == 0:
        return out, []
    kidney_near = ndimage.binary_dilation(out == KIDNEY, structure=_CONN)
    surface = tumor & ~ndimage.binary_erosion(tumor, structure=_CONN)
    idx = np.arange(1, n + 1)
    surf = ndimage.sum_labels(surface, comps, idx)
    contact = ndimage.sum_labels(surface & kidney_near, comps, idx)
    bad = [i + 1 for i in range(n) if contact[i] < min_contact * max(1.0, surf[i])]
    notes = []
    if bad:
        m = np.isin(comps, bad)
        out[m] = 0
        notes.append(f"removed {m.sum() * voxel_ml:.1f} ml of tumor label not in or on a kidney")
    if spacing_zyx is not None:
        sizes = ndimage.sum_labels(tumor, comps, idx) * voxel_ml
        tubes = [i + 1 for i in range(n) if i + 1 not in bad and sizes[i] >= min_ml_shape
                 and elongation(comps == i + 1, spacing_zyx) > MAX_TUMOR_ELONGATION]
        if tubes:
            m = np.isin(comps, tubes)
            out[m] = 0
            notes.append(f"removed {m.sum() * voxel_ml:.1f} ml of tube-shaped tumor label (bowel-like: more "
                         f"elongated than any KiTS19 tumor)")
    return out, notes
