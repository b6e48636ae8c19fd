"""Train SculptorGAN Phase I (conditional-GAN slice interpolation), self-supervised.

From thin CT volumes, slices are dropped (regular factor k or irregular gaps) and the generator learns to
restore them from the two acquired slices on each side, their distances in mm and the cubic B-spline
estimate it refines (Algorithm 1 of the paper: discriminator step, then generator step with adversarial +
reconstruction loss). Then the generator is magnitude-pruned and fine-tuned, and the best checkpoint on
the validation slices is exported as safetensors + model card.

    python -m training.train_interpolation --config training/configs/interpolation_cpu.json --out training/runs/interp
    python -m training.train_interpolation --out training/runs/interp --resume          # continue
    torchrun --nproc-per-node 2 -m training.train_interpolation --out ...               # DDP

Data entries (``data``, ``val_data``) are files, folders (KiTS19 ``case_*/imaging.nii.gz`` or plain
folders of .nii/.nii.gz/.nrrd/.mha) or ``FILE:z0:z1`` to use only slices z0 ≤ z < z1 of a file.

``num_workers`` > 0 draws the training slices in DataLoader worker processes (item i of epoch e seeded by
(seed, e, i), ``training/loading.py``); 0 draws them in the training process as before. ``amp`` (default
true) runs both networks under autocast on CUDA with one GradScaler per network (D and G losses differ in
scale and D is idle during the warm-up), saved in the checkpoints; a no-op on CPU.

Parts: this file holds the step (``gan_step``), validation and the trainer's hooks (:class:`InterpTrainer`);
the data are ``training/interp_data.py``, the networks ``training/models.py``, the export
``training/export.py``, and the command line, run folder, LR plateau and epoch loop ``training/loop.py``.
"""
from __future__ import annotations

import json
import math
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from SculptorGANLib.interpolate.context import pad_to_multiple
from SculptorGANLib.nn.gan import PatchDiscriminator, SculptorGenerator, count_parameters
from SculptorGANLib.nn.pruning import apply_magnitude_pruning, sparsity_report
from training.common import (DistInfo, Logger, amp_call, autocast, broadcast_object, cleanup_distributed,
                             gather_rng_states, grad_scaler, init_distributed, load_checkpoint, load_config,
                             mean_across_ranks, override_keys, restore_rng_states, restore_scaler, save_checkpoint,
                             scaled_step, seed_everything, unwrap, wrap_ddp)
from training.export import export_best_generator, export_generator
from training.interp_data import (SliceSampler, build_val_set, expand_data, load_volumes, make_phantoms,
                                  validation_volumes)
from training.loading import SeededDataset, epoch_batches, seeded_loader
from training.loop import (Clock, make_parser, plateau_scheduler, resolve_config, restore_plateau, run_epochs, set_lr,
                           start_run)
from training.models import build_models

__all__ = ["DEFAULTS", "main", "gan_step", "make_g_opt", "make_d_opt", "make_recon_loss", "build_models", "validate",
           "psnr_hu", "export_generator", "SliceSampler", "build_val_set", "expand_data", "load_volumes",
           "make_phantoms", "load_config"]

ROOT = Path(__file__).resolve().parent.parent

