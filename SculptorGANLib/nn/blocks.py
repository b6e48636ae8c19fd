"""Building blocks shared by the WP-UNet and the SculptorGAN generator, for 2D or 3D data.

A weight-pruning (WP) block is depthwise conv → BN → ReLU → pointwise conv → BN → ReLU
(the WP-UNet paper's Fig. 2), whose depthwise and pointwise weights are the ones pruned.
On CPU, 3D depthwise convolutions are only fast in ``torch.channels_last_3d`` memory format
(see shared/notes/performance.md); :func:`to_fast_layout` applies it.
"""
from __future__ import annotations

import torch
from torch import nn


def conv_cls(dims: int) -> type[nn.Module]:
    return {2: nn.Conv2d, 3: nn.Conv3d}[dims]


def bn_cls(dims: int) -> type[nn.Module]:
    return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]


def pool_cls(dims: int) -> type[nn.Module]:
    return {2: nn.MaxPool2d, 3: nn.MaxPool3d}[dims]


def up_cls(dims: int) -> type[nn.Module]:
    return {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[dims]


class ConvBNReLU(nn.Sequential):
    """A standard (dense) convolution → BN → ReLU, used for the stem."""

    def __init__(self, in_ch: int, out_ch: int, dims: int = 3, kernel: int = 3):
        super().__init__(conv_cls(dims)(in_ch, out_ch, kernel, padding=kernel // 2, bias=False),
                         bn_cls(dims)(out_ch), nn.ReLU(inplace=True))


class WPBlock(nn.Module):
    """Depthwise-separable block: depthwise k×k(×k) → BN → ReLU → pointwise 1×1 → BN → ReLU."""

    def __init__(self, in_ch: int, out_ch: int, dims: int = 3, kernel: int = 3):
        super().__init__()
        conv, bn = conv_cls(dims), bn_cls(dims)
        self.depthwise = conv(in_ch, in_ch, kernel, padding=kernel // 2, groups=in_ch, bias=False)
        self.bn1 = bn(in_ch)
        self.pointwise = conv(in_ch, out_ch, 1, bias=False)
        self.bn2 = bn(out_ch)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.depthwise(x)))
        return self.act(self.bn2(self.pointwise(x)))


class WPStage(nn.Sequential):
    """Two WP blocks at one resolution (the encoder/decoder unit of the WP-UNet)."""

    def __init__(self, in_ch: int, out_ch: int, dims: int = 3):
        super().__init__(WPBlock(in_ch, out_ch, dims), WPBlock(out_ch, out_ch, dims))


def to_fast_layout(model: nn.Module, dims: int) -> nn.Module:
    """channels_last(_3d) memory format, where depthwise convolutions run fast on CPU."""
    fmt = torch.channels_last_3d if dims == 3 else torch.channels_last
    return model.to(memory_format=fmt)
