"""training/common.py and training/cache.py in one process: configs, RNG, checkpoints, samplers, cache."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

from training import cache, common, loop  # noqa: E402
from training.common import DistInfo  # noqa: E402

DEFAULTS = {"lr": 0.1, "patch": [8, 8], "name": "x", "amp": True}


def test_config_file_and_overrides(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("lr: 0.01\npatch: [16, 32]\n")
    config = common.load_config(DEFAULTS, str(yaml_file), ["name=run 1", "amp=false", "patch=[4,4]"])
    assert config == {"lr": 0.01, "patch": [4, 4], "name": "run 1", "amp": False}
    json_file = tmp_path / "c.json"
    json_file.write_text(json.dumps({"nope": 1}))
    with pytest.raises(SystemExit, match="unknown config keys"):
        common.load_config(DEFAULTS, str(json_file))
    with pytest.raises(SystemExit, match="unknown config key"):
        common.load_config(DEFAULTS, None, ["lrr=1"])
    with pytest.raises(SystemExit, match="key=value"):
        common.load_config(DEFAULTS, None, ["lr"])


def test_example_configs_parse():
    """Every example config under training/configs is valid JSON/YAML with a mapping at the top."""
    import yaml

    files = sorted(p for p in (ROOT / "training" / "configs").iterdir() if p.suffix in (".json", ".yaml", ".yml"))
    for path in files:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
        assert isinstance(data, dict) and data, path


def test_rng_roundtrip_and_rank_seeds():
    common.seed_everything(3)
    state = common.rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    common.seed_everything(99)
    common.set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]
    seeds = {common.rank_seed(0, DistInfo(rank=r, world_size=4), w) for r in range(4) for w in range(3)}
    assert len(seeds) == 12 and common.rank_seed(0, DistInfo(rank=1, world_size=4)) == common.rank_seed(0, DistInfo(rank=1))
    # single process: gather/restore are the plain state plus the extra object
    states = common.gather_rng_states(DistInfo(), extra={"np": 1})
    assert common.restore_rng_states(states, DistInfo()) == {"np": 1}


def test_checkpoint_atomic_weights_only_and_run_record(tmp_path):
    info = DistInfo()
    model = torch.nn.Linear(3, 2)
    path = tmp_path / "run" / "last.pt"
    common.save_checkpoint(path, {"model": model.state_dict(), "step": 4, "rng": common.rng_state()}, info)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary left behind
    loaded = common.load_checkpoint(path, torch.device("cpu"))
    assert loaded["step"] == 4 and torch.equal(loaded["model"]["weight"], model.weight.detach())
    assert common.load_checkpoint(tmp_path / "none.pt", torch.device("cpu")) is None
    common.save_checkpoint(tmp_path / "other.pt", {"x": 1}, DistInfo(rank=1, world_size=2))
    assert not (tmp_path / "other.pt").exists()  # only rank 0 writes
    torch.save({"evil": Path("x")}, tmp_path / "pickled.pt")
    with pytest.raises(Exception):
        common.load_checkpoint(tmp_path / "pickled.pt", torch.device("cpu"))  # weights_only refuses objects
    loop.write_run_record(path.parent, {"lr": 1}, ["a.nii.gz"], info)
    loop.write_run_record(path.parent, {"lr": 2}, ["a.nii.gz"], info)
    record = json.loads((path.parent / "run.json").read_text())
    assert record["config"] == {"lr": 2} and record["previous"][0]["config"] == {"lr": 1}
    assert record["data"] == ["a.nii.gz"] and record["git_revision"] and record["world_size"] == 1


def test_resumable_sampler_shards_and_skips():
    data = list(range(10))
    rank_orders = []
    for rank in range(2):
        sampler = common.ResumableSampler(data, DistInfo(rank=rank, world_size=2), seed=1, batch_size=2)
        sampler.set_epoch(3)
        rank_orders.append(list(sampler))
    assert sorted(rank_orders[0] + rank_orders[1]) == data  # disjoint shards covering everything
    sampler = common.ResumableSampler(data, DistInfo(rank=1, world_size=2), seed=1, batch_size=2)
    sampler.set_epoch(3, start_batch=1)
    assert list(sampler) == rank_orders[1][2:] and len(sampler) == 3
    sampler.set_epoch(4)
    assert list(sampler) != rank_orders[1]  # reshuffled per epoch
    loader = common.make_loader(torch.arange(12).float(), 4, DistInfo(), seed=2)
    loader.sampler.set_epoch(0)
    assert sorted(torch.cat(list(loader)).tolist()) == list(range(12))


def test_collectives_are_identities_in_one_process():
    info = DistInfo()
    assert common.mean_across_ranks(2.5, info) == 2.5
    assert common.sum_across_ranks({"a": 1, "b": 2.0}, info) == {"a": 1.0, "b": 2.0}
    assert common.broadcast_object({"x": 1}, info) == {"x": 1} and common.gather_objects(5, info) == [5]
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    assert common.weights_digest(a) != common.weights_digest(b)
    b.load_state_dict(a.state_dict())
    assert common.weights_digest(a) == common.weights_digest(b) and common.ranks_agree(a, info)
    assert common.wrap_ddp(a, info) is a and common.unwrap(a) is a
    assert not common.amp_enabled(info) and not common.grad_scaler(info).is_enabled()
    with common.autocast(info):
        assert a(torch.ones(1, 2)).dtype == torch.float32  # no autocast on CPU
    with pytest.raises(SystemExit, match="no CUDA"):
        if not torch.cuda.is_available():
            common.init_distributed("cuda")
        else:  # pragma: no cover - GPU machines
            raise SystemExit("no CUDA")


def _fake_preprocess(calls: list):
    def run(image_path: Path, label_path: Path | None) -> dict:
        calls.append(image_path)
        seed = int(Path(image_path).read_text())
        labels = np.zeros((10, 12, 14), np.uint8)
        labels[4:6, 5:7, 6:8] = 1 + seed % 2
        return {"image": np.full((10, 12, 14), seed, np.float32), "labels": labels}

    return run


def test_cache_prepares_once_invalidates_and_shards(tmp_path):
    pairs = []
    for i in range(3):
        (tmp_path / f"img{i}.txt").write_text(str(i))
        pairs.append((tmp_path / f"img{i}.txt", tmp_path / f"img{i}.txt"))
    params = {"spacing": [3, 3, 3], "window": [-200, 400]}
    calls: list = []
    # two "ranks" of a world of 2 (no process group needed for the sharding itself)
    with pytest.raises(RuntimeError, match="shared by all ranks"):  # rank 1 never ran: its case is missing
        cache.prepare_cache(pairs[:1] + pairs[2:], tmp_path / "c", params, _fake_preprocess(calls), DistInfo(0, 2))
    assert calls == [pairs[0][0]]  # rank 0 of 2 takes every second missing case
    cases = cache.prepare_cache(pairs, tmp_path / "c", params, _fake_preprocess(calls))
    assert calls == [pairs[0][0], pairs[1][0], pairs[2][0]]  # only the missing ones were prepared
    assert isinstance(cases[1]["image"], np.memmap) and float(cases[2]["image"][0, 0, 0]) == 2.0
    assert len(cases[0]["fg_points"]) == 8 and cases[0]["meta"]["params"] == params
    cache.prepare_cache(pairs, tmp_path / "c", params, _fake_preprocess(calls))
    assert len(calls) == 3  # all cached
    cache.prepare_cache(pairs, tmp_path / "c", {**params, "spacing": [2, 2, 2]}, _fake_preprocess(calls))
    assert len(calls) == 6  # new parameters: new entries
    (tmp_path / "img1.txt").write_text("11")  # the source changed
    cases = cache.prepare_cache(pairs, tmp_path / "c", params, _fake_preprocess(calls))
    assert len(calls) == 7 and float(cases[1]["image"][0, 0, 0]) == 11.0
    assert not list((tmp_path / "c").glob(".*tmp"))


def test_patch_dataset_deterministic_with_foreground_oversampling(tmp_path):
    labels = np.zeros((20, 30, 30), np.uint8)
    labels[2:4, 3:5, 3:5] = 1  # a tiny structure in a corner: rare under uniform sampling
    case = {"image": np.random.default_rng(0).normal(size=labels.shape).astype(np.float32), "labels": labels,
            "fg_points": np.argwhere(labels > 0)}
    ds = cache.PatchDataset([case], (8, 8, 8), samples_per_epoch=200, seed=4, fg_prob=0.5)
    x, y = ds[7]
    assert x.shape == (1, 8, 8, 8) and y.dtype == torch.int64
    assert torch.equal(ds[7][0], x)  # same (seed, epoch, index) -> same patch
    ds.set_epoch(1)
    assert not torch.equal(ds[7][0], x)
    with_fg = np.mean([bool(ds[i][1].any()) for i in range(200)])
    assert 0.45 < with_fg < 0.75  # ~half centred on foreground, plus a few uniform hits
    uniform = cache.PatchDataset([case], (8, 8, 8), samples_per_epoch=200, seed=4, fg_prob=0.0)
    assert np.mean([bool(uniform[i][1].any()) for i in range(200)]) < 0.15
    # a patch larger than the volume is padded
    big, lab, _ = cache.sample_patch(case, (24, 8, 8), np.random.default_rng(0), 1.0)
    assert big.shape == (24, 8, 8) and (big == -1.0).any() and lab.shape == (24, 8, 8)
    # workers do not change the stream
    loader0 = common.make_loader(ds, 4, DistInfo(), seed=1, workers=0)
    loader2 = common.make_loader(ds, 4, DistInfo(), seed=1, workers=2)
    for loader in (loader0, loader2):
        loader.sampler.set_epoch(1)
    first = [b[0] for _, b in zip(range(3), loader0)]
    second = [b[0] for _, b in zip(range(3), loader2)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("trainer,config", [("train_segmentation", "kits19_segmentation_multigpu.yaml"),
                                            ("train_interpolation", "interpolation_multigpu.yaml")])
def test_multigpu_configs_match_their_trainer(trainer, config):
    """The multi-GPU example configs use only keys the trainer knows (load_config rejects others)."""
    import importlib

    module = importlib.import_module(f"training.{trainer}")
    loaded = common.load_config(module.DEFAULTS, str(ROOT / "training" / "configs" / config))
    assert loaded["device"] == "auto" and loaded["batch_size"] >= 1


def test_training_throughput_benchmark_runs_on_cpu(tmp_path):
    """benchmarks/training_throughput.py still drives both trainers' networks (tiny shapes, 1 step)."""
    from benchmarks import training_throughput

    out = tmp_path / "tt.json"
    assert training_throughput.main(["--device", "cpu", "--steps", "1", "--warmup", "1", "--set", "interp.patch=16",
                                     "--set", "batch_size=2", "--set", "base_channels=4", "--set", "d_channels=4",
                                     "--set", "seg.patch=[16,16,16]", "--set", "features=[4,8]", "--json", str(out)]) == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    assert [r["network"] for r in result["runs"]] == ["interp", "seg"] and result["world_size"] == 1
    assert all(r["samples_per_s_total"] > 0 for r in result["runs"])
