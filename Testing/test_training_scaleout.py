"""Scale-out features of both trainers on CPU: DataLoader workers, the image cache, mixed precision.

Tiny runs (a few steps each): patches/slices drawn in 2 worker processes with an exact resume at an
epoch boundary (from a checkpoint in the old format, without GradScaler state); ``data_mode: images``
preprocesses a KiTS19-layout folder once into the cache and reuses it; and the AMP code path
(autocast + GradScaler), forced onto CPU with bfloat16 through ``training.common.CPU_AMP_DTYPE``.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from training import cache as cache_mod
from training import common
from training import train_interpolation as ti
from training import train_segmentation as ts

torch.set_num_threads(1)  # small shared machine

SEG = {"features": [4, 8], "patch": [16, 32, 32], "roi": [16, 32, 32], "batch_size": 2, "iters_per_epoch": 3,
       "val_max_cases": 1, "sparsity": 0.0, "aug_elastic_prob": 0.0, "device": "cpu", "threads": 1,
       "checkpoint_minutes": 100.0, "lr": 0.01}
INTERP = {"phantoms": 1, "phantom_shape": [20, 32, 32], "phantom_z_spacings": [2.0], "patch": 32, "batch_size": 2,
          "iters_per_epoch": 3, "base_channels": 4, "levels": 2, "d_channels": 4, "adv_start_epoch": 1,
          "val_factors": [2], "prune_sparsity": 0.0, "device": "cpu", "threads": 1}
SCALER_KEYS = ("scaler", "g_scaler", "d_scaler")


def _argv(out: Path, base: dict, **overrides) -> list[str]:
    argv = ["--out", str(out)]
    for key, value in {**base, **overrides}.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    return argv


def _weights(path: Path, key: str) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)[key]
    return {k: v for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _strip_scaler(path: Path) -> None:
    """Rewrite a checkpoint in the format written before AMP existed (no GradScaler state)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert any(k in ckpt for k in SCALER_KEYS)
    torch.save({k: v for k, v in ckpt.items() if k not in SCALER_KEYS}, path)


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory) -> Path:
    """Synthetic-mode cases: two phantom CTs (HU on the canonical grid) and one tissue layout."""
    from SculptorGANLib.synthetic.phantom import make_phantom
    from SculptorGANLib.synthetic import make_layout

    root = tmp_path_factory.mktemp("synth")
    for seed in range(2):
        ct, labels = make_phantom(shape=(24, 48, 48), spacing=(6.0, 6.0, 6.0), seed=seed)
        np.savez_compressed(root / f"img_{seed}.npz", image=ct.array.astype(np.float32),
                            labels=labels.array.astype(np.uint8))
    labels = np.load(root / "img_0.npz")["labels"]
    np.savez_compressed(root / "case_00001_v0.npz", labels=labels,
                        layout=make_layout(labels, (6.0, 6.0, 6.0), np.random.default_rng(0)))
    return root


@pytest.fixture(scope="module")
def kits_data(tmp_path_factory) -> Path:
    """A tiny KiTS19-layout folder: case_*/imaging.nii.gz + segmentation.nii.gz from the phantom."""
    from SculptorGANLib.io.volumes import write_volume
    from SculptorGANLib.synthetic.phantom import make_phantom

    root = tmp_path_factory.mktemp("kits")
    for seed in range(3):
        ct, labels = make_phantom(shape=(24, 64, 64), spacing=(5.0, 5.0, 5.0), seed=seed)
        case = root / f"case_{seed:05d}"
        case.mkdir()
        write_volume(ct, case / "imaging.nii.gz")
        write_volume(labels, case / "segmentation.nii.gz")
    return root


def _record_pids(monkeypatch, cls, pid_file: Path) -> None:
    """Wrap ``cls.draw`` so that every item notes the process that drew it."""
    original = cls.draw

    def draw(self, rng):
        with open(pid_file, "a", encoding="utf-8") as handle:
            handle.write(f"{os.getpid()}\n")
        return original(self, rng)

    monkeypatch.setattr(cls, "draw", draw)


def test_segmentation_synthetic_workers_resume_exact(synth_data, tmp_path, monkeypatch):
    pids = tmp_path / "pids.txt"
    _record_pids(monkeypatch, ts.PatchSampler, pids)
    base = {**SEG, "data": str(synth_data), "val_cases": ["img_1"], "num_workers": 2}
    full = ts.main(_argv(tmp_path / "full", base, max_epochs=2))
    assert all(np.isfinite(h["loss"]) for h in full["state"]["history"])
    drawn = {int(p) for p in pids.read_text().split()}
    assert drawn and os.getpid() not in drawn  # the patches were rendered in worker processes
    ts.main(_argv(tmp_path / "part", base, max_epochs=1))
    _strip_scaler(tmp_path / "part" / "last.pt")  # resume from an old-format checkpoint
    resumed = ts.main(["--out", str(tmp_path / "part"), "--resume", "--set", "max_epochs=2"])
    assert resumed["state"]["epoch"] == 2 and "resumed" in (tmp_path / "part" / "train.log").read_text()
    assert _same(_weights(tmp_path / "part" / "last.pt", "model"), _weights(tmp_path / "full" / "last.pt", "model"))
    assert "scaler" in torch.load(tmp_path / "part" / "last.pt", weights_only=True)


