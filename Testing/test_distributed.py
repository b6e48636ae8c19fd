"""training/common.py under real DDP: 2 CPU processes with gloo (torch.multiprocessing).

A tiny model trained with common.py's loader, DDP wrapper and checkpoints must end with bit-identical
weights on both ranks; a run interrupted mid-epoch and resumed in fresh processes must end bit-identical
to the uninterrupted run; and (the control that shows the check can fail) the same training without
DDP leaves the ranks different.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]

TOTAL_STEPS = 7       # 24 samples, 2 ranks, batch 4 -> 3 batches per rank per epoch: crosses 2 epoch ends
STOP_AT = 4           # interrupted after epoch 1, batch 1 (mid-epoch)
BATCH = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(2, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm1d(4)
        self.drop = torch.nn.Dropout(0.2)  # uses the torch RNG: resume must restore it
        self.head = torch.nn.Linear(4 * 8, 1)

    def forward(self, x):
        return self.head(self.drop(torch.relu(self.bn(self.conv(x)))).flatten(1))


def _dataset():
    g = torch.Generator().manual_seed(123)
    x = torch.randn(24, 2, 8, generator=g)
    return torch.utils.data.TensorDataset(x, x.sum((1, 2))[:, None])


def _train(info, run_dir: Path, mode: str, use_ddp: bool = True) -> torch.nn.Module:
    from training import common

    common.seed_everything(7 + 1000 * info.rank)  # deliberately different per rank: DDP must align them
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = common.make_loader(_dataset(), BATCH, info, shuffle=True, seed=5)
    step, epoch, start_batch = 0, 0, 0
    if mode == "resume":
        ckpt = common.load_checkpoint(run_dir / "last.pt", info.device)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        step, epoch, start_batch = ckpt["step"], ckpt["epoch"], ckpt["batch"]
        common.restore_rng_states(ckpt["rng"], info)
    net = common.wrap_ddp(model, info) if use_ddp else model
    while step < TOTAL_STEPS:
        loader.sampler.set_epoch(epoch, start_batch)
        for batch_index, (x, y) in enumerate(loader, start=start_batch):
            x = x + 0.1 * torch.randn_like(x)  # augmentation from the (per-rank) torch RNG
            loss = torch.nn.functional.mse_loss(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if mode == "part" and step == STOP_AT:
                common.save_checkpoint(run_dir / "last.pt", {
                    "model": common.unwrap(net).state_dict(), "opt": opt.state_dict(), "step": step,
                    "epoch": epoch, "batch": batch_index + 1, "rng": common.gather_rng_states(info)}, info)
                return net
            if step == TOTAL_STEPS:
                break
        epoch, start_batch = epoch + 1, 0
    return net


def _worker(rank: int, world: int, port: int, run_dir: str) -> None:
    import faulthandler

    faulthandler.dump_traceback_later(120, exit=True)  # a hang fails the test instead of blocking it
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from training import common

    info = common.init_distributed("cpu")
    run_dir = Path(run_dir)
    try:
        assert info.distributed and dist_backend() == "gloo"
        net = _train(info, run_dir, "full")
        results = {"digest": common.weights_digest(net), "agree": common.ranks_agree(net, info),
                   "buffers_agree_before_sync": common.ranks_agree(net, info, buffers=True)}
        common.sync_buffers(net, info)
        results["buffers_agree"] = common.ranks_agree(net, info, buffers=True)
        # the control: the same training without DDP must leave the ranks apart
        results["agree_without_ddp"] = common.ranks_agree(_train(info, run_dir, "full", use_ddp=False), info)
        # exact validation metric over sharded items: sum/count across ranks == single-process mean
        items = list(range(1, 12))
        mine = common.shard(items, info)
        sums = common.sum_across_ranks({"total": float(sum(mine)), "count": float(len(mine))}, info)
        results["val_mean"] = sums["total"] / sums["count"]
        results["mean"] = common.mean_across_ranks(float(info.rank), info)
        results["decision"] = common.broadcast_object({"stop": info.rank == 0}, info)
        # interrupted mid-epoch (checkpoint by rank 0 with every rank's generators), then resumed from the
        # file with fresh models and scrambled generators
        results["part_digest"] = common.weights_digest(_train(info, run_dir, "part"))
        common.barrier(info)
        common.seed_everything(12345 + rank)
        results["resumed_digest"] = common.weights_digest(_train(info, run_dir, "resume"))
        torch.save(results, run_dir / f"rank{rank}.pt")
    finally:
        common.cleanup_distributed(info)


def dist_backend() -> str:
    import torch.distributed as dist

    return dist.get_backend()


def _spawn(run_dir: Path) -> list[dict]:
    mp.spawn(_worker, args=(2, _free_port(), str(run_dir)), nprocs=2, join=True)
    return [torch.load(run_dir / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_ddp_identical_weights_and_exact_resume(tmp_path):
    ranks = _spawn(tmp_path)
    r0, r1 = ranks
    assert r0["agree"] and r1["agree"] and r0["digest"] == r1["digest"]
    # BatchNorm statistics: each rank's own after the last step, equal once synced from rank 0
    assert not r0["buffers_agree_before_sync"] and r0["buffers_agree"]
    assert not r0["agree_without_ddp"], "control failed: ranks agree even without DDP"
    assert r0["val_mean"] == r1["val_mean"] == pytest.approx(6.0)
    assert r0["mean"] == r1["mean"] == 0.5
    assert r1["decision"] == {"stop": True}
    assert r0["part_digest"] != r0["digest"]  # really stopped early
    assert r0["resumed_digest"] == r1["resumed_digest"]
    assert r0["resumed_digest"] == r0["digest"], "resumed run differs from the uninterrupted one"
