"""Phase II stage: kidney and tumor segmentation.

Until the WP-UNet weights ship, :func:`segment` runs a classical fallback (contrast-enhanced
parenchyma threshold + shape rules) and says so in the returned info.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage

from .volume import KIDNEY, CTVolume, LabelVolume

ProgressFn = Callable[[float, str], None]


def threshold_kidneys(ct: CTVolume, low: float = 100.0, high: float = 260.0, min_ml: float = 20.0) -> np.ndarray:
    """Kidney mask from enhanced-parenchyma HU, dropping vessel-like tubes that span the whole scan."""
    smooth = ndimage.gaussian_filter(ct.array, 1.0)
    mask = (smooth > low) & (smooth < high)
    mask = ndimage.binary_opening(mask, iterations=1)
    components, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = ndimage.sum_labels(mask, components, range(1, count + 1)) * ct.voxel_volume_ml
    slices = ndimage.find_objects(components)
    nz = ct.shape[0]
    keep = [i + 1 for i, (size, sl) in enumerate(zip(sizes, slices))
            if size >= min_ml and (sl[0].stop - sl[0].start) < 0.8 * nz]
    keep = sorted(keep, key=lambda i: -sizes[i - 1])[:2]
    out = np.isin(components, keep)
    return np.stack([ndimage.binary_fill_holes(s) for s in out])


def segment(ct: CTVolume, model: str | None = None, device: str = "auto",
            progress: ProgressFn | None = None, cancel: Callable[[], bool] | None = None) -> tuple[LabelVolume, dict]:
    """Segment kidneys (1) and tumor (2) on the CT's own grid."""
    if progress:
        progress(0.0, "segmenting (threshold fallback)")
    labels = np.zeros(ct.shape, dtype=np.uint8)
    labels[threshold_kidneys(ct)] = KIDNEY
    if progress:
        progress(1.0, "segmented")
    info = {"method": "threshold (classical fallback; WP-UNet weights not shipped yet; tumor not detected)",
            "device": "cpu", "model": None}
    return LabelVolume(labels, ct.geometry, name=f"{ct.name}_segmentation"), info
