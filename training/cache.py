"""Keeping GPUs fed: cached preprocessing on disk and deterministic patch sampling.

* :func:`prepare_cache` resamples each (image, label) pair once onto the model's canonical grid
  (``SculptorGANLib.segment.preprocess.to_canonical``: identity LPS direction, the model card's spacing),
  windows/normalizes the image, and writes plain ``.npy`` files (no pickle) plus a small JSON beside
  them, keyed by the source files (path, size, mtime) and the preprocessing parameters. Under torchrun
  every rank prepares its share of the cases, then all wait at a barrier and memory-map the lot, so a
  KiTS19-size cohort is preprocessed once, in parallel, and read by DataLoader workers without copies.
  Writes are atomic (temporary name, then rename), so concurrent ranks or an interrupted run never
  leave a half-written cache entry.
* :class:`PatchDataset` draws training patches with foreground oversampling. Each sample's randomness
  comes only from (seed, epoch, index), so the stream is the same for any number of DataLoader workers,
  is split across ranks by the sampler (``training.common.make_loader``) and continues exactly on resume.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from training.common import DistInfo, barrier, shard
from training.loading import SeededDataset

CACHE_VERSION = 1
#: At most this many foreground voxel coordinates are kept per case for oversampling.
MAX_FG_POINTS = 200_000


# ----------------------------------------------------------------------------- preprocessing
def canonical_preprocess(spacing: Sequence[float], window: Sequence[float]) -> Callable[[Path, Path | None], dict]:
    """Image → canonical grid at ``spacing`` (x, y, z mm), clipped to ``window`` and mapped to [-1, 1]
    (float32); labels → the same grid, nearest neighbour (uint8). The same steps inference runs."""
    from SculptorGANLib.io.volumes import read_ct, read_labels
    from SculptorGANLib.segment.preprocess import normalize_window, to_canonical

    def run(image_path: Path, label_path: Path | None) -> dict:
        ct = read_ct(image_path)
        image, geometry = to_canonical(ct, tuple(spacing), default=-1024.0)
        out = {"image": normalize_window(image, tuple(window)), "geometry": geometry.to_dict()}
        if label_path is not None:
            labels, _ = to_canonical(read_labels(label_path), tuple(spacing), label=True)
            out["labels"] = labels.astype(np.uint8)
        return out

    return run


def _fingerprint(path: Path | None) -> list:
    if path is None:
        return [None]
    stat = Path(path).stat()
    return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]


def cache_key(image_path: Path, label_path: Path | None, params: dict) -> str:
    """Changes when either source file changes (path, size, mtime) or any preprocessing parameter does."""
    blob = json.dumps([CACHE_VERSION, _fingerprint(image_path), _fingerprint(label_path), params],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _foreground_points(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    points = np.argwhere(labels > 0).astype(np.int32)
    if len(points) > MAX_FG_POINTS:
        points = points[np.random.default_rng(seed).choice(len(points), MAX_FG_POINTS, replace=False)]
    return points


def _save_entry(folder: Path, key: str, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write ``key``'s arrays and meta atomically: a temporary folder renamed into place at the end."""
    final = folder / key
    tmp = folder / f".{key}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp"
    tmp.mkdir(parents=True)
    for name, array in arrays.items():
        np.save(tmp / f"{name}.npy", np.ascontiguousarray(array))
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str), encoding="utf-8")
    try:
        os.replace(tmp, final)
    except OSError:  # another rank finished the same entry first: theirs is identical
        for item in tmp.iterdir():
            item.unlink()
        tmp.rmdir()


def load_entry(folder: Path, key: str, mmap: bool = True) -> dict | None:
    """A cached case: {'image', 'labels', 'fg_points' (memory-mapped arrays), 'meta'} or None."""
    entry = folder / key
    if not (entry / "meta.json").is_file():
        return None
    out: dict = {"meta": json.loads((entry / "meta.json").read_text(encoding="utf-8"))}
    for path in entry.glob("*.npy"):
        out[path.stem] = np.load(path, mmap_mode="r" if mmap else None)
    return out


def prepare_cache(pairs: Sequence[tuple[Path, Path | None]], cache_dir: str | os.PathLike, params: dict,
                  preprocess: Callable[[Path, Path | None], dict] | None = None, info: DistInfo | None = None,
                  log: Callable[[str], None] | None = None) -> list[dict]:
    """Preprocess (once) and load every (image, label) pair; returns one cached case per pair, in order.

    ``params`` (e.g. {"spacing": [3, 3, 3], "window": [-200, 400]}) feed the cache key and, without
    ``preprocess``, :func:`canonical_preprocess`. Distributed: rank r prepares pairs r, r+W, ...; then all
    ranks meet at a barrier and load everything memory-mapped (the cache folder must be shared storage).
    """
    info = info or DistInfo()
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    preprocess = preprocess or canonical_preprocess(params["spacing"], params["window"])
    keys = [cache_key(Path(img), Path(lab) if lab else None, params) for img, lab in pairs]
    todo = [(key, pair) for key, pair in zip(keys, pairs) if load_entry(cache_dir, key) is None]
    mine = shard(todo, info)
    for n, (key, (img, lab)) in enumerate(mine, start=1):
        result = preprocess(Path(img), Path(lab) if lab else None)
        arrays = {name: result[name] for name in ("image", "labels") if name in result}
        if "labels" in arrays:
            arrays["fg_points"] = _foreground_points(arrays["labels"])
        meta = {"image": str(img), "labels": str(lab) if lab else None, "params": params,
                "shape": list(arrays["image"].shape), "geometry": result.get("geometry"), "version": CACHE_VERSION}
        _save_entry(cache_dir, key, arrays, meta)
        if log:
            log(f"cached {n}/{len(mine)} on rank {info.rank}: {img}")
    barrier(info)
    cases = [load_entry(cache_dir, key) for key in keys]
    missing = [str(p[0]) for p, c in zip(pairs, cases) if c is None]
    if missing:
        raise RuntimeError(f"cache entries missing after preparation (is {cache_dir} shared by all ranks?): {missing[:3]}")
    return cases


