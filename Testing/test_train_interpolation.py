"""Tiny SculptorGAN training runs on phantoms: the loss goes down, checkpoints resume, export works."""
from __future__ import annotations

import json

import numpy as np
import torch

from training import train_interpolation as ti

import torch as _torch

_torch.set_num_threads(1)  # 2-core machine shared with other jobs: avoid oversubscription

TINY = ["phantoms=1", "phantom_shape=[20,32,32]", "phantom_z_spacings=[2.0]", "patch=32", "batch_size=4",
        "iters_per_epoch=3", "base_channels=4", "levels=2", "d_channels=4", "adv_start_epoch=1",
        "val_factors=[2]", "prune_sparsity=0.5", "prune_epoch=2", "prune_finetune_epochs=5", "max_epochs=3"]


def _args(run_dir, *extra):
    out = ["--out", str(run_dir)]
    for item in TINY + list(extra):
        out += ["--set", item]
    return out


def test_sampler_and_val_set():
    config = ti.load_config(ti.DEFAULTS, None, ["patch=24", "phantom_shape=[20,32,32]", "phantoms=1"])
    vols = ti.make_phantoms(config)
    sampler = ti.SliceSampler(vols, config, np.random.default_rng(0))
    ctx, pos, base, target, linear = sampler.batch(5)
    assert ctx.shape == (5, 4, 24, 24) and pos.shape == (5, 4)
    assert base.shape == target.shape == linear.shape == (5, 1, 24, 24)
    assert (pos[:, :2] <= 0).all() and (pos[:, 2:] >= 0).all()           # below / above the target
    assert (pos.abs() <= 2 * config["max_gap_mm"] + 1e-6).all()
    items = ti.build_val_set(vols, [2, 4], 2)
    assert {it["k"] for it in items} == {2, 4} and all(it["base"].shape == (1, 32, 32) for it in items)
    gen = ti.build_models(config)[0]
    val = ti.validate(gen, items, torch.device("cpu"))
    # an untrained generator is exactly cubic (up to the HU clip both get)
    assert abs(val["k2_psnr_gan"] - val["k2_psnr_cubic"]) < 1e-3 and abs(val["gain_db"]) < 1e-3


