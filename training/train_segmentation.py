"""Train the WP-UNet kidney/tumor segmentation network (Phase II), resumable and torchrun-ready.

Data (``data_mode``):
  * ``synthetic`` – cached cases from ``python -m SculptorGANLib.synth.prepare`` (``data``: a folder of
    ``.npz``): tissue layouts around real KiTS19 masks, rendered to CT-like HU on the fly with
    randomized intensities (domain randomization), plus phantom/real image cases;
  * ``images`` – a KiTS19 folder (``case_*/imaging.nii.gz`` + ``segmentation.nii.gz``) or two folders
    ``images/`` and ``labels/`` with matching file names (``data``: the root folder). Preprocessed once
    (canonical grid, windowed) into ``cache_dir`` (default ``<data>/.sculptorgan_cache``, or
    ``<out>/cache`` when the data folder is read-only) and memory-mapped (``training/cache.py``).

Loading: ``num_workers`` > 0 draws and augments patches in DataLoader worker processes (item i of epoch e
from the seed (seed, e, i), ``training/loading.py``); ``images`` always goes through a DataLoader;
``synthetic`` with 0 workers draws in the training process as before. ``amp`` (default true) trains
and validates under autocast with a GradScaler on CUDA; a no-op on CPU.

Patches are sampled with foreground oversampling; augmentation uses MONAI transforms (rotation,
scaling, elastic deformation, mirroring, contrast/gamma, intensity scale/shift, noise). Loss is
α·Dice + (1−α)·CE; Adam with LR ×0.2 on a plateau and early stopping; magnitude pruning of the WP
blocks' depthwise/pointwise weights ramps up to ``sparsity`` and is followed by fine-tuning.

    python training/train_segmentation.py --config training/configs/segmentation_synth_cpu.json \
        --out training/runs/seg --max-minutes 50
    python training/train_segmentation.py --out training/runs/seg --resume          # continue
    python training/train_segmentation.py --out training/runs/seg --export Resources/Models \
        --set name=wpunet_kidney                                                        # model card + weights
    torchrun --nproc_per_node 2 training/train_segmentation.py --config ...            # DDP
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from training.common import (DistInfo, Logger, amp_call, autocast, barrier, broadcast_object,  # noqa: E402
                             cleanup_distributed, grad_scaler, init_distributed, load_checkpoint, load_config,
                             mean_across_ranks, override_keys, restore_scaler, rng_state, save_checkpoint, scaled_step,
                             seed_everything, set_rng_state, unwrap, wrap_ddp, write_run_record)
from training.loading import SeededDataset, default_cache_dir, epoch_batches, seeded_loader  # noqa: E402

DEFAULTS: dict = {
    # data
    "data_mode": "synthetic", "data": "training/cache/synth3mm", "val_cases": [], "val_fraction": 0.1,
    "test_cases": [], "spacing": [3.0, 3.0, 3.0], "window": [-200.0, 400.0],
    # model
    "architecture": "wpunet", "features": [16, 32, 64, 128], "dims": 3,
    # optimisation (the paper's defaults)
    "lr": 3e-4, "batch_size": 8, "patch": [48, 192, 192], "iters_per_epoch": 250, "max_epochs": 1000,
    "plateau_patience": 30, "plateau_factor": 0.2, "early_stop": 50, "alpha": 0.5, "fg_prob": 0.67,
    # pruning
    "sparsity": 0.5, "prune_start": 2000, "prune_every": 250, "prune_steps": 4,
    # augmentation
    "aug_rotate_deg": 15.0, "aug_scale": 0.15, "aug_elastic_prob": 0.1, "aug_flip_prob": 0.5,
    "aug_gamma_prob": 0.3, "aug_contrast_prob": 0.3, "aug_noise_prob": 0.2, "synth_random_prob": 0.15, "case_weights": {},
    # inference/validation
    "roi": [96, 128, 128], "val_every_epochs": 1, "val_max_cases": 8,
    # bookkeeping
    "seed": 0, "threads": 1, "device": "auto", "num_workers": 0, "name": "wpunet_kidney", "version": "1",
    "checkpoint_minutes": 5.0,
    "amp": True,                    # mixed precision on CUDA (no-op on CPU)
    "cache_dir": "",                # data_mode images: preprocessed cases ("" = <data>/.sculptorgan_cache)
}


# ----------------------------------------------------------------------------- data
def find_image_cases(root: Path) -> list[tuple[Path, Path]]:
    """(image, label) pairs: KiTS19 layout or images/ + labels/ folders."""
    pairs = [(p / "imaging.nii.gz", p / "segmentation.nii.gz") for p in sorted(root.glob("case_*"))
             if (p / "imaging.nii.gz").is_file() and (p / "segmentation.nii.gz").is_file()]
    if pairs:
        return pairs
    images, labels = root / "images", root / "labels"
    if images.is_dir() and labels.is_dir():
        for img in sorted(images.iterdir()):
            lab = labels / img.name
            if lab.is_file():
                pairs.append((img, lab))
    return pairs


class CaseStore:
    """In-memory training cases on the canonical grid: dicts with 'labels' and 'layout' or 'image'."""

    def __init__(self, cases: list[dict], names: list[str]):
        self.cases, self.names = cases, names

    @classmethod
    def from_synthetic(cls, folder: Path, names: list[str]) -> "CaseStore":
        cases = []
        for n in names:
            with np.load(folder / f"{n}.npz") as z:
                cases.append({k: z[k] for k in z.files})
        return cls(cases, names)


def image_stores(config: dict, root: Path, run_dir: Path, train_names: list[str], val_names: list[str],
                 info: DistInfo, log) -> tuple[CaseStore, CaseStore]:
    """Training and validation image cases, preprocessed once into the on-disk cache and memory-mapped
    (every rank prepares its share; all meet at a barrier). Cached images are already windowed."""
    from training.cache import prepare_cache

    pairs = dict((str(a), (a, b)) for a, b in find_image_cases(root))
    cache_dir = Path(config["cache_dir"]) if config["cache_dir"] else default_cache_dir(root, run_dir)
    params = {"spacing": [float(v) for v in config["spacing"]], "window": [float(v) for v in config["window"]]}
    cases = prepare_cache([pairs[n] for n in train_names + val_names], cache_dir, params, info=info, log=log)
    for case in cases:
        case["normalized"] = True
    log(f"image cache {cache_dir}: {len(cases)} cases")
    return CaseStore(cases[:len(train_names)], train_names), CaseStore(cases[len(train_names):], val_names)


def split_names(config: dict, root: Path) -> tuple[list[str], list[str]]:
    """Training and validation case names (validation: ``val_cases`` or a deterministic fraction)."""
    if config["data_mode"] == "synthetic":
        names = sorted(p.name[:-4] for p in root.glob("*.npz"))
    else:
        names = [str(a) for a, _ in find_image_cases(root)]
    if not names:
        raise SystemExit(f"{root}: no training cases found for data_mode={config['data_mode']}")
    base = lambda n: re.sub(r"_v\d+$", "", n)  # noqa: E731 - variants of one KiTS mask stay together
    if config["val_cases"]:
        val_bases = set(config["val_cases"])
    else:
        bases = sorted({base(n) for n in names if not Path(n).name.startswith("phantom")} - set(config["test_cases"]))
        k = max(1, int(round(len(bases) * config["val_fraction"]))) if len(bases) > 1 else 0
        val_bases = set(bases[len(bases) - k:])
    test_bases = set(config["test_cases"])
    first_variant = lambda n: re.search(r"_v\d+$", n) is None or n.endswith("_v0")  # noqa: E731
    val = [n for n in names if base(n) in val_bases and first_variant(n)]
    train = [n for n in names if base(n) not in val_bases and base(n) not in test_bases]
    return train, val


def crop_patch(arrays: list[np.ndarray], labels: np.ndarray, size, rng: np.random.Generator, fg_prob: float,
               pad_value: list[float]) -> list[np.ndarray]:
    """Crop ``size`` (z, y, x) around a foreground voxel with probability ``fg_prob``, else anywhere."""
    shape = np.asarray(labels.shape)
    size = np.asarray(size)
    if rng.random() < fg_prob and labels.any():
        cls = 2 if (labels == 2).any() and rng.random() < 0.4 else 1
        pts = np.argwhere(labels == cls) if (labels == cls).any() else np.argwhere(labels > 0)
        centre = pts[rng.integers(len(pts))] + rng.integers(-size // 4, size // 4 + 1)
    else:
        centre = np.array([rng.integers(0, s) for s in shape])
    start = centre - size // 2
    out = []
    for arr, pv in zip(arrays, pad_value):
        patch = np.full(tuple(size), pv, dtype=arr.dtype)
        src = [slice(max(0, a), min(s, a + n)) for a, n, s in zip(start, size, shape)]
        dst = [slice(sl.start - a, sl.stop - a) for sl, a in zip(src, start)]
        patch[tuple(dst)] = arr[tuple(src)]
        out.append(patch)
    return out


class PatchSampler:
    """Draws augmented (image, label) training patches from a :class:`CaseStore`; also the augmentation
    of cached image patches (``__call__``, a :class:`training.cache.PatchDataset` transform)."""

    def __init__(self, store: CaseStore, config: dict, rng: np.random.Generator):
        from monai.transforms import (Compose, Rand3DElasticd, RandAdjustContrastd, RandAffined, RandFlipd,
                                      RandGaussianNoised, RandScaleIntensityd, RandShiftIntensityd)

        self.store, self.config = store, config
        # sampling weight per case: config "case_weights" maps a name prefix to a weight (default 1)
        w = np.array([next((float(v) for k, v in config.get("case_weights", {}).items() if Path(n).name.startswith(k)), 1.0)
                      for n in store.names])
        self.p = w / w.sum()
        self.patch = tuple(config["patch"])
        self.big = tuple(int(math.ceil(p * 1.3)) for p in self.patch)
        rot = math.radians(config["aug_rotate_deg"])
        keys = ["image", "label"]
        self.spatial = Compose([
            RandAffined(keys, prob=0.8, spatial_size=self.patch, rotate_range=(rot, rot / 2, rot / 2),
                        scale_range=(config["aug_scale"],) * 3, mode=("nearest", "nearest"), padding_mode="border"),
            Rand3DElasticd(keys, sigma_range=(5, 8), magnitude_range=(30, 120), prob=config["aug_elastic_prob"],
                           mode=("nearest", "nearest"), padding_mode="border"),
            RandFlipd(keys, prob=config["aug_flip_prob"], spatial_axis=2),  # patient left-right
        ])
        self.intensity = Compose([
            RandAdjustContrastd(["image"], prob=config["aug_gamma_prob"], gamma=(0.7, 1.5)),
            RandScaleIntensityd(["image"], factors=0.1, prob=config["aug_contrast_prob"]),
            RandShiftIntensityd(["image"], offsets=0.1, prob=config["aug_contrast_prob"]),
            RandGaussianNoised(["image"], prob=config["aug_noise_prob"], std=0.05),
        ])
        self.reseed(rng)

    def reseed(self, rng: np.random.Generator) -> None:
        """Draw from ``rng`` from now on (the MONAI transforms are seeded from it too)."""
        self.rng = rng
        for t in (self.spatial, self.intensity):
            t.set_random_state(seed=int(rng.integers(2**31)))

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        case = self.store.cases[self.rng.choice(len(self.store.cases), p=self.p)]
        is_layout = "layout" in case
        src = case["layout"] if is_layout else case["image"]
        img, lab = crop_patch([src, case["labels"]], case["labels"], self.big, self.rng, self.config["fg_prob"],
                              [0, 0] if is_layout else [-1024.0, 0])
        return self.augment(img, lab, "layout" if is_layout else "hu")

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One (image[1, ...], labels[1, ...]) item drawn with ``rng`` (a SeededDataset item, in a worker)."""
        self.reseed(rng)
        image, labels = self.sample()
        return image[None], labels[None]

    def __call__(self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
        """Augment a cached (windowed) image patch of size ``self.big`` down to the patch size."""
        self.reseed(rng)
        return self.augment(image, labels, "normalized")

    def augment(self, img: np.ndarray, lab: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """Spatial augmentation (cropping to the patch size), then per ``kind``: render a tissue layout
        ("layout") or add noise to HU ("hu") and window, or add noise to a windowed image ("normalized");
        then intensity augmentation. Returns (float32 image, int64 labels)."""
        from SculptorGANLib.segmentation import normalize
        from SculptorGANLib.synth import render

        # spatial augmentation of the tissue layout (or image) and labels, cropping to the patch size;
        # layouts are rendered to HU afterwards, on the patch only
        data = self.spatial({"image": img[None].astype(np.float32), "label": lab[None].astype(np.float32)})
        img = np.asarray(data["image"])[0]
        lab = np.asarray(data["label"])[0].astype(np.int64)
        if img.shape != self.patch:  # RandAffined skipped: centre crop
            off = [(a - b) // 2 for a, b in zip(img.shape, self.patch)]
            sl = tuple(slice(o, o + p) for o, p in zip(off, self.patch))
            img, lab = img[sl], lab[sl]
        if kind == "layout":
            hu, _ = render(img.round().astype(np.uint8), self.rng, random_prob=self.config["synth_random_prob"])
            norm = normalize(hu, self.config["window"])
        elif kind == "hu":
            hu = img + self.rng.normal(0, self.rng.uniform(0, 15), img.shape).astype(np.float32)
            norm = normalize(hu, self.config["window"])
        else:  # the same 0-15 HU noise, in window units
            lo, hi = self.config["window"]
            noise = self.rng.normal(0, self.rng.uniform(0, 15) * 2.0 / (hi - lo), img.shape).astype(np.float32)
            norm = np.clip(img + noise, -1.0, 1.0)
        norm = np.asarray(self.intensity({"image": norm[None]})["image"])[0]
        return norm.astype(np.float32), lab

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        items = [self.sample() for _ in range(n)]
        x = torch.from_numpy(np.stack([i[0] for i in items]))[:, None]
        y = torch.from_numpy(np.stack([i[1] for i in items]))[:, None]
        return x, y


def validation_volumes(store: CaseStore, config: dict) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """Fixed rendered validation volumes (normalized image, labels, name); seeds depend on the case only."""
    from SculptorGANLib.segmentation import normalize
    from SculptorGANLib.synth import render

    vols = []
    for i, (case, name) in enumerate(zip(store.cases[: config["val_max_cases"]], store.names)):
        if "layout" in case:
            hu, _ = render(case["layout"], np.random.default_rng([7, i]), random_prob=0.0)
        else:
            hu = case["image"]
        image = np.array(hu, np.float32) if case.get("normalized") else normalize(hu, config["window"])  # memmap: copy
        vols.append((image, np.asarray(case["labels"]), name))
    return vols


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    s = pred.sum() + truth.sum()
    return float(2 * (pred & truth).sum() / s) if s else 1.0


def validate(model: torch.nn.Module, vols, config: dict, device: torch.device) -> dict:
    from SculptorGANLib.segmentation import sliding_window_probabilities

    model.eval()
    kid, tum = [], []
    forward = amp_call(model, device, config.get("amp", True))  # autocast on CUDA, float32 outputs
    for image, labels, _ in vols:
        pred = sliding_window_probabilities(forward, image, config["roi"], device, amp=False).argmax(0)
        kid.append(dice(pred > 0, labels > 0))
        if (labels == 2).any():
            tum.append(dice(pred == 2, labels == 2))
    model.train()
    k = float(np.mean(kid)) if kid else 0.0
    t = float(np.mean(tum)) if tum else 0.0
    return {"kidney_dice": k, "tumor_dice": t, "score": 0.7 * k + 0.3 * t}


# ----------------------------------------------------------------------------- model, pruning, export
def build(config: dict) -> torch.nn.Module:
    from SculptorGANLib.nn.wpunet import build_model

    args = {"in_channels": 1, "out_channels": 3, "features": list(config["features"]), "dims": config["dims"]}
    return build_model(config["architecture"], args)


def make_loss(config: dict) -> torch.nn.Module:
    """α·Dice + (1−α)·CE over the whole batch, on logits and class-index labels."""
    from monai.losses import DiceCELoss

    alpha = float(config["alpha"])
    return DiceCELoss(to_onehot_y=True, softmax=True, batch=True, lambda_dice=alpha, lambda_ce=1 - alpha)


def input_layout(config: dict) -> torch.memory_format:
    """Memory format of the training inputs: channels-last(-3d)."""
    return torch.channels_last_3d if int(config["dims"]) == 3 else torch.channels_last


def seg_step(net: torch.nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
             loss_fn: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, info: DistInfo, amp: bool) -> torch.Tensor:
    """One Phase II step: forward of ``net`` (may be DDP-wrapped) under autocast, ``loss_fn`` in float32,
    backward and optimizer step through ``scaler``. ``x`` and ``y`` on the device, ``x`` in
    :func:`input_layout`. Returns the 0-dim loss."""
    with autocast(info, amp):
        loss = loss_fn(net(x).float(), y)
    opt.zero_grad(set_to_none=True)
    scaled_step(loss, opt, scaler)
    return loss


def arch_args(config: dict) -> dict:
    return {"in_channels": 1, "out_channels": 3, "features": list(config["features"]), "dims": config["dims"]}


def target_sparsity(iteration: int, config: dict) -> float:
    """Gradual schedule: 0 before ``prune_start``, then ``prune_steps`` equal steps to ``sparsity``."""
    if config["sparsity"] <= 0 or iteration < config["prune_start"]:
        return 0.0
    step = min(config["prune_steps"], 1 + (iteration - config["prune_start"]) // max(1, config["prune_every"]))
    return config["sparsity"] * step / config["prune_steps"]


def plain_state(model: torch.nn.Module) -> dict:
    """The state dict with pruning masks folded in (plain tensor names)."""
    raw = unwrap(model).state_dict()
    out = {}
    for key, value in raw.items():
        if key.endswith("_mask"):
            continue
        if key.endswith("_orig"):
            base = key[: -len("_orig")]
            out[base] = (value * raw[base + "_mask"]).detach().cpu().clone()
        else:
            out[key] = value.detach().cpu().clone()
    return out


def checkpoint_validation(ckpt: dict) -> dict:
    """The validation metrics of the weights in ``ckpt`` (the best-so-far ones only when it holds them)."""
    if ckpt.get("best_metrics") and ckpt.get("best_epoch") == ckpt.get("epoch"):
        return dict(ckpt["best_metrics"])
    entry = next((h for h in reversed(ckpt.get("history", [])) if h.get("iteration") == ckpt.get("iteration")), {})
    return {k: entry[k] for k in ("kidney_dice", "tumor_dice", "score") if k in entry}


def export(run_dir: Path, out_dir: Path, config: dict, which: str = "best", extra_card: dict | None = None) -> Path:
    """Write the run's best (or last) weights as safetensors + model card into ``out_dir``."""
    from SculptorGANLib.models import ModelCard, save_model
    from SculptorGANLib.nn.baselines import model_cost
    from SculptorGANLib.nn.pruning import sparsity_report
    from SculptorGANLib.nn.wpunet import build_model

    ckpt = load_checkpoint(run_dir / f"{which}.pt", torch.device("cpu")) or load_checkpoint(run_dir / "last.pt", torch.device("cpu"))
    if ckpt is None:
        raise SystemExit(f"{run_dir}: no checkpoint to export")
    validation = checkpoint_validation(ckpt)
    cfg = dict(ckpt.get("config", config))
    model = build_model(cfg["architecture"], arch_args(cfg), fast_layout=False)
    model.load_state_dict(ckpt["model"])
    report = sparsity_report(model)
    cost = model_cost(model, (1, 1, *cfg["roi"]))
    card = ModelCard(
        name=config.get("name", cfg["name"]), task="segmentation", architecture=cfg["architecture"],
        arch_args=arch_args(cfg),
        preprocessing={"spacing": list(cfg["spacing"]), "window": list(cfg["window"]), "roi": list(cfg["roi"]),
                       "orientation": "canonical LPS (identity direction)", "normalization": "clip to window, map to [-1, 1]"},
        classes={"0": "background", "1": "kidney", "2": "tumor"},
        training={"data_mode": cfg["data_mode"], "data": cfg["data"], "iterations": ckpt["iteration"],
                  "epochs": ckpt["epoch"], "config": cfg, "command": " ".join(sys.argv)},
        metrics={"validation": validation, "sparsity": report,
                 "flops_per_roi": cost["flops"]},
        version=str(config.get("version", cfg.get("version", "1"))),
    )
    if extra_card:
        for key, value in extra_card.items():
            if isinstance(value, dict) and isinstance(getattr(card, key), dict):
                getattr(card, key).update(value)
            else:
                setattr(card, key, value)
    return save_model(ckpt["model"], card, out_dir, half=True)


# ----------------------------------------------------------------------------- training loop
def batch_stream(config: dict, store: CaseStore, info: DistInfo):
    """``epoch -> iterator over this rank's (x, y) batches``. Synthetic data with ``num_workers`` 0 is
    drawn in this process from a stream per (seed, rank, epoch), as before workers existed; otherwise a
    DataLoader (``num_workers`` processes) serves items seeded by (seed, epoch, index): a SeededDataset
    (synthetic) or a PatchDataset over the image cache. Either way an epoch replays exactly on resume."""
    seed, bs, iters, workers = (int(config[k]) for k in ("seed", "batch_size", "iters_per_epoch", "num_workers"))
    if config["data_mode"] == "synthetic" and workers == 0:
        def in_process(epoch: int):
            sampler = PatchSampler(store, config, np.random.default_rng([seed, info.rank, epoch]))
            return iter(lambda: sampler.batch(bs), None)
        return in_process
    from training.cache import PatchDataset

    sampler = PatchSampler(store, config, np.random.default_rng(seed))
    n = iters * bs * info.world_size
    if config["data_mode"] == "synthetic":
        dataset = SeededDataset(sampler.draw, n, seed)
    else:  # patches of sampler.big around foreground (±25 %), augmented and cropped to the patch size
        dataset = PatchDataset(store.cases, sampler.big, n, seed, float(config["fg_prob"]), transform=sampler,
                               jitter=0.25)
    loader = seeded_loader(dataset, iters, bs, info, seed, workers)
    return lambda epoch: epoch_batches(loader, epoch)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="JSON/YAML config file (keys as in DEFAULTS)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    ap.add_argument("--out", required=True, type=Path, help="run folder (checkpoints, logs)")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    ap.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this time")
    ap.add_argument("--max-iters", type=int, default=None, help="stop after this many iterations in total")
    ap.add_argument("--export", type=Path, default=None, help="export OUT's best checkpoint to this folder and exit")
    ap.add_argument("--export-which", default="best", choices=("best", "last"))
    ap.add_argument("--card-extra", type=Path, default=None,
                    help="JSON file merged into the exported model card (data description, license, metrics)")
    args = ap.parse_args(argv)

    run_dir = args.out
    if args.resume and (run_dir / "run.json").is_file() and not args.config:
        defaults = dict(DEFAULTS)
        defaults.update(json.loads((run_dir / "run.json").read_text(encoding="utf-8"))["config"])
        config = load_config(defaults, None, args.set)
    else:
        config = load_config(DEFAULTS, args.config, args.set)
    if args.export:
        extra = None
        if args.card_extra:
            try:
                extra = json.loads(args.card_extra.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise SystemExit(f"{args.card_extra}: cannot read the card-extra JSON ({exc})") from None
        path = export(run_dir, args.export, config, args.export_which, extra)
        print(f"exported {path}")
        return {"card": str(path)}

    torch.set_num_threads(int(config["threads"]))
    info = init_distributed(config["device"])
    log = Logger(run_dir, info)
    seed_everything(int(config["seed"]) + info.rank)

    root = Path(config["data"])
    if not root.is_absolute() and not root.exists():
        root = ROOT / root
    train_names, val_names = split_names(config, root)
    if config["data_mode"] == "synthetic":
        train_store = CaseStore.from_synthetic(root, train_names)
        val_store = CaseStore.from_synthetic(root, val_names)
    else:
        train_store, val_store = image_stores(config, root, run_dir, train_names, val_names, info, log)
    write_run_record(run_dir, config, train_names + ["VAL:" + n for n in val_names], info)
    log(f"{len(train_names)} training and {len(val_names)} validation cases; world size {info.world_size}")

    model = build(config).to(info.device)
    from SculptorGANLib.nn.pruning import apply_magnitude_pruning, sparsity_report

    loss_fn = make_loss(config)
    opt = torch.optim.Adam(model.parameters(), lr=float(config["lr"]))
    plateau = lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(  # noqa: E731
        o, mode="max", factor=float(config["plateau_factor"]), patience=int(config["plateau_patience"]))
    sched = plateau(opt)
    amp = bool(config["amp"])
    scaler = grad_scaler(info, amp)
    state = {"iteration": 0, "epoch": 0, "best": -1.0, "best_epoch": 0, "best_metrics": {}, "sparsity": 0.0,
             "best_sparsity": 0.0, "history": []}
    ckpt = load_checkpoint(run_dir / "last.pt", info.device) if args.resume else None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        if ckpt["sparsity"] > 0:
            apply_magnitude_pruning(model, ckpt["sparsity"])  # zeros are the smallest magnitudes: same masks
        opt = torch.optim.Adam(model.parameters(), lr=float(config["lr"]))
        opt.load_state_dict(ckpt["optimizer"])
        if "lr" in override_keys(args.set) or float(ckpt.get("config", {}).get("lr", config["lr"])) != float(config["lr"]):
            # --set lr=X on a resume means "train at X from now on", also when X is the run's starting LR
            # and the plateau rule has lowered it since
            for group in opt.param_groups:
                group["lr"] = float(config["lr"])
        sched = plateau(opt)  # bound to the optimizer that is stepped from now on
        sched.load_state_dict(ckpt["scheduler"])
        restore_scaler(scaler, ckpt.get("scaler"))  # absent in checkpoints written before AMP
        state.update({k: ckpt[k] for k in state if k in ckpt})
        if "rng" in ckpt:
            set_rng_state(ckpt["rng"])
        log(f"resumed at iteration {state['iteration']} (epoch {state['epoch']}, sparsity {state['sparsity']:.2f})")
    ddp_model = wrap_ddp(model, info)
    batches_of = batch_stream(config, train_store, info)
    val_vols = validation_volumes(val_store, config) if info.is_main else []

    def checkpoint(name: str) -> None:
        record = {"model": plain_state(model), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                  "scaler": scaler.state_dict(), "config": config, "rng": rng_state(), **state}
        save_checkpoint(run_dir / f"{name}.pt", record, info)

    start = time.time()
    last_ckpt = start
    stop_reason = "max_epochs"
    fmt = input_layout(config)
    ddp_model.train()
    while state["epoch"] < config["max_epochs"]:
        losses = []
        t_epoch = time.time()
        # patch streams per epoch: a run resumed at an epoch boundary continues exactly, per rank
        batches = batches_of(state["epoch"])
        for _ in range(int(config["iters_per_epoch"])):
            s = target_sparsity(state["iteration"], config)
            if s > state["sparsity"] + 1e-9:
                apply_magnitude_pruning(model, s)
                opt = _rebind_optimizer(opt, model)
                state["sparsity"] = s
                log(f"pruned WP-block weights to {s:.0%} sparsity: {sparsity_report(model)}")
            x, y = next(batches)
            x = x.to(info.device, non_blocking=True).contiguous(memory_format=fmt)
            y = y.to(info.device, non_blocking=True)
            losses.append(seg_step(ddp_model, opt, scaler, loss_fn, x, y, info, amp).item())
            state["iteration"] += 1
            out_of_time = args.max_minutes is not None and broadcast_object(  # DDP: all ranks stop together
                time.time() - start > 60 * args.max_minutes, info)
            out_of_iters = args.max_iters is not None and state["iteration"] >= args.max_iters
            if out_of_time or out_of_iters:
                break
            if time.time() - last_ckpt > 60 * config["checkpoint_minutes"]:
                checkpoint("last")
                last_ckpt = time.time()
        del batches  # DataLoader workers of this epoch end here
        state["epoch"] += 1
        mean_loss = mean_across_ranks(float(np.mean(losses)) if losses else float("nan"), info)
        entry = {"epoch": state["epoch"], "iteration": state["iteration"], "loss": mean_loss,
                 "lr": opt.param_groups[0]["lr"], "seconds": round(time.time() - t_epoch, 1), "sparsity": state["sparsity"]}
        if info.is_main and val_vols and state["epoch"] % int(config["val_every_epochs"]) == 0:
            metrics = validate(model, val_vols, config, info.device)
            entry.update(metrics)
            # only checkpoints at the final sparsity count as "best" once pruning has begun
            eligible = state["sparsity"] >= config["sparsity"] - 1e-9 or target_sparsity(state["iteration"], config) == 0
            improved = metrics["score"] > state["best"] or state["best_sparsity"] < state["sparsity"]
            if eligible and improved:
                state.update(best=metrics["score"], best_epoch=state["epoch"], best_metrics=metrics,
                             best_sparsity=state["sparsity"])
                checkpoint("best")
        # DDP: only rank 0 validated; every rank takes its metrics and best-so-far, so the LR schedule and
        # early stopping decide the same everywhere (an average with the other ranks' stale values did not)
        entry, best = broadcast_object((entry, {k: state[k] for k in ("best", "best_epoch", "best_metrics",
                                                                      "best_sparsity")}), info)
        state.update(best)
        score = entry.get("score", state["best"])
        sched.step(score)
        state["history"].append(entry)
        log(json.dumps(entry))
        checkpoint("last")
        last_ckpt = time.time()
        barrier(info)
        if args.max_minutes is not None and broadcast_object(time.time() - start > 60 * args.max_minutes, info):
            stop_reason = "max_minutes"
            break
        if args.max_iters is not None and state["iteration"] >= args.max_iters:
            stop_reason = "max_iters"
            break
        if state["epoch"] - state["best_epoch"] >= int(config["early_stop"]) and state["best"] >= 0:
            stop_reason = "early_stop"
            break
    log(f"stopped ({stop_reason}) at iteration {state['iteration']}, best score {state['best']:.4f} at epoch {state['best_epoch']}")
    cleanup_distributed(info)
    return {"state": state, "stop_reason": stop_reason, "run_dir": str(run_dir)}


def _rebind_optimizer(opt: torch.optim.Optimizer, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Pruning keeps the same Parameter objects (renamed ``weight_orig``); the optimizer stays valid."""
    return opt


if __name__ == "__main__":
    main()
