"""Shared training plumbing: configs (JSON/YAML + CLI overrides), seeding, distributed set-up,
resumable checkpoints (the run record beside them: ``training/loop.py``).

Works as a single process and under ``torchrun`` (DDP): gloo on CPU, nccl on CUDA, chosen automatically.

What a trainer needs to be DDP-correct and exactly resumable, all no-ops in a single process:

* ``init_distributed`` / ``wrap_ddp`` / ``unwrap`` / ``cleanup_distributed``;
* data: ``make_loader`` (a :class:`ResumableSampler` that shards by rank, reshuffles per epoch from the
  seed and can skip the batches already done when resuming mid-epoch), ``worker_init_fn``,
  ``rank_seed``, ``shard`` (see also ``training/cache.py`` for cached preprocessing and patch sampling);
* agreement between ranks: ``mean_across_ranks``, ``sum_across_ranks`` (exact weighted validation
  metrics), ``broadcast_object`` (one decision for all ranks, e.g. "time is up"), ``gather_objects``,
  ``weights_digest`` / ``ranks_agree`` (prove every rank holds the same weights), ``sync_buffers``;
* exact resume: ``rng_state`` / ``set_rng_state`` for one process, ``gather_rng_states`` /
  ``restore_rng_states`` for every rank's generators in a checkpoint written by rank 0;
* mixed precision on CUDA: ``amp_enabled``, ``autocast``, ``grad_scaler``, ``restore_scaler``,
  ``scaled_step`` (scaled backward + step, optional clipping after unscaling), ``amp_call``.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist

from SculptorGANLib.io.atomic import atomic_path


# ----------------------------------------------------------------------------- configs
def override_keys(overrides: list[str] | None) -> set[str]:
    """The config keys named by ``key=value`` overrides (on a resume: what the user asked to change)."""
    return {item.split("=", 1)[0].strip() for item in overrides or [] if "=" in item}


def load_config(defaults: dict, config_file: str | None = None, overrides: list[str] | None = None) -> dict:
    """``defaults`` updated from a JSON/YAML file, then from ``key=value`` overrides (values parsed as JSON)."""
    config = dict(defaults)
    if config_file:
        text = Path(config_file).read_text(encoding="utf-8")
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


def is_torchrun() -> bool:
    """True when this process was started by torchrun (or another launcher setting WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join the torchrun process group when launched by torchrun (env WORLD_SIZE > 1); else single process.

    ``device``: 'auto' (CUDA when present), 'cuda' (an error without a GPU) or 'cpu' (gloo even on a GPU
    machine). Each rank takes GPU ``LOCAL_RANK`` (modulo the GPUs it can see); nccl on CUDA, gloo on CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = (device or "auto").lower()
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise SystemExit(f"device {device!r}: choose auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"device {device!r} requested but no CUDA GPU is available; use device=cpu or auto")
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if use_cuda:
        index = int(device.split(":")[1]) if ":" in device and world_size == 1 else local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        dev = torch.device("cuda", index)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise SystemExit(f"WORLD_SIZE={world_size} but {', '.join(missing)} not set: start with torchrun")
        dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank, world_size, local_rank, dev)


def wrap_ddp(model: torch.nn.Module, info: DistInfo, find_unused_parameters: bool = False,
             sync_batchnorm: bool = False) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` when running distributed (rank 0's weights are broadcast).

    ``sync_batchnorm`` converts BatchNorm to SyncBatchNorm (CUDA only; on CPU DDP's default buffer
    broadcast keeps running statistics equal on all ranks). Call the *unwrapped* module (``unwrap``) for
    forward passes whose parameters get no gradient in that step (e.g. the discriminator inside the
    generator step of a GAN); a DDP forward whose backward never reaches its parameters leaves the
    reducer waiting and the next forward fails.
    """
    if not info.distributed:
        return model
    if sync_batchnorm and info.device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [info.device.index] if info.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                                     find_unused_parameters=find_unused_parameters)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def mean_across_ranks(value: float, info: DistInfo) -> float:
    """Average a scalar over all ranks (identity in a single process)."""
    if not info.distributed:
        return float(value)
    tensor = torch.tensor([float(value)], device=info.device, dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor.item()) / info.world_size


def sum_across_ranks(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Sum each value over all ranks, e.g. {"loss_sum": ..., "count": ...} for an exact weighted mean."""
    if not info.distributed or not values:
        return {k: float(v) for k, v in values.items()}
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], device=info.device, dtype=torch.float64)
    dist.all_reduce(tensor)
    return dict(zip(keys, tensor.tolist()))


def broadcast_object(value: Any, info: DistInfo, src: int = 0) -> Any:
    """Rank ``src``'s value on every rank: one decision for all (stop now? prune now? best so far?)."""
    if not info.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src, device=info.device if info.device.type == "cuda" else None)
    return box[0]


def gather_objects(value: Any, info: DistInfo) -> list:
    """Every rank's ``value``, in rank order, on every rank (``[value]`` in a single process)."""
    if not info.distributed:
        return [value]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, value)
    return out


def weights_digest(model: torch.nn.Module, buffers: bool = False) -> str:
    """SHA-256 over the parameters (and, with ``buffers``, the buffers): names, dtypes, exact bytes.

    Under DDP the parameters are identical on all ranks after every step; buffers such as BatchNorm
    running statistics are broadcast from rank 0 at the *start* of each forward, so after the last step
    each rank holds its own; :func:`sync_buffers` makes them equal."""
    h = hashlib.sha256()
    module = unwrap(model)
    tensors = dict(module.named_parameters())
    if buffers:
        tensors.update(module.named_buffers())
    for name, tensor in sorted(tensors.items()):
        h.update(name.encode())
        h.update(str(tensor.dtype).encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def ranks_agree(model: torch.nn.Module, info: DistInfo, buffers: bool = False) -> bool:
    """True when every rank holds bit-identical weights (always True in a single process)."""
    return len(set(gather_objects(weights_digest(model, buffers), info))) == 1


@torch.no_grad()
def sync_buffers(model: torch.nn.Module, info: DistInfo, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm statistics) to every rank, e.g. before sharded validation."""
    if not info.distributed:
        return
    for buffer in unwrap(model).buffers():
        dist.broadcast(buffer.data, src=src)


def barrier(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.barrier()


def cleanup_distributed(info: DistInfo) -> None:
    """Leave the process group. Unreachable DDP wrappers (e.g. one replaced by a re-wrap after pruning)
    are collected first: collected after the group is gone, their destructor hangs the process."""
    if info.distributed and dist.is_initialized():
        import gc

        gc.collect()
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- checkpoints (run.json: training/loop.py)
def save_checkpoint(path: Path, state: dict, info: DistInfo) -> None:
    """Atomically write a resumable checkpoint (rank 0 only). Contains only tensors and plain data."""
    if not info.is_main:
        return
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())


def load_checkpoint(path: Path, device: torch.device) -> dict | None:
    """A checkpoint written by :func:`save_checkpoint`, loaded with ``weights_only=True`` (no code runs)."""
    if not path.is_file():
        return None
    return torch.load(path, map_location=device, weights_only=True)


def rng_state() -> dict:
    """Random-generator states, so a resumed run continues exactly like an uninterrupted one."""
    state = {"torch": torch.get_rng_state(), "numpy": json.dumps(np.random.get_state()[1].tolist()),
             "numpy_pos": int(np.random.get_state()[2]), "python": json.dumps(random.getstate()[1])}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(("MT19937", np.array(json.loads(state["numpy"]), dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(json.loads(state["python"])), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


def gather_rng_states(info: DistInfo, extra: Any = None) -> list:
    """Every rank's generator states (plus an ``extra`` per-rank object, e.g. a numpy Generator's
    ``bit_generator.state`` as JSON), in rank order, for the checkpoint rank 0 writes."""
    return gather_objects({"rng": rng_state(), "extra": extra}, info)


def restore_rng_states(states: list, info: DistInfo) -> Any:
    """Put back this rank's generators from :func:`gather_rng_states`; returns its ``extra``.

    Resuming with a different world size cannot continue every rank's stream: the ranks missing from
    the checkpoint keep the generators they were seeded with (a warning, not an error)."""
    if info.rank >= len(states):
        if info.is_main or info.rank == len(states):
            print(f"warning: checkpoint holds random states of {len(states)} rank(s), running {info.world_size}; "
                  "extra ranks keep their fresh seeds", flush=True)
        return None
    set_rng_state(states[info.rank]["rng"])
    return states[info.rank]["extra"]


def rank_seed(seed: int, info: DistInfo, worker: int = 0) -> int:
    """A seed distinct per (seed, rank, worker) and stable across runs and resumes."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{info.rank}/{worker}".encode()).digest()[:4], "little")


# ----------------------------------------------------------------------------- data loading
def shard(items: Sequence, info: DistInfo) -> list:
    """This rank's share of ``items`` (every world_size-th, starting at rank), e.g. validation cases."""
    return list(items[info.rank::info.world_size])


class ResumableSampler(torch.utils.data.DistributedSampler):
    """DistributedSampler (works without a process group) that can start an epoch part-way through.

    The order of an epoch depends only on (seed, epoch), so a run resumed at epoch e, batch b sees exactly
    the samples an uninterrupted run would: ``set_epoch(e, start_batch=b)`` skips the first b batches
    of this rank's share.
    """

    def __init__(self, dataset, info: DistInfo, shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                 batch_size: int = 1):
        super().__init__(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.batch_size = batch_size
        self.start = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:  # type: ignore[override]
        super().set_epoch(epoch)
        self.start = start_batch * self.batch_size

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return max(self.num_samples - self.start, 0)


def worker_init_fn(worker_id: int) -> None:
    """Seed numpy and random in a DataLoader worker from its torch seed (set per worker by torch)."""
    seed = torch.initial_seed() % (2**32)
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset, batch_size: int, info: DistInfo, shuffle: bool = True, seed: int = 0, workers: int = 0,
                drop_last: bool = True, collate_fn=None, persistent_workers: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader over this rank's share of ``dataset`` with a :class:`ResumableSampler`.

    Call ``loader.sampler.set_epoch(epoch, start_batch)`` before each epoch. Worker processes get their
    own seeds (``worker_init_fn``) from a generator seeded by (seed, rank), so the stream is reproducible.
    """
    sampler = ResumableSampler(dataset, info, shuffle=shuffle, seed=seed, drop_last=drop_last, batch_size=batch_size)
    generator = torch.Generator()
    generator.manual_seed(rank_seed(seed, info))
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last,
        collate_fn=collate_fn, worker_init_fn=worker_init_fn, generator=generator,
        pin_memory=info.device.type == "cuda", persistent_workers=persistent_workers and workers > 0)


# ----------------------------------------------------------------------------- mixed precision
#: Test hook only: a dtype (e.g. ``torch.bfloat16``) makes :func:`amp_enabled`, :func:`autocast` and
#: :func:`grad_scaler` act on CPU too (CPU autocast in that dtype, an enabled GradScaler), so the
#: trainers' mixed-precision path can be exercised without a GPU. ``None`` (always in real runs): AMP is CUDA-only.
CPU_AMP_DTYPE: torch.dtype | None = None


def _device(where: "DistInfo | torch.device") -> torch.device:
    return where.device if isinstance(where, DistInfo) else torch.device(where)


def amp_enabled(info: "DistInfo | torch.device", requested: bool = True) -> bool:
    """Mixed precision only where it pays and is safe: CUDA (never on CPU, except under the test hook)."""
    kind = _device(info).type
    return bool(requested) and (kind == "cuda" or (kind == "cpu" and CPU_AMP_DTYPE is not None))


def autocast(info: "DistInfo | torch.device", enabled: bool = True):
    """``torch.autocast`` on CUDA (bfloat16 where supported, else float16); a no-op context otherwise."""
    if not amp_enabled(info, enabled):
        return contextlib.nullcontext()
    if _device(info).type == "cpu":
        return torch.autocast("cpu", dtype=CPU_AMP_DTYPE)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def grad_scaler(info: "DistInfo | torch.device", enabled: bool = True) -> torch.amp.GradScaler:
    """A GradScaler that is active only for float16 autocast on CUDA (bfloat16 needs none); save its
    ``state_dict()`` in checkpoints like an optimizer's (:func:`restore_scaler` reads it back)."""
    kind = _device(info).type
    if kind == "cpu":
        active = amp_enabled(info, enabled)  # only under the test hook: exercises scale/unscale/step
    else:
        active = amp_enabled(info, enabled) and not torch.cuda.is_bf16_supported()
    return torch.amp.GradScaler("cuda" if kind == "cuda" else "cpu", enabled=active)


def restore_scaler(scaler: torch.amp.GradScaler, state: dict | None) -> None:
    """Load a saved scaler state; checkpoints without one (older runs, or saved by a disabled scaler:
    ``{}``) leave the fresh scaler as it is."""
    if state:
        scaler.load_state_dict(state)


def scaled_step(loss: torch.Tensor, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                clip_norm: float | None = None) -> None:
    """``loss.backward()`` and ``opt.step()`` through ``scaler`` (plain float32 steps when it is disabled);
    with ``clip_norm`` the gradients are unscaled first, then clipped to that norm."""
    scaler.scale(loss).backward()
    if clip_norm:
        scaler.unscale_(opt)
        params = [p for group in opt.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, float(clip_norm))
    scaler.step(opt)
    scaler.update()


def amp_call(model, info: "DistInfo | torch.device", enabled: bool = True):
    """``model`` called under :func:`autocast` with float32 outputs, for validation/inference code."""
    def forward(*args, **kwargs):
        with autocast(info, enabled):
            out = model(*args, **kwargs)
        return out.float()

    return forward


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
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
