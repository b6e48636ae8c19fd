"""The networks the trainers build from their configs (shared by training, export and the benchmark)."""
from __future__ import annotations

import torch

from SculptorGANLib.nn.gan import PatchDiscriminator, SculptorGenerator


def build_models(config: dict) -> tuple[SculptorGenerator, PatchDiscriminator]:
    """Phase I: the generator and the patch discriminator of an interpolation config."""
    gen = SculptorGenerator(n_side=config["n_side"], base_channels=config["base_channels"], levels=config["levels"],
                            pos_scale_mm=config["pos_scale_mm"], residual_scale=config["residual_scale"],
                            use_linear=config["use_linear"])
    disc = PatchDiscriminator(n_side=config["n_side"], channels=config["d_channels"], layers=config["d_layers"])
    return gen, disc


def arch_args(config: dict) -> dict:
    """Phase II: the segmentation network's constructor arguments (as the model card records them)."""
    return {"in_channels": 1, "out_channels": 3, "features": list(config["features"]), "dims": config["dims"]}


def build(config: dict) -> torch.nn.Module:
    """Phase II: the segmentation network of a segmentation config."""
    from SculptorGANLib.nn.wpunet import build_model

    return build_model(config["architecture"], arch_args(config))
