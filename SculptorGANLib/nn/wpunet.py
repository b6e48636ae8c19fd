"""WP-UNet (weight-pruning U-Net) for 2D slices or 3D volumes.

Architecture (seed paper Section III.B / Algorithm 2, and Rao et al. 2022): a dense convolution stem,
then an encoder of weight-pruning (WP) blocks -- depthwise conv → BN → ReLU → pointwise conv → BN →
ReLU -- separated by max-pooling, a decoder of transposed convolutions with skip connections and WP
blocks, and a 1×1 classifier giving per-voxel logits (softmax over background / kidney / tumor).
The depthwise and pointwise weights are the ones magnitude-pruned (:mod:`SculptorGANLib.nn.pruning`).
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import ConvBNReLU, WPBlock, WPStage, conv_cls, pool_cls, to_fast_layout, up_cls

ARCHITECTURE = "wpunet"


class WPUNet(nn.Module):
    """U-Net of WP blocks; input sizes must be divisible by ``2 ** (len(features) - 1)``."""

    def __init__(self, in_channels: int = 1, out_channels: int = 3, features: tuple[int, ...] = (16, 32, 64, 128),
                 dims: int = 3):
        super().__init__()
        if dims not in (2, 3):
            raise ValueError("dims must be 2 or 3")
        if len(features) < 2:
            raise ValueError("need at least two resolution levels")
        self.dims, self.features = dims, tuple(int(f) for f in features)
        self.in_channels, self.out_channels = in_channels, out_channels
        f = self.features
        self.stem = nn.Sequential(ConvBNReLU(in_channels, f[0], dims), WPBlock(f[0], f[0], dims))
        self.pool = pool_cls(dims)(2)
        self.encoder = nn.ModuleList(WPStage(f[i - 1], f[i], dims) for i in range(1, len(f)))
        self.up = nn.ModuleList(up_cls(dims)(f[i], f[i - 1], 2, stride=2) for i in range(len(f) - 1, 0, -1))
        self.decoder = nn.ModuleList(WPStage(2 * f[i - 1], f[i - 1], dims) for i in range(len(f) - 1, 0, -1))
        self.head = conv_cls(dims)(f[0], out_channels, 1)

    @property
    def divisor(self) -> int:
        return 2 ** (len(self.features) - 1)

    def arch_args(self) -> dict:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "features": list(self.features), "dims": self.dims}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(x)]
        for stage in self.encoder:
            skips.append(stage(self.pool(skips[-1])))
        x = skips.pop()
        for up, stage in zip(self.up, self.decoder):
            x = stage(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


def build_model(architecture: str, arch_args: dict, fast_layout: bool = True) -> nn.Module:
    """A segmentation network by name: 'wpunet' or the baseline 'monai_unet'."""
    if architecture == ARCHITECTURE:
        args = dict(arch_args)
        if "features" in args:
            args["features"] = tuple(args["features"])
        model = WPUNet(**args)
        dims = model.dims
    elif architecture == "monai_unet":
        from .baselines import monai_unet

        model = monai_unet(**arch_args)
        dims = int(arch_args.get("dims", 3))
    else:
        raise ValueError(f"unknown segmentation architecture {architecture!r}")
    return to_fast_layout(model, dims) if fast_layout else model


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm that follows a convolution into it (eval mode only; ~25% faster on CPU).

    Zeros left by pruning stay zero (BN folding scales whole output channels).
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if model.training:
        raise ValueError("fuse_for_inference needs a model in eval mode")
    for module in model.modules():
        if isinstance(module, WPBlock):
            module.depthwise = fuse_conv_bn_eval(module.depthwise, module.bn1)
            module.bn1 = nn.Identity()
            module.pointwise = fuse_conv_bn_eval(module.pointwise, module.bn2)
            module.bn2 = nn.Identity()
        elif isinstance(module, ConvBNReLU):
            module[0] = fuse_conv_bn_eval(module[0], module[1])
            module[1] = nn.Identity()
    return model
