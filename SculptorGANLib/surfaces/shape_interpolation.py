"""Shape-based interpolation of thick-slice masks (signed distance, linear between slices).

A mask acquired on thick slices is staircased when meshed directly. Shape-based interpolation
(Raya & Udupa 1990; Herman et al. 1992) replaces each binary mask by its signed distance map,
interpolates that map linearly between slices and thresholds it at zero, so contours morph from one
slice to the next. Distances are computed in 3D with the true anisotropic spacing
(``scipy.ndimage.distance_transform_edt(sampling=...)``), which also closes the ends of a structure
half a slice beyond its first and last slice, where a thick slice's slab ends.

Everything here works in index space on (z, y, x) arrays; callers handle geometry.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

#: A slice axis is "thick" when its spacing exceeds this multiple of the finest spacing.
THICK_RATIO = 1.5


def mask_signed_distance(mask: np.ndarray, spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """Signed distance in mm: negative inside, positive outside, zero half-way between voxel centres.

    ``mask`` should have at least one background voxel; an empty or full mask gives a constant map.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.full(mask.shape, np.float32(1e6))
    if mask.all():
        return np.full(mask.shape, np.float32(-1e6))
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing_zyx)
    inside = ndimage.distance_transform_edt(mask, sampling=spacing_zyx)
    return (outside - inside).astype(np.float32)


def thick_axis(spacing_zyx: tuple[float, float, float], ratio: float = THICK_RATIO) -> int | None:
    """Array axis whose spacing is more than ``ratio`` times the finest one, else ``None``."""
    spacing = np.asarray(spacing_zyx, dtype=float)
    axis = int(np.argmax(spacing))
    return axis if spacing[axis] > ratio * spacing.min() else None


def upsample_factor(spacing_zyx: tuple[float, float, float], axis: int, target_mm: float | None = None) -> int:
    """Integer factor bringing ``axis`` to about ``target_mm`` (default: the largest other spacing)."""
    spacing = np.asarray(spacing_zyx, dtype=float)
    if target_mm is None:
        target_mm = float(np.delete(spacing, axis).max())
    return max(1, int(round(spacing[axis] / max(target_mm, 1e-6))))


def interpolate_field(field: np.ndarray, axis: int, factor: int) -> np.ndarray:
    """Linear interpolation of ``field`` along ``axis`` onto ``(n - 1) * factor + 1`` samples.

    Sample ``j`` of the result lies at old index ``j / factor``: the first and last samples coincide
    with the first and last input slices, so the grid origin does not move.
    """
    if factor <= 1:
        return field
    n = field.shape[axis]
    positions = np.arange((n - 1) * factor + 1) / factor
    lo = np.minimum(np.floor(positions).astype(int), n - 2)
    w = (positions - lo).astype(np.float32)
    shape = [1, 1, 1]
    shape[axis] = -1
    w = w.reshape(shape)
    a = np.take(field, lo, axis=axis)
    b = np.take(field, lo + 1, axis=axis)
    return a * (1 - w) + b * w


def shape_interpolate(mask: np.ndarray, spacing_zyx: tuple[float, float, float], axis: int,
                      factor: int) -> np.ndarray:
    """Signed distance of ``mask`` interpolated ``factor`` times along ``axis`` (float32, mm).

    Threshold the result ``< 0`` for a binary mask, or contour it at 0 for a sub-voxel surface.
    ``mask`` needs one background slice before and after the structure along ``axis`` for the ends
    to close (crop with a margin).
    """
    return interpolate_field(mask_signed_distance(mask, spacing_zyx), axis, factor)


def shape_interpolate_labels(labels: np.ndarray, spacing_zyx: tuple[float, float, float], axis: int,
                             factor: int) -> np.ndarray:
    """Multi-label shape-based interpolation: each voxel takes the label with the most negative distance.

    Labels are interpolated one at a time on their own bounding box, so the cost follows the
    structures, not the grid.
    """
    labels = np.asarray(labels)
    out_shape = list(labels.shape)
    out_shape[axis] = (labels.shape[axis] - 1) * factor + 1
    best = np.zeros(out_shape, dtype=np.float32)  # only negative distances win
    out = np.zeros(out_shape, dtype=labels.dtype)
    for value in np.unique(labels):
        if value == 0:
            continue
        mask = labels == value
        nz = np.argwhere(mask)
        lo = np.maximum(nz.min(axis=0) - 2, 0)
        hi = np.minimum(nz.max(axis=0) + 3, labels.shape)
        sdt = shape_interpolate(mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], spacing_zyx, axis, factor)
        start = lo.copy()
        start[axis] *= factor
        region = tuple(slice(s, s + n) for s, n in zip(start, sdt.shape))
        win = sdt < best[region]
        best[region][win] = sdt[win]
        out[region][win] = value
    return out
