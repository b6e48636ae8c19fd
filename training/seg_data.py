"""Phase II training data: case lists, in-memory and cached case stores, augmented patches, batch streams.

``synthetic`` cases are ``.npz`` files from ``python -m SculptorGANLib.synthetic.prepare`` (tissue layouts
rendered to CT on the fly, or images); ``images`` cases are image/label pairs preprocessed once into the
on-disk cache (``training/cache.py``). Patches come from :func:`training.cache.sample_patch`.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch

from training.cache import PatchDataset, sample_patch
from training.common import DistInfo
from training.loading import SeededDataset, default_cache_dir, epoch_batches, seeded_loader

ROOT = Path(__file__).resolve().parent.parent
#: Probability that a foreground-centred in-memory patch is centred on tumor (when the case has tumor).
TUMOR_PROB = 0.4


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


def load_stores(config: dict, run_dir: Path, info: DistInfo, log) -> tuple[CaseStore, CaseStore]:
    """Training and validation stores of ``config["data"]`` (relative: from the working folder, else the
    repository root), split by :func:`split_names`."""
    root = Path(config["data"])
    if not root.is_absolute() and not root.exists():
        root = ROOT / root
    train_names, val_names = split_names(config, root)
    if config["data_mode"] == "synthetic":
        return CaseStore.from_synthetic(root, train_names), CaseStore.from_synthetic(root, val_names)
    return image_stores(config, root, run_dir, train_names, val_names, info, log)


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
        img, lab, _ = sample_patch(case, self.big, self.rng, self.config["fg_prob"], 0 if is_layout else -1024.0,
                                   jitter=0.25, tumor_prob=TUMOR_PROB, image_key="layout" if is_layout else "image")
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
        from SculptorGANLib.segment.preprocess import normalize_window
        from SculptorGANLib.synthetic import render

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
            norm = normalize_window(hu, self.config["window"])
        elif kind == "hu":
            hu = img + self.rng.normal(0, self.rng.uniform(0, 15), img.shape).astype(np.float32)
            norm = normalize_window(hu, self.config["window"])
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
    from SculptorGANLib.segment.preprocess import normalize_window
    from SculptorGANLib.synthetic import render

    vols = []
    for i, (case, name) in enumerate(zip(store.cases[: config["val_max_cases"]], store.names)):
        if "layout" in case:
            hu, _ = render(case["layout"], np.random.default_rng([7, i]), random_prob=0.0)
        else:
            hu = case["image"]
        image = np.array(hu, np.float32) if case.get("normalized") else normalize_window(hu, config["window"])  # memmap: copy
        vols.append((image, np.asarray(case["labels"]), name))
    return vols




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
    sampler = PatchSampler(store, config, np.random.default_rng(seed))
    n = iters * bs * info.world_size
    if config["data_mode"] == "synthetic":
        dataset = SeededDataset(sampler.draw, n, seed)
    else:  # patches of sampler.big around foreground (±25 %), augmented and cropped to the patch size
        dataset = PatchDataset(store.cases, sampler.big, n, seed, float(config["fg_prob"]), transform=sampler,
                               jitter=0.25)
    loader = seeded_loader(dataset, iters, bs, info, seed, workers)
    return lambda epoch: epoch_batches(loader, epoch)

