"""Train the WP-UNet kidney/tumor segmentation network (Phase II), resumable and torchrun-ready.

Data (``data_mode``):
  * ``synthetic`` – cached cases from ``python -m SculptorGANLib.synthetic.prepare`` (``data``: a folder of
    ``.npz``): tissue layouts around real KiTS19 masks, rendered to CT-like HU on the fly with
    randomized intensities (domain randomization), plus phantom/real image cases;
  * ``images`` – a KiTS19 folder (``case_*/imaging.nii.gz`` + ``segmentation.nii.gz``) or two folders
    ``images/`` and ``labels/`` with matching file names (``data``: the root folder). Preprocessed once
    (canonical grid, windowed) into ``cache_dir`` (default ``<data>/.sculptorgan_cache``, or
    ``<out>/cache`` when the data folder is read-only) and memory-mapped (``training/cache.py``).

Loading: ``num_workers`` > 0 draws and augments patches in DataLoader worker processes (item i of epoch e
from the seed (seed, e, i), ``training/loading.py``); ``images`` always goes through a DataLoader;
``synthetic`` with 0 workers draws in the training process as before. ``amp`` (default true) trains
and validates under autocast with a GradScaler on CUDA; a no-op on CPU.

Patches are sampled with foreground oversampling; augmentation uses MONAI transforms (rotation,
scaling, elastic deformation, mirroring, contrast/gamma, intensity scale/shift, noise). Loss is
α·Dice + (1−α)·CE; Adam with LR ×0.2 on a plateau and early stopping; magnitude pruning of the WP
blocks' depthwise/pointwise weights ramps up to ``sparsity`` and is followed by fine-tuning.

    python -m training.train_segmentation --config training/configs/segmentation_synth_cpu.json \
        --out training/runs/seg --max-minutes 50
    python -m training.train_segmentation --out training/runs/seg --resume          # continue
    python -m training.train_segmentation --out training/runs/seg --export Resources/Models \
        --set name=wpunet_kidney                                                        # model card + weights
    torchrun --nproc_per_node 2 -m training.train_segmentation --config ...            # DDP

Parts: this file holds the step (``seg_step``), validation and the trainer's hooks (:class:`SegTrainer`);
the data are ``training/seg_data.py`` (patches: ``training/cache.py``), the network ``training/models.py``,
the export ``training/export.py``, and the command line, run folder, LR plateau and epoch loop
``training/loop.py``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from SculptorGANLib.nn.pruning import apply_magnitude_pruning, sparsity_report
from training.common import (DistInfo, Logger, amp_call, autocast, broadcast_object, cleanup_distributed, grad_scaler,
                             init_distributed, load_checkpoint, mean_across_ranks, override_keys, restore_scaler,
                             rng_state, save_checkpoint, scaled_step, seed_everything, set_rng_state, unwrap, wrap_ddp)
from training.export import checkpoint_validation, export
from training.loop import Clock, make_parser, plateau_scheduler, resolve_config, run_epochs, set_lr, start_run
from training.models import arch_args, build
from training.seg_data import (CaseStore, PatchSampler, batch_stream, find_image_cases, load_stores, split_names,
                               validation_volumes)

__all__ = ["DEFAULTS", "main", "seg_step", "make_loss", "input_layout", "build", "arch_args", "validate",
           "target_sparsity", "plain_state", "checkpoint_validation", "export", "CaseStore", "PatchSampler",
           "batch_stream", "find_image_cases", "split_names", "validation_volumes"]

DEFAULTS: dict = {
    # data
    "data_mode": "synthetic", "data": "training/cache/synth3mm", "val_cases": [], "val_fraction": 0.1,
    "test_cases": [], "spacing": [3.0, 3.0, 3.0], "window": [-200.0, 400.0],
    # model
    "architecture": "wpunet", "features": [16, 32, 64, 128], "dims": 3,
    # optimisation (the paper's defaults)
    "lr": 3e-4, "batch_size": 8, "patch": [48, 192, 192], "iters_per_epoch": 250, "max_epochs": 1000,
    "plateau_patience": 30, "plateau_factor": 0.2, "early_stop": 50, "alpha": 0.5, "fg_prob": 0.67,
    # pruning
    "sparsity": 0.5, "prune_start": 2000, "prune_every": 250, "prune_steps": 4,
    # augmentation
    "aug_rotate_deg": 15.0, "aug_scale": 0.15, "aug_elastic_prob": 0.1, "aug_flip_prob": 0.5,
    "aug_gamma_prob": 0.3, "aug_contrast_prob": 0.3, "aug_noise_prob": 0.2, "synth_random_prob": 0.15, "case_weights": {},
    # inference/validation
    "roi": [96, 128, 128], "val_every_epochs": 1, "val_max_cases": 8,
    # bookkeeping
    "seed": 0, "threads": 1, "device": "auto", "num_workers": 0, "name": "wpunet_kidney", "version": "1",
    "checkpoint_minutes": 5.0,
    "amp": True,                    # mixed precision on CUDA (no-op on CPU)
    "cache_dir": "",                # data_mode images: preprocessed cases ("" = <data>/.sculptorgan_cache)
    "init_weights": "",             # a new run starts from these weights (model card or .safetensors): fine-tuning
}



def validate(model: torch.nn.Module, vols, config: dict, device: torch.device) -> dict:
    """Kidney (foreground) and tumor Dice on the validation volumes; score 0.7·kidney + 0.3·tumor
    (tumor Dice over the volumes that have tumor; an empty prediction of an empty mask scores 1)."""
    from SculptorGANLib.measure.metrics import overlap_metrics
    from SculptorGANLib.segment.inference import sliding_window_probabilities

    model.eval()
    kid, tum = [], []
    forward = amp_call(model, device, config.get("amp", True))  # autocast on CUDA, float32 outputs
    for image, labels, _ in vols:
        pred = sliding_window_probabilities(forward, image, config["roi"], device, amp=False).argmax(0)
        kid.append(overlap_metrics(pred > 0, labels > 0)["dice"])
        if (labels == 2).any():
            tum.append(overlap_metrics(pred == 2, labels == 2)["dice"])
    model.train()
    k = float(np.mean(kid)) if kid else 0.0
    t = float(np.mean(tum)) if tum else 0.0
    return {"kidney_dice": k, "tumor_dice": t, "score": 0.7 * k + 0.3 * t}


# ----------------------------------------------------------------------------- one step
def make_loss(config: dict) -> torch.nn.Module:
    """α·Dice + (1−α)·CE over the whole batch, on logits and class-index labels."""
    from monai.losses import DiceCELoss

    alpha = float(config["alpha"])
    return DiceCELoss(to_onehot_y=True, softmax=True, batch=True, lambda_dice=alpha, lambda_ce=1 - alpha)


def input_layout(config: dict) -> torch.memory_format:
    """Memory format of the training inputs: channels-last(-3d)."""
    return torch.channels_last_3d if int(config["dims"]) == 3 else torch.channels_last


def seg_step(net: torch.nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
             loss_fn: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, info: DistInfo, amp: bool) -> torch.Tensor:
    """One Phase II step: forward of ``net`` (may be DDP-wrapped) under autocast, ``loss_fn`` in float32,
    backward and optimizer step through ``scaler``. ``x`` and ``y`` on the device, ``x`` in
    :func:`input_layout`. Returns the 0-dim loss."""
    with autocast(info, amp):
        loss = loss_fn(net(x).float(), y)
    opt.zero_grad(set_to_none=True)
    scaled_step(loss, opt, scaler)
    return loss


def target_sparsity(iteration: int, config: dict) -> float:
    """Gradual schedule: 0 before ``prune_start``, then ``prune_steps`` equal steps to ``sparsity``."""
    if config["sparsity"] <= 0 or iteration < config["prune_start"]:
        return 0.0
    step = min(config["prune_steps"], 1 + (iteration - config["prune_start"]) // max(1, config["prune_every"]))
    return config["sparsity"] * step / config["prune_steps"]


def plain_state(model: torch.nn.Module) -> dict:
    """The state dict with pruning masks folded in (plain tensor names)."""
    raw = unwrap(model).state_dict()
    out = {}
    for key, value in raw.items():
        if key.endswith("_mask"):
            continue
        if key.endswith("_orig"):
            base = key[: -len("_orig")]
            out[base] = (value * raw[base + "_mask"]).detach().cpu().clone()
        else:
            out[key] = value.detach().cpu().clone()
    return out




class SegTrainer:
    """Phase II in :func:`training.loop.run_epochs`: WP-UNet, Adam with LR plateau, gradual pruning
    (per iteration), ``--max-minutes``/``--max-iters`` also inside an epoch, a ``last`` checkpoint every
    ``checkpoint_minutes``, ``best`` among checkpoints at the final sparsity."""

    def __init__(self, config: dict, args, info: DistInfo, log: Logger, train_store: CaseStore,
                 val_store: CaseStore):
        self.config, self.info, self.log, self.run_dir = config, info, log, Path(args.out)
        self.max_iters = args.max_iters
        self.model = build(config).to(info.device)
        self.loss_fn = make_loss(config)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=float(config["lr"]))
        self.sched = self._plateau()
        self.amp = bool(config["amp"])
        self.scaler = grad_scaler(info, self.amp)
        self.state = {"iteration": 0, "epoch": 0, "best": -1.0, "best_epoch": 0, "best_metrics": {}, "sparsity": 0.0,
                      "best_sparsity": 0.0, "history": []}
        ckpt = load_checkpoint(self.run_dir / "last.pt", info.device) if args.resume else None
        if ckpt is not None:
            self._resume(ckpt, args.set)
        elif config.get("init_weights"):
            self._init_from(config["init_weights"])
        self.ddp = wrap_ddp(self.model, info)
        self.batches_of = batch_stream(config, train_store, info)
        self.val_vols = validation_volumes(val_store, config) if info.is_main else []
        self.clock = Clock(args.max_minutes)
        self.last_ckpt = self.clock.start
        self.fmt = input_layout(config)
        self.losses: list[float] = []
        self.ddp.train()

    def _plateau(self) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
        return plateau_scheduler(self.opt, float(self.config["plateau_factor"]), int(self.config["plateau_patience"]))

    def _resume(self, ckpt: dict, overrides: list[str]) -> None:
        config = self.config
        self.model.load_state_dict(ckpt["model"])
        if ckpt["sparsity"] > 0:
            apply_magnitude_pruning(self.model, ckpt["sparsity"])  # zeros are the smallest magnitudes: same masks
        self.opt = torch.optim.Adam(self.model.parameters(), lr=float(config["lr"]))
        self.opt.load_state_dict(ckpt["optimizer"])
        if "lr" in override_keys(overrides) or float(ckpt.get("config", {}).get("lr", config["lr"])) != float(config["lr"]):
            # --set lr=X on a resume means "train at X from now on", also when X is the run's starting LR
            # and the plateau rule has lowered it since
            set_lr(self.opt, float(config["lr"]))
        self.sched = self._plateau()  # bound to the optimizer that is stepped from now on
        self.sched.load_state_dict(ckpt["scheduler"])
        restore_scaler(self.scaler, ckpt.get("scaler"))  # absent in checkpoints written before AMP
        self.state.update({k: ckpt[k] for k in self.state if k in ckpt})
        if "rng" in ckpt:
            set_rng_state(ckpt["rng"])
        self.log(f"resumed at iteration {self.state['iteration']} (epoch {self.state['epoch']}, "
                 f"sparsity {self.state['sparsity']:.2f})")

    def _init_from(self, path: str) -> None:
        """Fine-tune: weights from a model card; weights already pruned to ``sparsity`` keep their zeros
        (pruning applied at once, not ramped in again)."""
        from SculptorGANLib.nn.cards import load_card, load_into

        card = load_card(path)
        load_into(self.model, card)
        self.model.train()
        report = sparsity_report(self.model)
        sparsity = float(self.config["sparsity"])
        if sparsity > 0 and report["wp_sparsity"] >= sparsity - 0.01:
            apply_magnitude_pruning(self.model, sparsity)  # the zeros are the smallest magnitudes: same masks
            self.state["sparsity"] = self.state["best_sparsity"] = sparsity
        self.log(f"initialised from {card.path} (version {card.version}): {report}")

    def save(self, name: str) -> None:
        record = {"model": plain_state(self.model), "optimizer": self.opt.state_dict(),
                  "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(), "config": self.config,
                  "rng": rng_state(), **self.state}
        save_checkpoint(self.run_dir / f"{name}.pt", record, self.info)
        if name == "last":
            self.last_ckpt = time.time()

    def train_epoch(self) -> None:
        config, state, info = self.config, self.state, self.info
        self.losses, self.t_epoch = [], time.time()
        # patch streams per epoch: a run resumed at an epoch boundary continues exactly, per rank
        batches = self.batches_of(state["epoch"])
        for _ in range(int(config["iters_per_epoch"])):
            s = target_sparsity(state["iteration"], config)
            if s > state["sparsity"] + 1e-9:
                # pruning keeps the same Parameter objects (renamed weight_orig): the optimizer stays valid
                apply_magnitude_pruning(self.model, s)
                state["sparsity"] = s
                self.log(f"pruned WP-block weights to {s:.0%} sparsity: {sparsity_report(self.model)}")
            x, y = next(batches)
            x = x.to(info.device, non_blocking=True).contiguous(memory_format=self.fmt)
            y = y.to(info.device, non_blocking=True)
            self.losses.append(seg_step(self.ddp, self.opt, self.scaler, self.loss_fn, x, y, info, self.amp).item())
            state["iteration"] += 1
            if self.clock.out_of_time(info) or self._iters_done():  # DDP: all ranks stop together
                break
            if time.time() - self.last_ckpt > 60 * config["checkpoint_minutes"]:
                self.save("last")
        del batches  # DataLoader workers of this epoch end here

    def end_epoch(self) -> None:
        config, state, info = self.config, self.state, self.info
        mean_loss = mean_across_ranks(float(np.mean(self.losses)) if self.losses else float("nan"), info)
        entry = {"epoch": state["epoch"], "iteration": state["iteration"], "loss": mean_loss,
                 "lr": self.opt.param_groups[0]["lr"], "seconds": round(time.time() - self.t_epoch, 1),
                 "sparsity": state["sparsity"]}
        if info.is_main and self.val_vols and state["epoch"] % int(config["val_every_epochs"]) == 0:
            metrics = validate(self.model, self.val_vols, config, info.device)
            entry.update(metrics)
            # only checkpoints at the final sparsity count as "best" once pruning has begun
            eligible = state["sparsity"] >= config["sparsity"] - 1e-9 or target_sparsity(state["iteration"], config) == 0
            improved = metrics["score"] > state["best"] or state["best_sparsity"] < state["sparsity"]
            if eligible and improved:
                state.update(best=metrics["score"], best_epoch=state["epoch"], best_metrics=metrics,
                             best_sparsity=state["sparsity"])
                self.save("best")
        # DDP: only rank 0 validated; every rank takes its metrics and best-so-far, so the LR schedule and
        # early stopping decide the same everywhere (an average with the other ranks' stale values did not)
        entry, best = broadcast_object((entry, {k: state[k] for k in ("best", "best_epoch", "best_metrics",
                                                                      "best_sparsity")}), info)
        state.update(best)
        self.sched.step(entry.get("score", state["best"]))
        state["history"].append(entry)
        self.log(json.dumps(entry))

    def _iters_done(self) -> bool:
        return self.max_iters is not None and self.state["iteration"] >= self.max_iters

    def stop_rules(self) -> list:
        state = self.state
        return [("max_minutes", lambda: self.clock.out_of_time(self.info)), ("max_iters", self._iters_done),
                ("early_stop", lambda: state["epoch"] - state["best_epoch"] >= int(self.config["early_stop"])
                 and state["best"] >= 0)]


def _export(args, config: dict) -> dict:
    extra = None
    if args.card_extra:
        try:
            extra = json.loads(args.card_extra.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SystemExit(f"{args.card_extra}: cannot read the card-extra JSON ({exc})") from None
    path = export(args.out, args.export, config, args.export_which, extra)
    print(f"exported {path}")
    return {"card": str(path)}


def main(argv: list[str] | None = None) -> dict:
    ap = make_parser(__doc__, raw=True)
    ap.add_argument("--max-iters", type=int, default=None, help="stop after this many iterations in total")
    ap.add_argument("--export", type=Path, default=None, help="export OUT's best checkpoint to this folder and exit")
    ap.add_argument("--export-which", default="best", choices=("best", "last"))
    ap.add_argument("--card-extra", type=Path, default=None,
                    help="JSON file merged into the exported model card (data description, license, metrics)")
    args = ap.parse_args(argv)
    config = resolve_config(DEFAULTS, args, args.resume)
    if args.export:
        return _export(args, config)

    torch.set_num_threads(int(config["threads"]))
    info = init_distributed(config["device"])
    log = Logger(args.out, info)
    seed_everything(int(config["seed"]) + info.rank)
    train_store, val_store = load_stores(config, args.out, info, log)
    start_run(args.out, config, train_store.names + ["VAL:" + n for n in val_store.names], info)
    log(f"{len(train_store.names)} training and {len(val_store.names)} validation cases; world size {info.world_size}")
    trainer = SegTrainer(config, args, info, log, train_store, val_store)
    state = trainer.state
    stop_reason = run_epochs(trainer, state, config["max_epochs"], info)
    log(f"stopped ({stop_reason}) at iteration {state['iteration']}, best score {state['best']:.4f} at epoch {state['best_epoch']}")
    cleanup_distributed(info)
    return {"state": state, "stop_reason": stop_reason, "run_dir": str(args.out)}


if __name__ == "__main__":
    main()
