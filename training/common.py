"""Shared training plumbing: configs (JSON/YAML + CLI overrides), seeding, distributed set-up,
resumable checkpoints and the run record written beside them.

Works as a single process and under ``torchrun`` (DDP): gloo on CPU, nccl on CUDA, chosen automatically.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


# ----------------------------------------------------------------------------- configs
def load_config(defaults: dict, config_file: str | None = None, overrides: list[str] | None = None) -> dict:
    """``defaults`` updated from a JSON/YAML file, then from ``key=value`` overrides (values parsed as JSON)."""
    config = dict(defaults)
    if config_file:
        text = Path(config_file).read_text()
        if config_file.endswith((".yaml", ".yml")):
            import yaml

            loaded = yaml.safe_load(text) or {}
        else:
            loaded = json.loads(text)
        unknown = set(loaded) - set(defaults)
        if unknown:
            raise SystemExit(f"{config_file}: unknown config keys {sorted(unknown)}")
        config.update(loaded)
    for item in overrides or []:
        if "=" not in item:
            raise SystemExit(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        if key not in defaults:
            raise SystemExit(f"unknown config key {key!r}; known: {sorted(defaults)}")
        try:
            config[key] = json.loads(raw)
        except json.JSONDecodeError:
            config[key] = raw
    return config


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- distributed
@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun process group when launched by torchrun (env WORLD_SIZE > 1); else single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, world_size, local_rank, dev)


def wrap_ddp(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` when running distributed."""
    if not info.distributed:
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def mean_across_ranks(value: float, info: DistInfo) -> float:
    """Average a scalar over all ranks (identity in a single process)."""
    if not info.distributed:
        return float(value)
    tensor = torch.tensor([float(value)], device=info.device, dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor.item()) / info.world_size


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def cleanup_distributed(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- checkpoints and records
def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_run_record(run_dir: Path, config: dict, data_files: list[str], info: DistInfo) -> None:
    """config.json, git revision and the data list beside the checkpoints (rank 0 only)."""
    if not info.is_main:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"config": config, "git_revision": git_revision(), "world_size": info.world_size,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "torch": torch.__version__, "data": data_files}
    (run_dir / "run.json").write_text(json.dumps(record, indent=2, default=str) + "\n")


def save_checkpoint(path: Path, state: dict, info: DistInfo) -> None:
    """Atomically write a resumable checkpoint (rank 0 only). Contains only tensors and plain data."""
    if not info.is_main:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, device: torch.device) -> dict | None:
    """A checkpoint written by :func:`save_checkpoint`, loaded with ``weights_only=True`` (no code runs)."""
    if not path.is_file():
        return None
    return torch.load(path, map_location=device, weights_only=True)


def rng_state() -> dict:
    """Random-generator states, so a resumed run continues exactly like an uninterrupted one."""
    return {"torch": torch.get_rng_state(), "numpy": json.dumps(np.random.get_state()[1].tolist()),
            "numpy_pos": int(np.random.get_state()[2]), "python": json.dumps(random.getstate()[1])}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.array(json.loads(state["numpy"]), dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(json.loads(state["python"])), None))


class Logger:
    """Rank-0 logging to stdout and ``train.log`` in the run folder."""

    def __init__(self, run_dir: Path, info: DistInfo):
        self.info = info
        self.path = run_dir / "train.log"

    def __call__(self, message: str) -> None:
        if not self.info.is_main:
            return
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        print(line, flush=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(line + "\n")