DEFAULTS: dict = {
    # data
    "data": [],                     # training volumes (see module doc); may be empty when phantoms > 0
    "val_data": [],                 # validation volumes (model selection); default: phantoms
    "phantoms": 4,                  # synthetic phantoms added to the training pool
    "phantom_prob": 0.25,           # probability a sample comes from a phantom (when real data exist)
    "phantom_shape": [64, 128, 128],
    "phantom_z_spacings": [1.0, 1.5, 2.0, 3.0],
    # gaps
    "k_min": 2, "k_max": 6,         # dropped-slice factors (slices of the source grid)
    "irregular_prob": 0.2,          # fraction of samples with irregular gaps (missing-slice filling)
    "max_gap_mm": 24.0,             # widest gap trained; wider gaps fall back to cubic at inference
    "min_gap_mm": 0.0,              # (model card only) narrower gaps fall back to cubic at inference
    "val_factors": [2, 4],
    # model
    "n_side": 2, "base_channels": 24, "levels": 3, "pos_scale_mm": 10.0, "residual_scale": 0.25,
    "use_linear": True,             # also give the linear estimate and learn a gap-dependent cubic/linear blend
    "d_channels": 32, "d_layers": 3,
    # optimisation (paper defaults)
    "lr": 3e-4, "d_lr": 3e-4, "batch_size": 8, "patch": 192, "iters_per_epoch": 250,
    "blend_lr_mult": 30.0,          # the 2n+1 blend weights learn faster
    "max_epochs": 1000, "plateau_patience": 30, "plateau_factor": 0.2, "early_stop": 50,
    "recon_loss": "l1",             # l1 | mse | l1+mse (l1 + mse_weight·mse, stresses large errors at edges)
    "mse_weight": 10.0,
    "adv_weight": 0.002,            # weight of the (LSGAN) adversarial term; 0 disables the discriminator
    "adv_start_epoch": 1,           # epochs of reconstruction-only warm-up before the adversarial term
    "augment": True, "intensity_jitter": 0.05,
    # pruning (WP-UNet): at prune_epoch, or at prune_time_fraction of max_minutes, or at early stop
    "prune_sparsity": 0.5, "prune_epoch": -1, "prune_time_fraction": 0.7, "prune_finetune_epochs": 10,
    # misc
    "seed": 0, "threads": 1, "device": "auto", "val_every": 1,
    "num_workers": 0,               # DataLoader worker processes drawing the training slices (0: in-process)
    "amp": True,                    # mixed precision on CUDA (no-op on CPU)
    "model_name": "sculptorgan_interp", "model_version": "1",
    "data_notes": "",               # free text for the model card: sources and licenses of the data
}



# ----------------------------------------------------------------------------- validation
def psnr_hu(mse_norm: float) -> float:
    """PSNR (data range 4095 HU) from a mean squared error in normalized units (HU/1000)."""
    mse = max(mse_norm * 1e6, 1e-12)
    return 10 * math.log10(4095.0 ** 2 / mse)


@torch.no_grad()
def validate(generator: torch.nn.Module, items: list[dict], device: torch.device, batch: int = 16,
             amp: bool = False) -> dict:
    """PSNR of the generator and of cubic (the base) per factor, and the mean gain (the selection metric);
    ``amp``: the generator runs under autocast (CUDA)."""
    generator.eval()
    forward = amp_call(generator, device, amp)
    sums: dict[int, list[float]] = {}
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        ctx = torch.from_numpy(np.stack([c["ctx"] for c in chunk])).to(device)
        base = torch.from_numpy(np.stack([c["base"] for c in chunk])).to(device)
        pos = torch.from_numpy(np.stack([c["pos"] for c in chunk])).to(device)
        tgt = torch.from_numpy(np.stack([c["target"] for c in chunk])).to(device)
        lin = torch.from_numpy(np.stack([c["linear"] for c in chunk])).to(device)
        x, (h, w) = pad_to_multiple(torch.cat([ctx, base, lin], 1), generator.multiple, -1.024)
        n = ctx.shape[1]
        pred = forward(x[:, :n], x[:, n:n + 1], pos, x[:, n + 1:])[..., :h, :w].clamp(-1.024, 3.071)
        for c, p, b, t, li in zip(chunk, pred, base, tgt, lin):
            s = sums.setdefault(c["k"], [0.0, 0.0, 0, 0.0])
            s[0] += float(((p - t) ** 2).mean())
            s[1] += float(((b.clamp(-1.024, 3.071) - t) ** 2).mean())
            s[2] += 1
            s[3] += float(((li.clamp(-1.024, 3.071) - t) ** 2).mean())
    generator.train()
    result = {}
    for k, (g, c, n, li) in sorted(sums.items()):
        result[f"k{k}_psnr_gan"] = psnr_hu(g / n)
        result[f"k{k}_psnr_cubic"] = psnr_hu(c / n)
        result[f"k{k}_psnr_linear"] = psnr_hu(li / n)
    gains = [result[f"k{k}_psnr_gan"] - result[f"k{k}_psnr_cubic"] for k in sums]
    result["gain_db"] = float(np.mean(gains)) if gains else 0.0
    return result



