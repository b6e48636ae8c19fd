"""Magnitude weight pruning of depthwise and pointwise convolutions (the WP in WP-UNet).

Pruning is applied with ``torch.nn.utils.prune`` (global L1 magnitude) during training and made
permanent with :func:`make_permanent` before export, so shipped weights are plain tensors with zeros.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune

from .blocks import WPBlock


def prunable_parameters(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, 'weight') for every depthwise and pointwise convolution inside WP blocks."""
    params = []
    for module in model.modules():
        if isinstance(module, WPBlock):
            params += [(module.depthwise, "weight"), (module.pointwise, "weight")]
    return params


def apply_magnitude_pruning(model: nn.Module, sparsity: float) -> None:
    """Zero the smallest-magnitude fraction ``sparsity`` (0–1) of all WP-block weights, globally."""
    if not 0 <= sparsity < 1:
        raise ValueError("sparsity must be in [0, 1)")
    params = prunable_parameters(model)
    if params and sparsity > 0:
        make_permanent(model)
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=sparsity)


def make_permanent(model: nn.Module) -> None:
    """Fold pruning masks into the weights (removes the reparametrisation)."""
    for module in model.modules():
        if prune.is_pruned(module) and hasattr(module, "weight_mask"):
            prune.remove(module, "weight")


def sparsity_report(model: nn.Module) -> dict[str, float]:
    """Total parameters, non-zero parameters and the sparsity of the prunable WP-block weights."""
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    prunable = [getattr(m, n) for m, n in prunable_parameters(model)]
    pr_total = sum(w.numel() for w in prunable)
    pr_zero = sum(int((w == 0).sum()) for w in prunable)
    return {"parameters": total, "nonzero_parameters": nonzero,
            "wp_sparsity": pr_zero / pr_total if pr_total else 0.0}
