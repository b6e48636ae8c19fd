"""Slice-interpolation benchmark on real CT slices held out from training: GAN vs linear vs cubic.

Protocol of the field: from a thin volume keep every k-th slice, restore the others with each method,
compare in HU clipped to [-1024, 3071]: PSNR (data range 4095, from the MSE over all evaluated voxels),
SSIM (2D per slice, data range 4095, mean over slices), MAE (HU). Only restored slices are scored, and
the first/last k slices of the thin volume are excluded. Every phase (offset 0..k-1 of the kept slices)
is evaluated and pooled. Seconds = wall time of one ``interpolate`` call (one phase, whole slab).

Default data: slices 80–111 of ``../shared/data/totalseg/example_ct.nii.gz`` (the upper-abdomen slab
that also forms ``example_ct_sm``), which the shipped model never saw (it trained on slices 0–61 and
validated on 62–79).

    python -m benchmarks.interpolation                      # prints the table
    python -m benchmarks.interpolation --markdown benchmarks/results/interpolation.md --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from SculptorGANLib.interpolate.stage import interpolate
from SculptorGANLib.core.volume import CTVolume

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "totalseg" / "example_ct.nii.gz"


def metrics(pred: np.ndarray, truth: np.ndarray) -> dict:
    from skimage.metrics import structural_similarity

    p = np.clip(pred, -1024, 3071).astype(np.float64)
    t = np.clip(truth, -1024, 3071).astype(np.float64)
    mse = float(np.mean((p - t) ** 2))
    ssim = float(np.mean([structural_similarity(a, b, data_range=4095.0) for a, b in zip(p, t)]))
    return {"psnr": 10 * np.log10(4095.0 ** 2 / max(mse, 1e-12)), "ssim": ssim, "mae": float(np.mean(np.abs(p - t)))}


def evaluate(thin: CTVolume, k: int, method: str, model: str | None, device: str) -> dict:
    """Pool every phase of keep-every-k-th; returns metrics and mean seconds per interpolate call."""
    nz = thin.shape[0]
    preds, truths, seconds, info = [], [], [], {}
    for offset in range(k):
        kept = np.arange(offset, nz, k)
        thick = CTVolume(thin.array[kept], thin.geometry.with_z_spacing(thin.geometry.spacing[2] * k), name="thick")
        t0 = time.perf_counter()
        out, info = interpolate(thick, factor=k, method=method, model=model, device=device)
        seconds.append(time.perf_counter() - t0)
        for j in range(out.shape[0]):
            z = offset + j
            if j % k and k <= z < nz - k:
                preds.append(out.array[j])
                truths.append(thin.array[z])
    result = metrics(np.stack(preds), np.stack(truths))
    result.update(seconds=float(np.mean(seconds)), slices=len(preds), method_ran=info.get("method"),
                  model=info.get("model"), device=info.get("device", "cpu"))
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="thin CT volume (NIfTI/NRRD/MHA/DICOM folder)")
    p.add_argument("--z-range", default="80:112", help="held-out slices z0:z1 of --data (default 80:112)")
    p.add_argument("--factors", type=int, nargs="+", default=[2, 4])
    p.add_argument("--methods", nargs="+", default=["gan", "linear", "cubic"])
    p.add_argument("--model", default=None, help="model card (default: the shipped interpolation model)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dicom", default=None, metavar="FOLDER",
                   help="also restore the middle slice of a 3-slice DICOM series from its outer two (an extra, "
                        "out-of-distribution check outside the protocol, e.g. ../shared/data/dcmqi_ct3slice/ct)")
    p.add_argument("--time-full", action="store_true", help="also time each method on the whole --data volume (k=2)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--markdown", default=None, help="write a markdown table here")
    p.add_argument("--data-license", default="Apache-2.0 (TotalSegmentator repository example CT)",
                   help="license of --data, recorded in the model card")
    p.add_argument("--update-card", default=None, metavar="CARD",
                   help="write the results into this model card's 'metrics' (its weights checksum is unchanged)")
    args = p.parse_args(argv)

    import torch

    from SculptorGANLib.io.volumes import read_ct

    torch.set_num_threads(args.threads)
    if not Path(args.data).exists():
        print(f"{args.data}: not found (the benchmark needs ../shared/data)", file=sys.stderr)
        return 2
    ct = read_ct(args.data)
    z0, z1 = (int(v) for v in args.z_range.split(":"))
    thin = CTVolume(ct.array[z0:z1], ct.geometry, name=ct.name)
    results = {}
    lines = [f"data: {args.data} slices {z0}:{z1} ({thin.shape[0]}×{thin.shape[1]}×{thin.shape[2]}, "
             f"{thin.geometry.spacing[2]:g} mm); restored slices only, first/last k excluded, all phases pooled", "",
             "| k | method | PSNR (dB) | SSIM | MAE (HU) | s / volume | slices | ran |",
             "|---|---|---|---|---|---|---|---|"]
    for k in args.factors:
        for method in args.methods:
            r = evaluate(thin, k, method, args.model, args.device)
            results[f"k{k}_{method}"] = r
            ran = r["method_ran"] + (f" ({r['model']}, {r['device']})" if r.get("model") else "")
            lines.append(f"| {k} | {method} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['mae']:.1f} | {r['seconds']:.2f} "
                         f"| {r['slices']} | {ran} |")
        if "gan" in args.methods and "cubic" in args.methods:
            g, c = results[f"k{k}_gan"], results[f"k{k}_cubic"]
            results[f"k{k}_gan_minus_cubic"] = {"psnr_db": g["psnr"] - c["psnr"], "ssim": g["ssim"] - c["ssim"],
                                               "mae_hu": g["mae"] - c["mae"]}
            lines.append(f"| {k} | **gan − cubic** | **{g['psnr'] - c['psnr']:+.2f}** | **{g['ssim'] - c['ssim']:+.4f}** "
                         f"| {g['mae'] - c['mae']:+.1f} | | | |")
    if args.dicom:
        lines += ["", f"Extra (not the protocol): middle slice of {args.dicom} restored from its outer two slices "
                  "(2 mm gap, 512×512, 0.81 mm pixels; a scanner and resolution never seen in training)", "",
                  "| method | PSNR (dB) | SSIM | MAE (HU) |", "|---|---|---|---|"]
        three = read_ct(args.dicom)
        thick = CTVolume(three.array[::2], three.geometry.with_z_spacing(three.geometry.spacing[2] * 2), name="dcm")
        for method in args.methods:
            out, info = interpolate(thick, factor=2, method=method, model=args.model, device=args.device)
            r = metrics(out.array[1:2], three.array[1:2])
            results[f"dicom_{method}"] = r
            ran = info["method"]
            if info.get("cubic_fallback_slices_gap_too_narrow") or info.get("cubic_fallback_slices_gap_too_wide"):
                ran += ": gap outside the model's range, cubic fallback"
            lines.append(f"| {method} ({ran}) | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['mae']:.1f} |")
    if args.time_full:
        lines += ["", f"Timing on the whole volume ({ct.shape[0]} slices of {ct.shape[1]}×{ct.shape[2]}), keep every 2nd "
                  f"slice, restore ×2; one process, {args.threads} torch thread(s):", ""]
        thick = CTVolume(ct.array[::2], ct.geometry.with_z_spacing(ct.geometry.spacing[2] * 2), name="full")
        for method in args.methods:
            t0 = time.perf_counter()
            out, info = interpolate(thick, factor=2, method=method, model=args.model, device=args.device)
            sec = time.perf_counter() - t0
            results[f"full_{method}_seconds"] = sec
            lines.append(f"- {method}: {sec:.2f} s for {out.shape[0]} output slices ({info.get('device', 'cpu')})")
    text = "\n".join(lines)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if args.update_card:
        card_path = Path(args.update_card)
        card = json.loads(card_path.read_text())
        card["metrics"] = {
            "protocol": ("keep every k-th slice, restore the others; HU clipped to [-1024, 3071]; PSNR (data range "
                         "4095, pooled MSE), SSIM (2D per slice, mean), MAE (HU); restored slices only; first/last k "
                         "slices excluded; all k phases pooled"),
            "evaluation_data": f"{Path(args.data).name} slices {z0}:{z1}",
            "evaluation_data_license": args.data_license,
            "command": "python -m benchmarks.interpolation " + " ".join(argv if argv is not None else sys.argv[1:]),
            "results": {key: ({m: (round(float(v), 4) if isinstance(v, float) else v) for m, v in r.items()}
                              if isinstance(r, dict) else round(float(r), 4)) for key, r in results.items()},
        }
        card_path.write_text(json.dumps(card, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
