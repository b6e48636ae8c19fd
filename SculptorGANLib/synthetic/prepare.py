"""Cache training cases for the synthetic segmentation training.

Each cached case is an ``.npz`` with ``labels`` (0/1/2) on a canonical 3 mm grid and either a
``layout`` (tissue classes around a real KiTS19 mask; intensities are drawn at training time) or an
``image`` in HU (our phantom, or a real CT with labels).

    python -m SculptorGANLib.synthetic.prepare --kits ../shared/data/kits19_seg --out training/cache/synth \
        --phantoms 40 --variants 1
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ..io.volumes import read_labels
from .phantom import make_phantom
from ..segment.preprocess import to_canonical
from .layout import make_layout


def crop_to_kidneys(labels: np.ndarray, margin_vox=(25, 200, 200)) -> tuple[slice, ...]:
    """Slices keeping the kidneys plus a margin (z margin limits memory; the grid's own limits kept)."""
    fg = np.argwhere(labels > 0)
    if len(fg) == 0:
        return tuple(slice(None) for _ in range(3))
    lo, hi = fg.min(0), fg.max(0) + 1
    return tuple(slice(max(0, int(a) - m), min(n, int(b) + m)) for a, b, m, n in zip(lo, hi, margin_vox, labels.shape))


def kits_case(path: Path, spacing: float, rng: np.random.Generator, variants: int) -> list[dict]:
    lab = read_labels(path)
    arr, _ = to_canonical(lab, (spacing,) * 3, label=True)
    arr = arr[crop_to_kidneys(arr, (int(75 / spacing), 999, 999))]
    return [{"labels": arr, "layout": make_layout(arr, (spacing,) * 3, rng)} for _ in range(variants)]


def phantom_case(seed: int, spacing: float) -> dict:
    ct, lab = make_phantom(seed=seed)
    img, _ = to_canonical(ct, (spacing,) * 3, default=-1000.0)
    arr, _ = to_canonical(lab, (spacing,) * 3, label=True)
    return {"labels": arr, "image": img.astype(np.float32)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kits", type=Path, help="folder of KiTS19 masks (case_XXXXX.nii.gz or case_XXXXX/segmentation.nii.gz)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--spacing", type=float, default=3.0)
    ap.add_argument("--variants", type=int, default=1, help="layouts per KiTS mask")
    ap.add_argument("--phantoms", type=int, default=0, help="number of phantom cases (seeds 100, 101, ...)")
    ap.add_argument("--cases", default="", help="comma list of case ids to restrict to")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for i in range(args.phantoms):
        target = args.out / f"phantom_{100 + i:03d}.npz"
        if not target.exists():
            np.savez_compressed(target, **phantom_case(100 + i, args.spacing))
    if args.kits:
        paths = sorted(args.kits.glob("case_*.nii.gz")) + sorted(args.kits.glob("case_*/segmentation.nii.gz"))
        wanted = {c.strip() for c in args.cases.split(",") if c.strip()}
        for path in paths:
            case = path.name.split(".")[0] if path.name.startswith("case_") else path.parent.name
            if wanted and case not in wanted:
                continue
            if all((args.out / f"{case}_v{v}.npz").exists() for v in range(args.variants)):
                continue
            t = time.time()
            rng = np.random.default_rng([args.seed, int(case.split("_")[1])])
            for v, item in enumerate(kits_case(path, args.spacing, rng, args.variants)):
                np.savez_compressed(args.out / f"{case}_v{v}.npz", **item)
            print(f"{case}: {time.time() - t:.1f}s", flush=True)


if __name__ == "__main__":
    main()
