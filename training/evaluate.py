"""Evaluate kidney/tumor segmentations (the paper's six metrics, box plots, comparison tables).

    python -m training.evaluate PRED GT --out DIR [--name MODEL]        # a file pair or two folders
    python -m training.evaluate --compare wpunet=DIR1 unet=DIR2 --out table.md
    python -m training.evaluate --segment CT_DIR --model PATH --pred-out PRED_DIR   # predict first
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path



def main(argv: list[str] | None = None) -> int:
    from SculptorGANLib.core.errors import SculptorGANError
    from SculptorGANLib.measure.evaluation import comparison_table, evaluate_files

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pred", nargs="?", help="predicted labelmap file or folder")
    ap.add_argument("gt", nargs="?", help="ground-truth labelmap file or folder")
    ap.add_argument("--out", required=True, help="output folder (or .md file with --compare)")
    ap.add_argument("--name", default="model", help="model name in the tables")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--compare", nargs="+", metavar="NAME=DIR", help="summaries (evaluation folders) to tabulate")
    ap.add_argument("--segment", metavar="CT_DIR", help="segment every CT in this folder first (then PRED is --pred-out)")
    ap.add_argument("--model", default=None, help="segmentation model card (default: shipped model)")
    ap.add_argument("--pred-out", default=None, help="where --segment writes its labelmaps")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    try:
        if args.compare:
            summaries = {}
            for item in args.compare:
                name, _, folder = item.partition("=")
                summaries[name] = json.loads((Path(folder) / "summary.json").read_text(encoding="utf-8"))
            table = comparison_table(summaries)
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(table + "\n", encoding="utf-8")
            print(table)
            return 0
        if args.segment:
            from SculptorGANLib.io.volumes import read_ct, stem, write_volume
            from SculptorGANLib.segment.stage import segment

            pred_dir = Path(args.pred_out or Path(args.out) / "predictions")
            pred_dir.mkdir(parents=True, exist_ok=True)
            for ct_path in sorted(Path(args.segment).iterdir()):
                ct = read_ct(ct_path)
                labels, info = segment(ct, model=args.model, device=args.device)
                write_volume(labels, pred_dir / f"{stem(ct_path)}.nii.gz")
                print(f"{ct_path.name}: {info['method']} {info.get('seconds')} s")
            args.pred = str(pred_dir)
        if not (args.pred and args.gt):
            ap.error("PRED and GT are required (or --compare)")
        summary = evaluate_files(args.pred, args.gt, args.out, name=args.name, plots=not args.no_plots)
        for cls in ("kidney", "tumor"):
            s = summary[cls]
            print(f"{cls:7s} Dice {s['dice']['mean']:.4f}  Jaccard {s['jaccard']['mean']:.4f}  "
                  f"HD {s['hd']['mean']:.2f} mm  HD95 {s['hd95']['mean']:.2f} mm  (n={s['dice']['n']})")
        print(f"results in {args.out}")
        return 0
    except SculptorGANError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
