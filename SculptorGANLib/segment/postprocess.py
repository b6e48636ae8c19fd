"""Post-processing of kidney (1) / tumor (2) labelmaps.

* keep the largest kidney+tumor component on each side of the body (patient left/right decided in
  physical LPS space relative to the body midline, never by array index), dropping smaller ones;
* tumor only where it is attached to a kept kidney;
* fill holes slice by slice and in 3D, drop specks below a minimum volume;
* optional morphological opening/closing (Algorithm 2, "refine M using morphological operations").
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..core.anatomy import body_midline_x, physical_x
from ..core.volume import KIDNEY, TUMOR, LabelVolume

_CONN = np.ones((3, 3, 3), bool)


def _ball_mm(spacing_xyz, radius_mm: float) -> np.ndarray:
    sp = np.asarray(spacing_xyz, float)[::-1]
    r = np.maximum(1, np.floor(radius_mm / sp)).astype(int)
    zz, yy, xx = np.ogrid[-r[0]:r[0] + 1, -r[1]:r[1] + 1, -r[2]:r[2] + 1]
    return (zz * sp[0]) ** 2 + (yy * sp[1]) ** 2 + (xx * sp[2]) ** 2 <= radius_mm ** 2 + 1e-6


def _in_posterior_body(comps, n, centroids, ct_array, labels: LabelVolume) -> list[bool]:
    """Whether each component's centroid lies behind the body's centre (LPS +y) on its own slices.

    Native kidneys are retroperitoneal, posterior to the centre of the abdominal cross-section; the
    bladder, bowel loops and liver edge that a network may confuse with them mostly are not.
    (Pelvic or transplant kidneys would be dropped by this rule; it can be switched off.)
    """
    if ct_array is None:
        return [True] * n
    geo = labels.geometry
    out = []
    for i, box in enumerate(ndimage.find_objects(comps, n)):  # one pass for every component's slices
        z0, z1 = box[0].start, box[0].stop
        region = ct_array[z0:z1] > -500
        if not region.any():
            out.append(True)
            continue
        bc = np.asarray(ndimage.center_of_mass(region)) + [z0, 0, 0]
        pts = geo.index_to_physical(np.stack([bc, centroids[i]])[:, ::-1])
        out.append(bool(pts[1, 1] > pts[0, 1]))  # LPS y grows towards posterior
    return out


def keep_kidneys(labels: LabelVolume, ct_array: np.ndarray | None = None, min_ml: float = 5.0,
                 max_per_side: int = 1, posterior_only: bool = True) -> np.ndarray:
    """Labels keeping, per body side, the largest kidney+tumor component(s) of at least ``min_ml``.

    With a CT and ``posterior_only``, components whose centroid is anterior to the body's centre
    on their slices are passed over (see :func:`_in_posterior_body`) — unless a side has no other
    candidate: a kidney merged with an anterior leak is then still kept rather than lost.
    """
    arr = labels.array
    fg = arr > 0
    comps, n = ndimage.label(fg, structure=_CONN)
    if n == 0:
        return arr.copy()
    idx = np.arange(1, n + 1)
    sizes = ndimage.sum_labels(fg, comps, idx) * labels.voxel_volume_ml
    # a component must contain kidney tissue (tumor alone is not kept)
    kidney_sizes = ndimage.sum_labels(arr == KIDNEY, comps, idx)
    centroids = np.asarray(ndimage.center_of_mass(fg, comps, idx)).reshape(-1, 3)
    midline = body_midline_x(ct_array, labels.geometry, labels.shape)
    xs = physical_x(labels.geometry, labels.shape, centroids)
    posterior_ok = _in_posterior_body(comps, n, centroids, ct_array, labels) if posterior_only else [True] * n
    keep = []
    for side in (1, -1):  # +: patient left (LPS +x), -: patient right
        cand = [i for i in range(n) if np.sign(xs[i] - midline + 1e-9) == side and kidney_sizes[i] > 0
                and sizes[i] >= min_ml]
        cand = [i for i in cand if posterior_ok[i]] or cand
        keep += sorted(cand, key=lambda i: -sizes[i])[:max_per_side]
    out = np.where(np.isin(comps, np.asarray(keep, int) + 1), arr, 0).astype(np.uint8)
    return out


def fill_holes(arr: np.ndarray) -> np.ndarray:
    """Fill enclosed background inside the foreground (3D); filled voxels become kidney."""
    fg = arr > 0
    filled = ndimage.binary_fill_holes(fg)
    out = arr.copy()
    out[filled & ~fg] = KIDNEY
    return out


def drop_specks(arr: np.ndarray, voxel_ml: float, min_ml: float) -> np.ndarray:
    """Remove connected tumor/kidney pieces smaller than ``min_ml`` (per label)."""
    out = arr.copy()
    for value in (KIDNEY, TUMOR):
        mask = arr == value
        comps, n = ndimage.label(mask, structure=_CONN)
        if n == 0:
            continue
        sizes = ndimage.sum_labels(mask, comps, np.arange(1, n + 1)) * voxel_ml
        small = np.isin(comps, np.nonzero(sizes < min_ml)[0] + 1)
        # a small tumor piece inside a kidney becomes kidney, otherwise background
        out[small] = KIDNEY if value == TUMOR else 0
    return out


def tumor_attached(arr: np.ndarray) -> np.ndarray:
    """Tumor components that touch no kidney voxel are removed."""
    out = arr.copy()
    tumor = arr == TUMOR
    comps, n = ndimage.label(tumor, structure=_CONN)
    if n == 0:
        return out
    near_kidney = ndimage.binary_dilation(arr == KIDNEY, structure=_CONN)
    touching = np.unique(comps[near_kidney & tumor])
    out[tumor & ~np.isin(comps, touching[touching > 0])] = 0
    return out


def morphology(arr: np.ndarray, spacing_xyz, radius_mm: float) -> np.ndarray:
    """Opening then closing of the foreground with a ball of ``radius_mm`` (tumor kept as labelled)."""
    ball = _ball_mm(spacing_xyz, radius_mm)
    fg = ndimage.binary_closing(ndimage.binary_opening(arr > 0, ball), ball)
    out = np.where(fg, np.maximum(arr, KIDNEY), 0).astype(np.uint8)
    return out


def postprocess(labels: LabelVolume, ct_array: np.ndarray | None = None, *, min_kidney_ml: float = 5.0,
                speck_ml: float = 0.2, morph_mm: float = 0.0, max_per_side: int = 1,
                posterior_only: bool = True) -> LabelVolume:
    """All post-processing steps in order; returns a new LabelVolume on the same grid."""
    arr = labels.array.astype(np.uint8)
    if morph_mm > 0:
        arr = morphology(arr, labels.spacing, morph_mm)
    arr = drop_specks(arr, labels.voxel_volume_ml, speck_ml)
    arr = tumor_attached(arr)
    tmp = LabelVolume(arr, labels.geometry, name=labels.name, labels=labels.labels)
    arr = keep_kidneys(tmp, ct_array, min_ml=min_kidney_ml, max_per_side=max_per_side, posterior_only=posterior_only)
    arr = fill_holes(arr)
    return LabelVolume(arr, labels.geometry, name=labels.name, labels=dict(labels.labels))
