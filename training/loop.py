"""The training loop both trainers share: command line, run folder, LR plateau, time budget, epochs.

A trainer supplies its data, networks and step; this module supplies what is the same for both:

* :func:`make_parser` (``--config/--set/--out/--resume/--max-minutes``) and :func:`resolve_config`
  (a resumed run takes its own config from ``run.json`` unless ``--config`` is given);
* :func:`start_run`: ``run.json`` (:func:`write_run_record`: config, git revision, data...) and
  ``command.txt`` in the run folder, rank 0 only;
* :func:`plateau_scheduler` / :func:`restore_plateau`: one LR-plateau mechanism (torch's
  ``ReduceLROnPlateau``) for both trainers, each keeping its own counting rule; :func:`set_lr`;
* :class:`Clock`: ``--max-minutes``, one decision for all ranks;
* :func:`run_epochs`: the epoch loop (train, epoch count, validation/best/plateau through the trainer's
  :class:`EpochHooks`, the ``last`` checkpoint, ordered stop rules) returning the stop reason.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from SculptorGANLib.io.atomic import atomic_write_text
from training.common import DistInfo, barrier, broadcast_object, load_config

#: The interpolation trainer's plateau rule: an epoch improves when its score beats the best by this much (absolute).
ABS_THRESHOLD = 1e-4


# ----------------------------------------------------------------------------- command line and run folder
def make_parser(description: str, out_default: str | None = None, raw: bool = False) -> argparse.ArgumentParser:
    """The options every trainer takes; ``out_default`` None makes ``--out`` required."""
    kwargs = {"formatter_class": argparse.RawDescriptionHelpFormatter} if raw else {}
    ap = argparse.ArgumentParser(description=description, **kwargs)
    ap.add_argument("--config", help="JSON/YAML config file (keys as in DEFAULTS)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    if out_default is None:
        ap.add_argument("--out", required=True, type=Path, help="run folder (checkpoints, logs)")
    else:
        ap.add_argument("--out", default=Path(out_default), type=Path, help="run folder")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    ap.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this long")
    return ap


def resolve_config(defaults: dict, args: argparse.Namespace, reuse_run: bool) -> dict:
    """``defaults`` ← ``--config`` ← ``--set``; with ``reuse_run`` (a resume) and no ``--config``, the run's
    own config from ``OUT/run.json`` replaces the file (``--set`` still applies)."""
    saved = Path(args.out) / "run.json"
    if reuse_run and saved.is_file() and not args.config:
        config = dict(defaults)
        config.update(json.loads(saved.read_text(encoding="utf-8"))["config"])
        return load_config(config, None, args.set)
    return load_config(defaults, args.config, args.set)


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def git_dirty() -> bool | None:
    """True when the working tree has uncommitted changes (the revision alone does not pin the code)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                             text=True, cwd=Path(__file__).resolve().parent, timeout=10)
        return bool(out.stdout.strip()) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def write_run_record(run_dir: Path, config: dict, data_files: list[str], info: DistInfo) -> None:
    """run.json: config, git revision, data list, world size, command, beside the checkpoints (rank 0 only).

    On a resumed run the earlier records are kept under ``previous`` (newest last)."""
    if not info.is_main:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "run.json"
    record = {"config": config, "git_revision": git_revision(), "git_dirty": git_dirty(),
              "world_size": info.world_size, "device": str(info.device), "command": sys.argv,
              "host": os.uname().nodename if hasattr(os, "uname") else "",
              "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "torch": torch.__version__, "data": data_files}
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        previous = old.pop("previous", [])
        record["previous"] = previous + [old]
    except (OSError, ValueError):
        pass
    atomic_write_text(path, json.dumps(record, indent=2, default=str) + "\n")


def start_run(run_dir: Path, config: dict, data: list[str], info: DistInfo, command: str | None = None) -> None:
    """``run.json`` (config, revision, data, ...) and, given ``command``, a line appended to ``command.txt``."""
    write_run_record(run_dir, config, data, info)
    if command and info.is_main:
        with open(run_dir / "command.txt", "a", encoding="utf-8") as handle:
            handle.write(command + "\n")


# ----------------------------------------------------------------------------- learning rate
def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Every group at ``lr`` × its ``lr_mult`` (1 when the group has none)."""
    for group in opt.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


def plateau_scheduler(opt: torch.optim.Optimizer, factor: float, patience: int,
                      absolute: bool = False) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """``ReduceLROnPlateau`` on a score to maximise, LR × ``factor`` on a plateau.

    Default (segmentation): torch's rule, a cut after more than ``patience`` epochs without a relative
    1e-4 improvement. ``absolute`` (interpolation): an epoch improves when it beats the best by
    :data:`ABS_THRESHOLD` dB, and the LR is cut once ``patience`` epochs in a row did not (torch counts
    ``num_bad_epochs > patience``, hence ``patience - 1``), with no lower bound on the LR (``eps`` 0)."""
    if absolute:
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=factor, patience=patience - 1,
                                                          threshold=ABS_THRESHOLD, threshold_mode="abs", eps=0.0)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=factor, patience=patience)


def restore_plateau(sched: torch.optim.lr_scheduler.ReduceLROnPlateau, saved: dict | None, state: dict) -> None:
    """Load a saved scheduler state; checkpoints from before the scheduler (the interpolation trainer's
    hand-written rule) kept it as ``state["plateau"]`` (epochs without improvement) and
    ``state["plateau_best"]``: those keys are taken out of ``state`` and put into ``sched``."""
    old = state.pop("plateau", None), state.pop("plateau_best", None)
    if saved:
        sched.load_state_dict(saved)
    elif old != (None, None):
        sched.num_bad_epochs = int(old[0] or 0)
        sched.best = -math.inf if old[1] is None else float(old[1])


# ----------------------------------------------------------------------------- time budget
class Clock:
    """Wall time since the (first) start of a run, and the ``--max-minutes`` budget."""

    def __init__(self, max_minutes: float | None, elapsed: float = 0.0):
        self.start = time.time() - elapsed
        self.budget = None if max_minutes is None else 60.0 * max_minutes

    def elapsed(self) -> float:
        return time.time() - self.start

    def out_of_time(self, info: DistInfo) -> bool:
        """True once the budget is spent; rank 0's clock decides for all ranks (DDP stops together)."""
        return self.budget is not None and bool(broadcast_object(self.elapsed() > self.budget, info))


# ----------------------------------------------------------------------------- the epoch loop
class EpochHooks(Protocol):
    """What a trainer plugs into :func:`run_epochs`."""

    def train_epoch(self) -> None:
        """One epoch of training steps (it may stop early on the time or iteration budget)."""

    def end_epoch(self) -> None:
        """After the epoch count went up: validation, best checkpoint, LR plateau, log line, pruning."""

    def save(self, name: str) -> None:
        """Write checkpoint ``name`` ('last' or 'best')."""

    def stop_rules(self) -> list[tuple[str, Callable[[], bool]]]:
        """(reason, test) pairs checked in order after the 'last' checkpoint; the first true one stops."""


def run_epochs(hooks: EpochHooks, state: dict, max_epochs: int, info: DistInfo) -> str:
    """Epochs until ``state["epoch"]`` reaches ``max_epochs`` or a stop rule fires; returns the reason.

    Each epoch: ``train_epoch``, ``state["epoch"] += 1``, ``end_epoch``, the 'last' checkpoint, a barrier
    (all ranks leave the epoch together), then the stop rules."""
    while state["epoch"] < max_epochs:
        hooks.train_epoch()
        state["epoch"] += 1
        hooks.end_epoch()
        hooks.save("last")
        barrier(info)
        for reason, test in hooks.stop_rules():
            if test():
                return reason
    return "max_epochs"