# ----------------------------------------------------------------------------- one step
def make_g_opt(gen: SculptorGenerator, config: dict, lr: float) -> torch.optim.Optimizer:
    """Adam (β1 0.5 as in pix2pix); the cubic/linear blend weights get ``blend_lr_mult``× the learning rate."""
    blend = [p for n, p in gen.named_parameters() if n.startswith("blend.")]
    rest = [p for n, p in gen.named_parameters() if not n.startswith("blend.")]
    mult = float(config["blend_lr_mult"])
    groups = [{"params": rest, "lr": lr, "lr_mult": 1.0}]
    if blend:
        groups.append({"params": blend, "lr": lr * mult, "lr_mult": mult})
    return torch.optim.Adam(groups, lr=lr, betas=(0.5, 0.999))


def make_recon_loss(config: dict):
    kind = config["recon_loss"]
    if kind == "l1":
        return F.l1_loss
    if kind == "mse":
        return F.mse_loss
    if kind == "l1+mse":
        w = float(config["mse_weight"])
        return lambda a, b: F.l1_loss(a, b) + w * F.mse_loss(a, b)
    raise SystemExit(f"unknown recon_loss {kind!r} (l1, mse, l1+mse)")


def make_d_opt(disc: PatchDiscriminator, config: dict) -> torch.optim.Optimizer:
    """Adam for the discriminator (β1 0.5 as in pix2pix) at ``d_lr``."""
    return torch.optim.Adam(disc.parameters(), lr=config["d_lr"], betas=(0.5, 0.999))


