"""Both trainers under DDP: 2 CPU processes with gloo (torch.multiprocessing), a few tiny steps each.

Pruning happens during the runs (both trainers prune their WP blocks), so DDP across pruning is
covered too. One 2-process session runs, for each trainer, (a) an uninterrupted run, (b) the same run stopped after
its first epoch and (c) resumed with ``--resume`` to the same end. The trainers are called through their
``main(argv)`` exactly as torchrun would run them (env MASTER_ADDR/PORT, RANK, WORLD_SIZE); the only
instrumentation is that every rank also keeps a copy of what it would checkpoint, so the test can see
that both ranks hold identical weights and that (c) ends bit-identical to (a).
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]

INTERP_ARGS = ["--set", "phantoms=1", "--set", "phantom_shape=[24,32,32]", "--set", "patch=32", "--set", "batch_size=2",
               "--set", "iters_per_epoch=4", "--set", "val_factors=[2]", "--set", "adv_start_epoch=1",
               "--set", "prune_sparsity=0.5", "--set", "prune_epoch=1",
               "--set", "prune_finetune_epochs=5", "--set", "base_channels=4", "--set", "d_channels=4", "--set", "device=cpu"]
SEG_ARGS = ["--set", "data_mode=images", "--set", "spacing=[5,5,5]", "--set", "features=[4,8]",
            "--set", "patch=[16,32,32]", "--set", "roi=[16,32,32]", "--set", "batch_size=2",
            "--set", "iters_per_epoch=2", "--set", "val_max_cases=1", "--set", "val_fraction=0.34",
            "--set", "sparsity=0.5", "--set", "prune_start=1", "--set", "prune_every=1", "--set", "prune_steps=2",
            "--set", "aug_elastic_prob=0", "--set", "device=cpu"]
EPOCHS = 2
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _seg_data(folder: Path) -> Path:
    from SculptorGANLib.io.volumes import write_volume
    from SculptorGANLib.synthetic.phantom import make_phantom

    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for seed in range(3):
        ct, labels = make_phantom(shape=(24, 64, 64), spacing=(5.0, 5.0, 5.0), seed=seed, tumor_side="left")
        write_volume(ct, folder / "images" / f"p{seed}.nii.gz")
        write_volume(labels, folder / "labels" / f"p{seed}.nii.gz")
    return folder


def _instrument(module) -> None:
    """Each rank also writes what it would checkpoint as last.rank<R>.pt (the trainer writes on rank 0 only)."""
    original = module.save_checkpoint

    def save_checkpoint(path, state, info):
        original(path, state, info)
        if Path(path).name == "last.pt":
            torch.save(state, Path(path).with_name(f"last.rank{info.rank}.pt"))

    module.save_checkpoint = save_checkpoint


def _worker(rank: int, world: int, ports: list[int], work: str) -> None:
    import faulthandler

    faulthandler.dump_traceback_later(240, exit=True)  # a hang (ranks out of step) fails the test, with stacks
    os.environ.update(MASTER_ADDR="127.0.0.1", WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from training import train_interpolation, train_segmentation

    work_dir = Path(work)
    seg_data = ["--set", f"data={work_dir / 'segdata'}"]
    phases = [
        (train_interpolation, ["--out", str(work_dir / "interp_full"), *INTERP_ARGS, "--set", f"max_epochs={EPOCHS}"]),
        (train_interpolation, ["--out", str(work_dir / "interp_resumed"), *INTERP_ARGS, "--set", "max_epochs=1"]),
        (train_interpolation, ["--out", str(work_dir / "interp_resumed"), "--resume", "--set", f"max_epochs={EPOCHS}"]),
        (train_segmentation, ["--out", str(work_dir / "seg_full"), *SEG_ARGS, *seg_data, "--set", f"max_epochs={EPOCHS}"]),
        (train_segmentation, ["--out", str(work_dir / "seg_resumed"), *SEG_ARGS, *seg_data, "--set", "max_epochs=1"]),
        (train_segmentation, ["--out", str(work_dir / "seg_resumed"), "--resume", "--set", f"max_epochs={EPOCHS}"]),
    ]
    for module in (train_interpolation, train_segmentation):
        _instrument(module)
    for port, (module, argv) in zip(ports, phases):
        os.environ["MASTER_PORT"] = str(port)  # each launch forms (and tears down) its own process group
        module.main(argv)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("ddptrain")
    _seg_data(work / "segdata")
    mp.spawn(_worker, args=(2, _free_ports(6), str(work)), nprocs=2, join=True)
    return work


def _weights(path: Path, key: str) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)[key]
    return {k: v for k, v in state.items() if not k.endswith(_BUFFERS)}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("trainer,keys", [("interp", ("generator", "discriminator")), ("seg", ("model",))])
def test_trainer_ranks_identical_and_resume_exact(trained, trainer, keys):
    full, resumed = trained / f"{trainer}_full", trained / f"{trainer}_resumed"
    assert (full / "run.json").is_file() and (full / "train.log").is_file()
    for key in keys:
        # the two ranks hold the same weights after training
        assert _same(_weights(full / "last.rank0.pt", key), _weights(full / "last.rank1.pt", key)), key
        assert _same(_weights(resumed / "last.rank0.pt", key), _weights(resumed / "last.rank1.pt", key)), key
        # interrupted after epoch 1 and resumed == uninterrupted, bit for bit
        assert _same(_weights(resumed / "last.pt", key), _weights(full / "last.pt", key)), \
            f"{trainer}: resumed {key} differs from the uninterrupted run"
    # the ranks took the same decisions: best-so-far, early-stop and plateau counters, learning rate
    ranks = [torch.load(full / f"last.rank{r}.pt", map_location="cpu", weights_only=True) for r in range(2)]
    fields = {"interp": ("state",), "seg": ("best", "best_epoch", "best_metrics", "best_sparsity", "sparsity",
                                              "iteration", "epoch")}[trainer]
    for field in fields:
        a, b = ranks[0][field], ranks[1][field]
        if isinstance(a, dict):
            a, b = ({k: v for k, v in d.items() if k != "elapsed"} for d in (a, b))
        assert a == b, f"{trainer}: ranks disagree on {field}: {a} vs {b}"
    opt_key = {"interp": "g_opt", "seg": "optimizer"}[trainer]
    assert [g["lr"] for g in ranks[0][opt_key]["param_groups"]] == [g["lr"] for g in ranks[1][opt_key]["param_groups"]]
    log = (resumed / "train.log").read_text()
    assert "resumed" in log
