"""PNG sheets for checking a reference (and optionally a prediction) slice by slice.

Axial slices every ``--step`` slices, cropped to the kidneys, radiological view (patient right on the
image left, anterior up); reference right kidney red, left green, prediction kidney blue, tumor magenta.

    python -m training.references.overlays totalseg --refs training/cache/references --out /tmp/check [--pred P.nii.gz]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .data import DATA, read_case

COLOURS = ((1, (255, 0, 0)), (2, (0, 255, 0)))
PRED_COLOURS = ((1, (0, 160, 255)), (2, (255, 0, 255)))


def _edges(rgb: np.ndarray, mask: np.ndarray, colour) -> None:
    rgb[mask & ~ndimage.binary_erosion(mask)] = colour


def sheets(ct: np.ndarray, ref: np.ndarray, pred: np.ndarray | None, spacing, out: Path, name: str,
           step: int = 2, scale: float = 3.0) -> list[Path]:
    """Write the sheets; returns their paths."""
    from PIL import Image, ImageDraw

    fg = (ref > 0) if pred is None else (ref > 0) | (pred > 0)
    if not fg.any():
        return []
    idx = np.argwhere(fg)
    lo, hi = np.maximum(idx.min(0) - [0, 8, 8], 0), idx.max(0) + [1, 9, 9]
    tiles = []
    for z in range(lo[0], hi[0], step):
        g = (np.clip((ct[z, lo[1]:hi[1], lo[2]:hi[2]] + 160) / 400, 0, 1) * 255).astype(np.uint8)
        rgb = np.stack([g] * 3, -1)
        for arr, colours in ((ref, COLOURS), (pred, PRED_COLOURS)):
            if arr is not None:
                for value, colour in colours:
                    _edges(rgb, arr[z, lo[1]:hi[1], lo[2]:hi[2]] == value, colour)
        tile = Image.fromarray(rgb).resize((int(rgb.shape[1] * scale), int(rgb.shape[0] * scale * spacing[1] / spacing[0])),
                                           Image.NEAREST)
        ImageDraw.Draw(tile).text((2, 2), f"z={z}", fill=(255, 255, 0))
        tiles.append(tile)
    w, h = tiles[0].size
    ncol = max(1, min(4, 1600 // w))
    per = ncol * max(1, 1500 // h)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for start in range(0, len(tiles), per):
        part = tiles[start:start + per]
        sheet = Image.new("RGB", (w * ncol, h * ((len(part) + ncol - 1) // ncol)))
        for i, tile in enumerate(part):
            sheet.paste(tile, ((i % ncol) * w, (i // ncol) * h))
        path = out / f"{name}_{start // per}.png"
        sheet.save(path)
        paths.append(path)
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("case")
    ap.add_argument("--refs", type=Path, default=Path("training/cache/references"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--pred", type=Path, default=None, help="a prediction on the same canonical grid")
    ap.add_argument("--step", type=int, default=2)
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args(argv)
    ct, image = read_case(args.case, args.data)
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(args.refs / f"{args.case}_kidneys.nii.gz")))
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(args.pred))) if args.pred else None
    for path in sheets(ct.array, ref, pred, image.GetSpacing(), args.out, f"check_{args.case}", args.step):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
