"""Training batches in DataLoader worker processes, with streams that resume exactly at epoch boundaries.

* :class:`SeededDataset` turns any ``draw(rng) -> arrays`` function (a patch sampler with its MONAI
  augmentation, a slice sampler...) into a map-style dataset whose item ``i`` of epoch ``e`` is drawn
  with ``np.random.default_rng([seed, e, i])`` (:class:`training.cache.PatchDataset` is one). Its
  stream is therefore the same for any number of workers, the sampler of ``make_loader`` splits the
  indices between ranks (so ranks draw different items), and an epoch can be replayed exactly on resume.
* :func:`seeded_loader` / :func:`epoch_batches`: the DataLoader for such a dataset (a PatchDataset is one),
  and one epoch's batches from it.
* :func:`default_cache_dir`: where ``data_mode: images`` keeps its preprocessed cases.

Workers are started per epoch (not persistent) so that they see the dataset's current epoch; with the
fork start method (Linux) they share the parent's arrays without copies.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from training.common import DistInfo, make_loader


class SeededDataset(torch.utils.data.Dataset):
    """``length`` items per epoch; item ``i`` of epoch ``e`` is ``draw(np.random.default_rng([seed, e, i]))``,
    a tuple of numpy arrays returned as tensors. ``draw`` runs in the worker processes."""

    def __init__(self, draw: Callable[[np.random.Generator], Sequence[np.ndarray]], length: int, seed: int = 0):
        self.draw, self.length, self.seed, self.epoch = draw, int(length), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in self.draw(rng))


def seeded_loader(dataset: torch.utils.data.Dataset, batches_per_rank: int, batch_size: int, info: DistInfo,
                  seed: int = 0, workers: int = 0) -> torch.utils.data.DataLoader:
    """A loader giving each rank ``batches_per_rank`` batches per epoch from ``dataset`` (whose length must
    be ``batches_per_rank * batch_size * world_size``); indices in order, dealt round-robin to the ranks."""
    expected = batches_per_rank * batch_size * info.world_size
    if len(dataset) != expected:
        raise ValueError(f"dataset has {len(dataset)} items, {expected} expected")
    return make_loader(dataset, batch_size, info, shuffle=False, seed=seed, workers=int(workers), drop_last=True)


def epoch_batches(loader: torch.utils.data.DataLoader, epoch: int) -> Iterator:
    """This rank's batches of ``epoch`` (the dataset and the sampler are told the epoch first)."""
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
    loader.sampler.set_epoch(epoch)
    return iter(loader)


def default_cache_dir(data_root: Path, run_dir: Path) -> Path:
    """``<data>/.sculptorgan_cache`` (shared by every run on that data) when the data folder is writable,
    else ``<run>/cache``."""
    return data_root / ".sculptorgan_cache" if os.access(data_root, os.W_OK) else run_dir / "cache"