def gan_step(g_net: torch.nn.Module, d_net: torch.nn.Module, g_opt: torch.optim.Optimizer,
             d_opt: torch.optim.Optimizer, g_scaler: torch.amp.GradScaler, d_scaler: torch.amp.GradScaler,
             batch: Sequence[torch.Tensor], recon: Callable, adv_weight: float, info: DistInfo,
             amp: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Phase I step (Algorithm 1) on a device batch (ctx, pos, base, target, linear): the LSGAN
    discriminator step (skipped when ``adv_weight`` is 0: the warm-up), then the generator step on
    ``recon`` + ``adv_weight``·adversarial loss. The nets may be DDP-wrapped; the generator step calls the
    unwrapped discriminator (no gradient sync for D there). Returns the 0-dim (reconstruction,
    discriminator, generator) losses; the discriminator's is 0 without its step."""
    ctx, pos, base, target, linear = batch
    with autocast(info, amp):
        fake = g_net(ctx, base, pos, linear)
    d_loss = torch.zeros((), device=info.device)
    if adv_weight > 0:  # a. discriminator step (LSGAN), real and synthesized slices in one forward
        d_opt.zero_grad(set_to_none=True)
        with autocast(info, amp):
            d_real, d_fake = d_net(torch.cat([ctx, ctx]), torch.cat([target, fake.detach()])).chunk(2)
            d_loss = 0.5 * (((d_real.float() - 1) ** 2).mean() + (d_fake.float() ** 2).mean())
        scaled_step(d_loss, d_opt, d_scaler)
    # b. generator step: reconstruction + adversarial
    g_opt.zero_grad(set_to_none=True)
    with autocast(info, amp):
        r_loss = recon(fake.float(), target)
        loss = r_loss
        if adv_weight > 0:
            disc = unwrap(d_net)
            for p in disc.parameters():
                p.requires_grad_(False)
            adv = ((disc(ctx, fake).float() - 1) ** 2).mean()
            for p in disc.parameters():
                p.requires_grad_(True)
            loss = loss + adv_weight * adv
    scaled_step(loss, g_opt, g_scaler)
    return r_loss, d_loss, loss



class InterpTrainer:
    """Phase I in :func:`training.loop.run_epochs`: GAN epochs, validation (PSNR gain over cubic), best
    checkpoint, LR plateau on the gain, pruning once (at ``prune_epoch``, ``prune_time_fraction`` of the
    budget, early stop or near ``max_epochs``) then ``prune_finetune_epochs`` of fine-tuning."""

    def __init__(self, config: dict, args, info: DistInfo, log: Logger, sampler: SliceSampler,
                 rng: np.random.Generator, val_items: list[dict], n_train: int):
        self.config, self.info, self.log, self.run_dir = config, info, log, Path(args.out)
        self.sampler, self.rng, self.val_items = sampler, rng, val_items
        device = info.device
        self.gen, self.disc = build_models(config)
        self.gen.to(device)
        self.disc.to(device)
        self.g_opt = make_g_opt(self.gen, config, float(config["lr"]))
        self.d_opt = make_d_opt(self.disc, config)
        self.amp = bool(config["amp"])
        self.g_scaler, self.d_scaler = grad_scaler(info, self.amp), grad_scaler(info, self.amp)
        self.state = {"epoch": 0, "best": -float("inf"), "since_best": 0, "pruned": False, "prune_epoch": None,
                      "elapsed": 0.0, "lr": float(config["lr"])}
        self.sched = self._plateau()
        ckpt = load_checkpoint(self.run_dir / "last.pt", device) if args.resume else None
        if ckpt is not None:
            self._resume(ckpt, args.set)
        self.g_ddp, self.d_ddp = wrap_ddp(self.gen, info), wrap_ddp(self.disc, info)
        log(f"generator {count_parameters(self.gen)} parameters, discriminator {count_parameters(self.disc)}; "
            f"{n_train} training volumes, {len(val_items)} validation slices; device {device}, "
            f"world size {info.world_size}")
        self.clock = Clock(args.max_minutes or None, self.state["elapsed"])
        self.iters = max(1, int(config["iters_per_epoch"]) // info.world_size)
        self.bs, workers = int(config["batch_size"]), int(config["num_workers"])
        self.loader = seeded_loader(SeededDataset(sampler.draw, self.iters * self.bs * info.world_size,
                                                  int(config["seed"])),
                                    self.iters, self.bs, info, int(config["seed"]), workers) if workers > 0 else None
        self.recon = make_recon_loss(config)
        self.early = False

    def _plateau(self) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
        """LR × ``plateau_factor`` once ``plateau_patience`` validations in a row did not beat the best gain by 1e-4 dB."""
        return plateau_scheduler(self.g_opt, float(self.config["plateau_factor"]), int(self.config["plateau_patience"]),
                                 absolute=True)

    def _resume(self, ckpt: dict, overrides: list[str]) -> None:
        config, state = self.config, self.state
        if ckpt["state"]["pruned"]:
            apply_magnitude_pruning(self.gen, float(config["prune_sparsity"]))
            self.g_opt = make_g_opt(self.gen, config, float(config["lr"]))
        self.gen.load_state_dict(ckpt["generator"])
        self.disc.load_state_dict(ckpt["discriminator"])
        self.g_opt.load_state_dict(ckpt["g_opt"])
        self.d_opt.load_state_dict(ckpt["d_opt"])
        restore_scaler(self.g_scaler, ckpt.get("g_scaler"))  # absent in checkpoints written before AMP
        restore_scaler(self.d_scaler, ckpt.get("d_scaler"))
        state.update(ckpt["state"])
        self.sched = self._plateau()
        restore_plateau(self.sched, ckpt.get("scheduler"), state)  # older runs: state["plateau"/"plateau_best"]
        asked = override_keys(overrides)  # --set lr=X / d_lr=X on a resume: train at X from now on
        if "lr" in asked:
            state["lr"] = float(config["lr"])
            set_lr(self.g_opt, state["lr"])
        if "d_lr" in asked:
            set_lr(self.d_opt, float(config["d_lr"]))
        ranks = ckpt.get("rng_ranks") or [{"rng": ckpt["rng"], "np_generator": ckpt["np_generator"]}]  # older runs
        # each rank's slice-sampler state rides along as the "extra" ("np_generator" in older checkpoints)
        extra = restore_rng_states([{"rng": r["rng"], "extra": r.get("extra", r.get("np_generator"))} for r in ranks],
                                   self.info)
        if extra is not None:
            self.rng.bit_generator.state = json.loads(extra)
        self.log(f"resumed from {self.run_dir / 'last.pt'} at epoch {state['epoch']}")

    def save(self, name: str) -> None:
        state, info = self.state, self.info
        if name == "best":
            record = {"generator": unwrap(self.g_ddp).state_dict(), "epoch": state["epoch"], "val": self.val,
                      "pruned": state["pruned"]}
        else:
            record = {"generator": unwrap(self.g_ddp).state_dict(), "discriminator": unwrap(self.d_ddp).state_dict(),
                      "g_opt": self.g_opt.state_dict(), "d_opt": self.d_opt.state_dict(), "state": state,
                      "g_scaler": self.g_scaler.state_dict(), "d_scaler": self.d_scaler.state_dict(),
                      "scheduler": self.sched.state_dict(),
                      "rng_ranks": gather_rng_states(info, extra=json.dumps(self.rng.bit_generator.state))}
        save_checkpoint(self.run_dir / f"{name}.pt", record, info)

    def train_epoch(self) -> None:
        config, epoch, info = self.config, self.state["epoch"], self.info
        use_adv = config["adv_weight"] > 0 and epoch >= int(config["adv_start_epoch"])
        adv_weight = config["adv_weight"] if use_adv else 0.0
        totals = np.zeros(3)
        # in-process: one stream continued across epochs (saved per rank); workers: a stream per epoch
        batches = epoch_batches(self.loader, epoch) if self.loader else iter(lambda: self.sampler.batch(self.bs), None)
        for _ in range(self.iters):
            batch = [t.to(info.device, non_blocking=True) for t in next(batches)]
            losses = gan_step(self.g_ddp, self.d_ddp, self.g_opt, self.d_opt, self.g_scaler, self.d_scaler, batch,
                              self.recon, adv_weight, info, self.amp)
            totals += [value.item() for value in losses]
        del batches  # DataLoader workers of this epoch end here
        self.totals = totals / self.iters

    def end_epoch(self) -> None:
        config, state, info = self.config, self.state, self.info
        epoch = state["epoch"]
        state["elapsed"] = broadcast_object(self.clock.elapsed(), info)  # DDP: one clock, same decisions
        recon_mean = mean_across_ranks(self.totals[0], info)
        val = validate(unwrap(self.g_ddp), self.val_items, info.device, amp=self.amp) \
            if epoch % int(config["val_every"]) == 0 else None
        self.val = val = broadcast_object(val, info)  # DDP: BatchNorm statistics differ per rank; rank 0's metrics decide
        msg = f"epoch {epoch} recon {recon_mean:.5f} d {self.totals[1]:.4f} lr {state['lr']:.2e}"
        if val:
            msg += " | " + " ".join(f"{k} {v:.3f}" for k, v in val.items())
            if val["gain_db"] > state["best"]:
                state.update(best=val["gain_db"], since_best=0)
                self.save("best")
                msg += " *"
            else:
                state["since_best"] += 1
            self.sched.step(val["gain_db"])
            state["lr"] = self.g_opt.param_groups[0]["lr"]
            set_lr(self.g_opt, state["lr"])  # the blend group stays at its multiple of the base LR
        self.log(msg)
        # pruning (once), then fine-tuning
        early = state["since_best"] >= int(config["early_stop"])
        timed = state["elapsed"] > float(config["prune_time_fraction"]) * (self.clock.budget or math.inf)
        if not state["pruned"] and config["prune_sparsity"] > 0 and (
                epoch == int(config["prune_epoch"]) or early or timed
                or epoch >= int(config["max_epochs"]) - int(config["prune_finetune_epochs"])):
            apply_magnitude_pruning(unwrap(self.g_ddp), float(config["prune_sparsity"]))
            self.g_opt = make_g_opt(self.gen, config, state["lr"])
            self.sched = self._plateau()  # a fresh plateau count for the fine-tuning
            self.g_ddp = wrap_ddp(self.gen, info)
            state.update(pruned=True, prune_epoch=epoch, best=-float("inf"), since_best=0)
            self.log(f"pruned generator to {config['prune_sparsity']:.0%} WP-block sparsity: {sparsity_report(self.gen)}; "
                     f"fine-tuning (best checkpoint now chosen among pruned ones)")
        elif early:
            self.early = True

    def stop_rules(self) -> list:
        state, finetune = self.state, int(self.config["prune_finetune_epochs"])
        return [("pruned and fine-tuned", lambda: state["pruned"] and state["prune_epoch"] is not None
                 and state["epoch"] - state["prune_epoch"] >= finetune),
                ("early_stop", lambda: self.early), ("max_minutes", lambda: self.clock.out_of_time(self.info))]


def parse_args(argv=None):
    p = make_parser(__doc__.split("\n\n")[0], out_default=str(ROOT / "training" / "runs" / "interpolation"))
    p.add_argument("--export", default=None, metavar="DIR", help="export the best generator here at the end")
    p.add_argument("--export-only", action="store_true", help="only export RUN_DIR/best.pt to --export")
    return p.parse_args(argv)


def _export_only(args, config: dict, command: str) -> int:
    if not args.export:
        raise SystemExit("--export-only needs --export DIR")
    run_dir, saved = Path(args.out), Path(args.out) / "run.json"
    record = json.loads(saved.read_text(encoding="utf-8")) if saved.is_file() else {}
    train_cmd = (run_dir / "command.txt").read_text(encoding="utf-8").strip() if (run_dir / "command.txt").is_file() else None
    card = export_best_generator(run_dir, config, Path(args.export), lambda best: {
        "command": train_cmd, "export_command": command, "best_epoch": best.get("epoch"), "pruned": best.get("pruned"),
        "validation": best.get("val"), "git_revision": record.get("git_revision"), "data": record.get("data")})
    print(f"exported {card}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    run_dir = Path(args.out)
    config = resolve_config(DEFAULTS, args, args.resume or args.export_only)
    command = "python -m training.train_interpolation " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    if args.export_only:
        return _export_only(args, config, command)

    torch.set_num_threads(int(config["threads"]))
    info: DistInfo = init_distributed(config["device"])
    seed_everything(int(config["seed"]) + info.rank)
    rng = np.random.default_rng(int(config["seed"]) + 7919 * info.rank)
    log = Logger(run_dir, info)
    train_vols = load_volumes(config["data"]) + make_phantoms(config)
    val_vols = validation_volumes(config)
    sampler = SliceSampler(train_vols, config, rng)
    val_items = build_val_set(val_vols, list(config["val_factors"]), int(config["n_side"]))
    start_run(run_dir, config, [v["name"] for v in train_vols] + ["val:" + v["name"] for v in val_vols], info, command)
    trainer = InterpTrainer(config, args, info, log, sampler, rng, val_items, len(train_vols))
    state = trainer.state
    stop_reason = run_epochs(trainer, state, int(config["max_epochs"]), info)
    log(f"stopped: {stop_reason} after {state['epoch']} epochs, {state['elapsed'] / 60:.1f} min; best gain "
        f"{state['best']:.3f} dB")
    if args.export and info.is_main and (run_dir / "best.pt").is_file():
        card = export_best_generator(run_dir, config, Path(args.export), lambda best: {
            "command": command, "best_epoch": best["epoch"], "validation": best["val"],
            "data": [v["name"] for v in train_vols], "val_data": [v["name"] for v in val_vols]})
        log(f"exported {card}")
    cleanup_distributed(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