def test_segmentation_images_cache_built_once(kits_data, tmp_path, monkeypatch):
    calls: list = []
    real = cache_mod.canonical_preprocess

    def counting(spacing, window):
        run = real(spacing, window)

        def wrapped(image_path, label_path):
            calls.append(image_path)
            return run(image_path, label_path)

        return wrapped

    monkeypatch.setattr(cache_mod, "canonical_preprocess", counting)
    base = {**SEG, "data_mode": "images", "data": str(kits_data), "val_fraction": 0.34, "spacing": [5.0, 5.0, 5.0],
            "num_workers": 2, "max_epochs": 2}
    first = ts.main(_argv(tmp_path / "a", base))
    assert len(calls) == 3  # every case preprocessed once (2 training + 1 validation)
    cache_dir = kits_data / ".sculptorgan_cache"  # the default: beside the data
    entries = sorted(p.name for p in cache_dir.iterdir() if not p.name.startswith("."))
    assert len(entries) == 3 and all((cache_dir / e / "image.npy").is_file() for e in entries)
    assert all(np.isfinite(h["loss"]) for h in first["state"]["history"])
    assert "kidney_dice" in first["state"]["history"][-1]
    second = ts.main(_argv(tmp_path / "b", base, num_workers=0, max_epochs=1))
    assert len(calls) == 3  # reused by a second run: nothing preprocessed again
    assert sorted(p.name for p in cache_dir.iterdir() if not p.name.startswith(".")) == entries
    assert second["state"]["iteration"] == 3
    # an explicit cache_dir is honoured
    ts.main(_argv(tmp_path / "c", base, num_workers=0, max_epochs=1, cache_dir=str(tmp_path / "mycache")))
    assert len(calls) == 6 and len(list((tmp_path / "mycache").iterdir())) == 3


def test_interpolation_workers_resume_exact(tmp_path, monkeypatch):
    pids = tmp_path / "pids.txt"
    _record_pids(monkeypatch, ti.SliceSampler, pids)
    base = {**INTERP, "num_workers": 2}
    assert ti.main(_argv(tmp_path / "full", base, max_epochs=2)) == 0
    drawn = {int(p) for p in pids.read_text().split()}
    assert drawn and os.getpid() not in drawn
    assert ti.main(_argv(tmp_path / "part", base, max_epochs=1)) == 0
    _strip_scaler(tmp_path / "part" / "last.pt")
    assert ti.main(["--out", str(tmp_path / "part"), "--resume", "--set", "max_epochs=2"]) == 0
    for key in ("generator", "discriminator"):
        assert _same(_weights(tmp_path / "part" / "last.pt", key), _weights(tmp_path / "full" / "last.pt", key)), key
    ckpt = torch.load(tmp_path / "part" / "last.pt", weights_only=True)
    assert "g_scaler" in ckpt and "d_scaler" in ckpt


def test_interpolation_in_process_resume_from_oldest_format(tmp_path):
    """A checkpoint as written before AMP and before the shared rank-RNG helpers (slice-sampler state
    under "np_generator") still resumes exactly: the in-process sampler continues its stream."""
    assert ti.main(_argv(tmp_path / "full", INTERP, max_epochs=2)) == 0
    assert ti.main(_argv(tmp_path / "part", INTERP, max_epochs=1)) == 0
    path = tmp_path / "part" / "last.pt"
    _strip_scaler(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt["rng_ranks"] = [{"rng": r["rng"], "np_generator": r["extra"]} for r in ckpt["rng_ranks"]]
    torch.save(ckpt, path)
    assert ti.main(["--out", str(tmp_path / "part"), "--resume", "--set", "max_epochs=2"]) == 0
    for key in ("generator", "discriminator"):
        assert _same(_weights(path, key), _weights(tmp_path / "full" / "last.pt", key)), key


def test_amp_path_forced_on_cpu(synth_data, tmp_path, monkeypatch):
    """CPU bfloat16 autocast + an enabled GradScaler: 2 steps of each trainer give finite losses, the
    scaler state is checkpointed and restored on resume."""
    monkeypatch.setattr(common, "CPU_AMP_DTYPE", torch.bfloat16)
    info = common.DistInfo()
    assert common.amp_enabled(info) and common.grad_scaler(info).is_enabled()
    assert not common.amp_enabled(info, requested=False)  # "amp": false still means float32
    with common.autocast(info):
        assert torch.nn.Linear(2, 2)(torch.ones(1, 2)).dtype == torch.bfloat16

    seg = {**SEG, "data": str(synth_data), "val_cases": ["img_1"], "iters_per_epoch": 2}
    result = ts.main(_argv(tmp_path / "seg", seg, max_epochs=1))
    assert np.isfinite(result["state"]["history"][0]["loss"]) and result["state"]["iteration"] == 2
    ckpt = torch.load(tmp_path / "seg" / "last.pt", weights_only=True)
    assert ckpt["scaler"]["scale"] > 0  # a real (enabled) scaler state
    resumed = ts.main(["--out", str(tmp_path / "seg"), "--resume", "--set", "max_epochs=2"])
    assert np.isfinite(resumed["state"]["history"][-1]["loss"]) and resumed["state"]["iteration"] == 4

    assert ti.main(_argv(tmp_path / "interp", {**INTERP, "iters_per_epoch": 2, "adv_start_epoch": 0},
                         max_epochs=1)) == 0
    log = (tmp_path / "interp" / "train.log").read_text()
    recon, d_loss = (float(v) for v in re.search(r"epoch 1 recon (\S+) d (\S+)", log).groups())
    assert np.isfinite(recon) and np.isfinite(d_loss) and d_loss > 0  # both networks stepped
    ckpt = torch.load(tmp_path / "interp" / "last.pt", weights_only=True)
    assert ckpt["g_scaler"]["scale"] > 0 and ckpt["d_scaler"]["scale"] > 0
