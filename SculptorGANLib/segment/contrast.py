"""Is the CT contrast-enhanced? Judged from the HU inside the segmented kidneys.

Renal parenchyma measures about 30–45 HU without contrast and well above 100 HU in the arterial,
nephrographic and excretory phases. On a non-contrast scan a tumor is nearly isodense with the kidney
(and bowel content is too), and the shipped model has seen such scans only as synthetic renderings, so
the labels there need a human check. This module only measures and words that warning; it never
changes labels.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..core.anatomy import bounding_box
from ..core.volume import KIDNEY

#: Kidney median HU below which a scan is called non-contrast.
NONCONTRAST_MAX_HU = 80.0
#: Fewer (eroded) kidney voxels than this give no verdict.
MIN_VOXELS = 50


def kidney_median_hu(ct_array: np.ndarray, labels: np.ndarray) -> float | None:
    """Median HU of the kidney label (eroded by one voxel against partial volume); None if too small."""
    box = bounding_box(labels == KIDNEY)
    if box is None:
        return None
    # one voxel of background around the box, so the erosion treats the box edge like the full grid does
    crop = tuple(slice(max(0, a - 1), b + 1) for a, b in zip(*box))
    kidney = labels[crop] == KIDNEY
    core = ndimage.binary_erosion(kidney)
    if core.sum() < MIN_VOXELS:
        core = kidney
    if core.sum() < MIN_VOXELS:
        return None
    return float(np.median(ct_array[crop][core]))


def contrast_phase(median_hu: float | None) -> str:
    """'non-contrast', 'enhanced' or 'unknown' for a kidney median HU."""
    if median_hu is None:
        return "unknown"
    return "non-contrast" if median_hu < NONCONTRAST_MAX_HU else "enhanced"


def contrast_note(median_hu: float | None) -> str | None:
    """A warning for users when the scan looks non-contrast, else None."""
    if contrast_phase(median_hu) != "non-contrast":
        return None
    return (f"the kidneys measure about {median_hu:.0f} HU, so this CT looks non-contrast; without contrast a "
            "tumor is nearly isodense with the kidney and with bowel, and the model has seen such scans only as "
            "synthetic renderings: check the tumor label (e.g. in Slicer's Segment Editor) before using it")
