"""Sharding a cohort over processes: rank and world size (torchrun or explicit), each rank's GPU, a gloo group."""
from __future__ import annotations

import os
from typing import Any, Sequence

from ..core.errors import SculptorGANError


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world size): as given, else from torchrun's environment (RANK, WORLD_SIZE), else (0, 1)."""
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if rank is None:
        rank = int(os.environ.get("RANK", "0")) if world_size > 1 else 0
    if world_size < 1 or not 0 <= rank < world_size:
        raise SculptorGANError(f"rank {rank} is not within a world of {world_size} process(es)")
    return rank, world_size


def shard(items: Sequence, rank: int, world_size: int) -> list:
    """The items rank ``rank`` of ``world_size`` handles: every world_size-th, starting at rank."""
    return list(items[rank::world_size])


def _rank_device(device: str, world_size: int) -> str:
    """Under torchrun each rank takes its own GPU (cuda:LOCAL_RANK) when CUDA is wanted and present."""
    if world_size <= 1 or device not in ("auto", "cuda"):
        return device
    try:
        import torch

        if torch.cuda.is_available():
            index = int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
            torch.cuda.set_device(index)
            return f"cuda:{index}"
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return device


class _Group:
    """The torch.distributed (gloo) group when launched by torchrun; no-ops otherwise."""

    def __init__(self, world_size: int):
        self.dist = None
        self.created = False
        if world_size <= 1 or "MASTER_ADDR" not in os.environ:
            return
        import torch.distributed as dist

        if not dist.is_available():
            return
        if not dist.is_initialized():
            if int(os.environ.get("WORLD_SIZE", "1")) != world_size:
                return  # manual sharding (explicit --rank/--world-size): coordinate through files only
            dist.init_process_group(backend="gloo")
            self.created = True
        self.dist = dist

    def broadcast(self, value: Any) -> Any:
        if self.dist is None:
            return value
        box = [value]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.dist is not None:
            self.dist.barrier()

    def close(self) -> None:
        if self.created and self.dist is not None and self.dist.is_initialized():
            self.dist.destroy_process_group()