def test_generator_training_lowers_loss():
    torch.manual_seed(0)
    from SculptorGANLib.interpolate.context import normalize_hu
    from SculptorGANLib.synthetic.phantom import make_phantom

    config = ti.load_config(ti.DEFAULTS, None, ["patch=32", "base_channels=8", "k_min=4", "residual_scale=1.0"])
    ct, _ = make_phantom((24, 32, 32), (4.0, 4.0, 3.0), seed=1, noise_hu=0.0)  # noise-free: the loss can fall
    sampler = ti.SliceSampler([{"array": normalize_hu(ct.array), "dz": 3.0, "real": True}], config,
                              np.random.default_rng(0))
    batch = sampler.batch(8)
    gen = ti.build_models(config)[0]
    opt = torch.optim.Adam(gen.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = torch.nn.functional.mse_loss(gen(batch[0], batch[2], batch[1], batch[4]), batch[3])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.6 * losses[0]


def test_train_resume_prune_export(tmp_path):
    run = tmp_path / "run"
    assert ti.main(_args(run)) == 0
    log = (run / "train.log").read_text()
    assert "epoch 3 " in log and "pruned generator" in log
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["state"]["epoch"] == 3 and last["state"]["pruned"]
    # resume: continues at epoch 4 with the pruned generator, then exports
    export = tmp_path / "export"
    assert ti.main(_args(run, "max_epochs=5") + ["--resume", "--export", str(export)]) == 0
    log = (run / "train.log").read_text()
    assert "resumed from" in log and "epoch 4 " in log and "epoch 5 " in log and "epoch 1 " in log
    assert log.count("epoch 1 ") == 1  # did not start over
    card = json.loads((export / "sculptorgan_interp.json").read_text())
    assert card["task"] == "interpolation" and card["training"]["wp_sparsity"] > 0.45
    assert (export / "sculptorgan_interp.safetensors").is_file()
    run_record = json.loads((run / "run.json").read_text())
    assert run_record["config"]["patch"] == 32


def test_resume_with_explicit_lr_sets_both_learning_rates(tmp_path):
    run = tmp_path / "run"
    assert ti.main(_args(run)) == 0
    ckpt = torch.load(run / "last.pt", weights_only=True)
    ckpt["state"]["lr"] = 1e-5  # as if the plateau rule had lowered it
    for group in ckpt["g_opt"]["param_groups"]:
        group["lr"] = 1e-5 * group.get("lr_mult", 1.0)
    torch.save(ckpt, run / "last.pt")
    assert ti.main(_args(run, "max_epochs=4") + ["--resume"]) == 0
    kept = torch.load(run / "last.pt", weights_only=True)
    assert kept["state"]["lr"] == 1e-5 and kept["g_opt"]["param_groups"][0]["lr"] == 1e-5
    # lr=3e-4 is the run's own starting LR, and still means "train at 3e-4 from now on"
    assert ti.main(_args(run, "max_epochs=5", "lr=0.0003", "d_lr=0.0002") + ["--resume"]) == 0
    asked = torch.load(run / "last.pt", weights_only=True)
    assert asked["state"]["lr"] == 3e-4
    assert [g["lr"] for g in asked["g_opt"]["param_groups"]] == [3e-4 * g.get("lr_mult", 1.0) for g in asked["g_opt"]["param_groups"]]
    assert all(g["lr"] == 2e-4 for g in asked["d_opt"]["param_groups"])


def _hand_written_plateau(scores, lr, mults, patience, factor=0.2):
    """The interpolation trainer's LR rule before it used ReduceLROnPlateau (reference for the test below)."""
    best, bad, out = -float("inf"), 0, []
    for score in scores:
        if score > best + 1e-4:
            best, bad = score, 0
        else:
            bad += 1
            if bad >= patience:
                lr, bad = lr * factor, 0
        out.append([lr * m for m in mults])
    return out


def test_plateau_scheduler_reproduces_the_hand_written_rule():
    """ReduceLROnPlateau (abs 1e-4 threshold, patience - 1, eps 0) + the blend group at its multiple gives
    the LR sequence of the old hand-written rule, bit for bit, also for LRs below torch's default eps;
    an old checkpoint's plateau counters continue the same sequence."""
    from training.loop import plateau_scheduler, restore_plateau, set_lr

    rng = np.random.default_rng(3)
    scores = list(np.concatenate([np.linspace(0, 0.5, 5), np.full(7, 0.5), 0.5 + rng.normal(0, 2e-4, 30),
                                  np.linspace(0.6, 0.2, 6), np.full(12, 0.6001)]))
    for patience in (1, 2, 3, 5):
        for lr in (3e-4, 1e-9):
            expected = _hand_written_plateau(scores, lr, [1.0, 30.0], patience)
            params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
            opt = torch.optim.Adam([{"params": params[:1], "lr": lr, "lr_mult": 1.0},
                                    {"params": params[1:], "lr": lr * 30.0, "lr_mult": 30.0}])
            sched, got = plateau_scheduler(opt, 0.2, patience, absolute=True), []
            for i, score in enumerate(scores):
                sched.step(score)
                set_lr(opt, opt.param_groups[0]["lr"])
                got.append([g["lr"] for g in opt.param_groups])
                if i == 20:  # resume from an older checkpoint's counters mid-way
                    old = {"plateau": sched.num_bad_epochs, "plateau_best": sched.best}
                    sched = plateau_scheduler(opt, 0.2, patience, absolute=True)
                    restore_plateau(sched, None, old)
                    assert old == {}
            assert got == expected, (patience, lr)
            assert len({tuple(x) for x in expected}) > 2  # the LR was cut more than once


def test_resume_of_a_checkpoint_with_the_hand_written_plateau_state(tmp_path):
    """A checkpoint from before the scheduler (state['plateau'], state['plateau_best'], no 'scheduler')
    resumes with those counters: one more epoch that cannot beat the (raised) old best adds one bad epoch."""
    run = tmp_path / "run"
    assert ti.main(_args(run, "prune_sparsity=0", "max_epochs=2")) == 0
    ckpt = torch.load(run / "last.pt", weights_only=True)
    sched = ckpt.pop("scheduler")
    ckpt["state"].update(plateau=sched["num_bad_epochs"] + 1, plateau_best=sched["best"] + 5.0)
    torch.save(ckpt, run / "last.pt")
    assert ti.main(_args(run, "prune_sparsity=0", "max_epochs=3") + ["--resume"]) == 0
    kept = torch.load(run / "last.pt", weights_only=True)
    assert kept["state"]["epoch"] == 3 and "plateau" not in kept["state"] and "plateau_best" not in kept["state"]
    assert kept["scheduler"]["num_bad_epochs"] == sched["num_bad_epochs"] + 2
    assert kept["scheduler"]["best"] == sched["best"] + 5.0