# ----------------------------------------------------------------------------- patches
def crop_with_padding(array: np.ndarray, start: Sequence[int], size: Sequence[int], pad_value: float) -> np.ndarray:
    """``array[start:start+size]`` (3D), padded with ``pad_value`` where the box leaves the volume."""
    out = np.full(tuple(size), pad_value, dtype=array.dtype)
    src = tuple(slice(max(0, a), min(s, a + n)) for a, n, s in zip(start, size, array.shape))
    dst = tuple(slice(sl.start - a, sl.stop - a) for sl, a in zip(src, start))
    if all(sl.stop > sl.start for sl in src):
        out[dst] = array[src]
    return out


def sample_patch(case: dict, size: Sequence[int], rng: np.random.Generator, fg_prob: float = 0.5,
                 image_pad: float = -1.0, jitter: float = 0.0, tumor_prob: float | None = None,
                 image_key: str = "image") -> tuple[np.ndarray, np.ndarray | None, bool]:
    """(image patch, label patch or None, centred on foreground?) from a case (``case[image_key]``).

    With probability ``fg_prob`` (and when the case has foreground) the patch is centred on a random
    foreground voxel (moved by up to ±``jitter``·size), else on a uniformly random voxel; boxes leaving
    the volume are padded (labels with 0).

    Foreground: by default the cached ``fg_points``. With ``tumor_prob`` (in-memory cases, no
    ``fg_points``: the segmentation trainer's sampling) it is found in the labels: tumor (label 2) voxels
    with probability ``tumor_prob`` when the case has any, else kidney (1), else any label; the
    foreground coin is tossed first, also for a case without foreground, and the move spans
    ``floor(-jitter·size) .. floor(jitter·size)``."""
    image = case[image_key]
    size = np.asarray(size, int)
    if tumor_prob is None:
        points = case.get("fg_points")
        on_fg = points is not None and len(points) > 0 and rng.random() < fg_prob
        centre = points[rng.integers(len(points))] if on_fg else np.array([rng.integers(0, s) for s in image.shape])
        if on_fg and jitter > 0:
            reach = (size * jitter).astype(int)
            centre = np.asarray(centre, int) + rng.integers(-reach, reach + 1)
    else:
        centre, on_fg = _label_centre(case["labels"], size, rng, fg_prob, tumor_prob, jitter)
    start = np.asarray(centre, int) - size // 2
    img = crop_with_padding(image, start, size, image_pad)
    lab = crop_with_padding(case["labels"], start, size, 0) if "labels" in case else None
    return img, lab, bool(on_fg)


def _label_centre(labels: np.ndarray, size: np.ndarray, rng: np.random.Generator, fg_prob: float,
                  tumor_prob: float, jitter: float) -> tuple[np.ndarray, bool]:
    """Patch centre found in ``labels`` (:func:`sample_patch` with ``tumor_prob``)."""
    on_fg = rng.random() < fg_prob and labels.any()
    if not on_fg:
        return np.array([rng.integers(0, s) for s in labels.shape]), False
    cls = 2 if (labels == 2).any() and rng.random() < tumor_prob else 1
    pts = np.argwhere(labels == cls) if (labels == cls).any() else np.argwhere(labels > 0)
    low, high = np.floor(-size * jitter).astype(int), np.floor(size * jitter).astype(int)
    return pts[rng.integers(len(pts))] + rng.integers(low, high + 1), True


class PatchDataset(SeededDataset):
    """``samples_per_epoch`` random patches from cached cases, with foreground oversampling.

    Item ``i`` of epoch ``e`` depends only on (seed, e, i) (a :class:`training.loading.SeededDataset`):
    the same for any number of workers or ranks, so :class:`training.common.ResumableSampler` splits and
    resumes it exactly. Call ``set_epoch`` (the sampler's epoch) before iterating; with
    ``persistent_workers`` the workers' copies would not see it.
    ``transform(image, labels, rng)`` (e.g. augmentation) may change the patch size.
    Returns (image[1, z, y, x] float32, labels[1, z, y, x] int64).
    """

    def __init__(self, cases: Sequence[dict], patch_size: Sequence[int], samples_per_epoch: int, seed: int = 0,
                 fg_prob: float = 0.5, transform: Callable | None = None, jitter: float = 0.0):
        if not cases:
            raise ValueError("PatchDataset needs at least one case")
        super().__init__(self._draw, samples_per_epoch, seed)
        self.cases, self.patch_size = list(cases), tuple(int(p) for p in patch_size)
        self.fg_prob, self.transform, self.jitter = float(fg_prob), transform, float(jitter)

    def _draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        case = self.cases[int(rng.integers(len(self.cases)))]
        image, labels, _ = sample_patch(case, self.patch_size, rng, self.fg_prob, jitter=self.jitter)
        if labels is None:
            labels = np.zeros(self.patch_size, np.uint8)
        if self.transform is not None:
            image, labels = self.transform(image, labels, rng)
        return np.asarray(image, dtype=np.float32)[None], np.asarray(labels).astype(np.int64)[None]
