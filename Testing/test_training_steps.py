"""The training-throughput benchmark and both trainers' loops run one and the same step function per network
(``train_interpolation.gan_step``, ``train_segmentation.seg_step``), so the benchmark measures the trainers'
own step and cannot drift from it."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training import common
from training import train_interpolation as ti
from training import train_segmentation as ts

ROOT = Path(__file__).resolve().parent.parent
INTERP = {"patch": 16, "batch_size": 2, "base_channels": 4, "levels": 2, "d_channels": 4}
SEG = {"patch": [16, 16, 16], "batch_size": 1, "features": [4, 8]}

torch.set_num_threads(1)  # small shared machine


def _benchmark():
    spec = importlib.util.spec_from_file_location("training_throughput_under_test",
                                                  ROOT / "benchmarks" / "training_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _counting(monkeypatch, module, name: str) -> list:
    """Replace ``module.name`` by a wrapper that records each call and then runs the real function."""
    calls, real = [], getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


@pytest.mark.parametrize("network", ["interp", "seg"])
def test_benchmark_step_is_the_trainers_step(network, monkeypatch):
    module, step_name, overrides = (ti, "gan_step", INTERP) if network == "interp" else (ts, "seg_step", SEG)
    calls = _counting(monkeypatch, module, step_name)
    bench = _benchmark()
    build = bench.interp_step_fn if network == "interp" else bench.seg_step_fn
    config = common.load_config(module.DEFAULTS, None, [f"{k}={json.dumps(v)}" for k, v in overrides.items()])
    torch.manual_seed(0)
    step, per_step, params, _ = build(config, common.DistInfo(), False)
    step()
    step()
    assert calls == [1, 1] and per_step == overrides["batch_size"] and params > 0


def test_interpolation_loop_uses_gan_step(tmp_path, monkeypatch):
    calls = _counting(monkeypatch, ti, "gan_step")
    config = {**INTERP, "phantoms": 1, "phantom_shape": [20, 32, 32], "phantom_z_spacings": [2.0],
              "iters_per_epoch": 2, "max_epochs": 1, "adv_start_epoch": 0, "val_factors": [2],
              "prune_sparsity": 0.0, "device": "cpu", "threads": 1}
    argv = ["--out", str(tmp_path / "run")] + [a for k, v in config.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    assert ti.main(argv) == 0
    assert len(calls) == 2


def test_segmentation_loop_uses_seg_step(tmp_path, monkeypatch):
    calls = _counting(monkeypatch, ts, "seg_step")
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        labels = np.zeros((16, 24, 24), np.uint8)
        labels[4:12, 6:18, 6:18] = 1
        image = np.where(labels > 0, 150.0, -50.0).astype(np.float32) + rng.normal(0, 5, labels.shape).astype(np.float32)
        np.savez_compressed(data / f"img_{i}.npz", image=image, labels=labels)
    config = {**SEG, "data": str(data), "val_cases": ["img_1"], "roi": [16, 16, 16], "iters_per_epoch": 2,
              "max_epochs": 1, "sparsity": 0.0, "aug_elastic_prob": 0.0, "device": "cpu", "threads": 1}
    argv = ["--out", str(tmp_path / "run")] + [a for k, v in config.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    ts.main(argv)
    assert len(calls) == 2
