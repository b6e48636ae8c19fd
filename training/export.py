"""Exporting trained weights: float16 safetensors + model card (``SculptorGANLib.nn.cards``).

* :func:`export_generator` — Phase I generator (pruning made permanent);
* :func:`export` — Phase II: a run's best (or last) checkpoint; :func:`checkpoint_validation` — the
  validation metrics that belong to a checkpoint's own weights.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch

from SculptorGANLib.nn.cards import ModelCard, save_model
from SculptorGANLib.nn.gan import GENERATOR_ARCH
from SculptorGANLib.nn.pruning import apply_magnitude_pruning, make_permanent, sparsity_report
from training.common import load_checkpoint
from training.models import arch_args, build_models


def export_generator(state: dict, config: dict, out_dir: Path, extra_training: dict | None = None,
                     metrics: dict | None = None) -> Path:
    """Pruning made permanent, float16 safetensors + model card in ``out_dir``; returns the card path."""
    gen = build_models(config)[0]
    if any(k.endswith("weight_orig") for k in state):
        apply_magnitude_pruning(gen, 0.1)  # create the reparametrisation, then load masks + weights
    gen.load_state_dict(state)
    make_permanent(gen)
    report = sparsity_report(gen)
    card = ModelCard(
        name=config["model_name"], task="interpolation", architecture=GENERATOR_ARCH,
        arch_args={k: config[k] for k in ("n_side", "base_channels", "levels", "pos_scale_mm", "residual_scale",
                                          "use_linear")},
        preprocessing={"hu_clip": [-1024, 3071], "scale": "HU/1000", "base": "cubic B-spline along z",
                       "output": "base + residual", "max_gap_mm": config["max_gap_mm"],
                       "min_gap_mm": config["min_gap_mm"],
                       "context": f"{config['n_side']} acquired slices each side + distances in mm"},
        training={**(extra_training or {}), "data_notes": config.get("data_notes", ""), "config": config, "parameters": report["parameters"],
                  "nonzero_parameters": report["nonzero_parameters"], "wp_sparsity": round(report["wp_sparsity"], 4)},
        metrics=metrics or {}, license="Apache-2.0", version=str(config["model_version"]))
    return save_model(gen.state_dict(), card, out_dir, half=True)


def export_best_generator(run_dir: Path, config: dict, out_dir: Path, training: Callable[[dict], dict]) -> Path:
    """:func:`export_generator` of ``run_dir/best.pt``; ``training(best)`` gives the card's training entries."""
    best = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
    return export_generator(best["generator"], config, out_dir, training(best), None)


def checkpoint_validation(ckpt: dict) -> dict:
    """The validation metrics of the weights in ``ckpt`` (the best-so-far ones only when it holds them)."""
    if ckpt.get("best_metrics") and ckpt.get("best_epoch") == ckpt.get("epoch"):
        return dict(ckpt["best_metrics"])
    entry = next((h for h in reversed(ckpt.get("history", [])) if h.get("iteration") == ckpt.get("iteration")), {})
    return {k: entry[k] for k in ("kidney_dice", "tumor_dice", "score") if k in entry}


def export(run_dir: Path, out_dir: Path, config: dict, which: str = "best", extra_card: dict | None = None) -> Path:
    """Write the run's best (or last) weights as safetensors + model card into ``out_dir``."""
    from SculptorGANLib.nn.baselines import model_cost
    from SculptorGANLib.nn.wpunet import build_model

    ckpt = load_checkpoint(run_dir / f"{which}.pt", torch.device("cpu")) or load_checkpoint(run_dir / "last.pt", torch.device("cpu"))
    if ckpt is None:
        raise SystemExit(f"{run_dir}: no checkpoint to export")
    validation = checkpoint_validation(ckpt)
    cfg = dict(ckpt.get("config", config))
    model = build_model(cfg["architecture"], arch_args(cfg), fast_layout=False)
    model.load_state_dict(ckpt["model"])
    report = sparsity_report(model)
    cost = model_cost(model, (1, 1, *cfg["roi"]))
    card = ModelCard(
        name=config.get("name", cfg["name"]), task="segmentation", architecture=cfg["architecture"],
        arch_args=arch_args(cfg),
        preprocessing={"spacing": list(cfg["spacing"]), "window": list(cfg["window"]), "roi": list(cfg["roi"]),
                       "orientation": "canonical LPS (identity direction)", "normalization": "clip to window, map to [-1, 1]"},
        classes={"0": "background", "1": "kidney", "2": "tumor"},
        training={"data_mode": cfg["data_mode"], "data": cfg["data"], "iterations": ckpt["iteration"],
                  "epochs": ckpt["epoch"], "config": cfg, "command": " ".join(sys.argv)},
        metrics={"validation": validation, "sparsity": report,
                 "flops_per_roi": cost["flops"]},
        version=str(config.get("version", cfg.get("version", "1"))),
    )
    if extra_card:
        for key, value in extra_card.items():
            if isinstance(value, dict) and isinstance(getattr(card, key), dict):
                getattr(card, key).update(value)
            else:
                setattr(card, key, value)
    return save_model(ckpt["model"], card, out_dir, half=True)

