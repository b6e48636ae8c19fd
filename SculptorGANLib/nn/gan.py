"""SculptorGAN Phase I networks: a 2D WP-UNet generator conditioned on neighbouring slices and on the
target position, and a conditional patch discriminator.

Generator input (channels, all B×C×H×W, intensities in normalized units, see ``interp_data``):

* ``context``: the ``2·n_side`` nearest acquired slices (n_side below, n_side above the target),
* ``base``: the classical (cubic B-spline) estimate of the target slice,
* ``linear`` (when ``use_linear``): the linear estimate too; the output starts from
  ``base + β·(linear − base)`` with β a (zero-initialised) linear function of the positions, so the
  network can first learn the best classical blend for each gap and then refine it,
* ``positions``: the signed distance in millimetres from the target to each context slice
  (B×2·n_side, broadcast to constant planes inside the network after division by ``pos_scale_mm``),
  which tells the network the gap length, the slice spacing and where in the gap the target lies,
  so one model serves any factor, any target spacing and irregular gaps.

The network predicts a residual added to ``base``; its last layer is zero-initialised, so an untrained
(or freshly loaded zero) generator reproduces the classical estimate exactly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConvBNReLU, WPStage

GENERATOR_ARCH = "sculptorgan_wpunet2d"
DISCRIMINATOR_ARCH = "sculptorgan_patchd2d"


class SculptorGenerator(nn.Module):
    """2D WP-UNet (depthwise-separable conv + BN + ReLU stages, skip connections) predicting a residual."""

    def __init__(self, n_side: int = 2, base_channels: int = 24, levels: int = 3, pos_scale_mm: float = 10.0,
                 residual_scale: float = 0.25, use_linear: bool = False):
        super().__init__()
        self.use_linear = bool(use_linear)
        if n_side < 1 or levels < 1:
            raise ValueError("n_side and levels must be >= 1")
        self.n_side, self.levels = n_side, levels
        self.pos_scale_mm, self.residual_scale = float(pos_scale_mm), float(residual_scale)
        n_ctx = 2 * n_side
        in_ch = n_ctx + 1 + int(self.use_linear) + n_ctx  # context slices, estimate(s), position planes
        chans = [base_channels * 2 ** i for i in range(levels + 1)]
        self.stem = ConvBNReLU(in_ch, chans[0], dims=2)
        self.enc = nn.ModuleList([WPStage(chans[0], chans[0], dims=2)] +
                                 [WPStage(chans[i - 1], chans[i], dims=2) for i in range(1, levels + 1)])
        self.dec = nn.ModuleList([WPStage(chans[i + 1] + chans[i], chans[i], dims=2) for i in reversed(range(levels))])
        self.head = nn.Conv2d(chans[0], 1, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        if self.use_linear:
            self.blend = nn.Linear(n_ctx, 1)
            nn.init.zeros_(self.blend.weight)
            nn.init.zeros_(self.blend.bias)

    @property
    def multiple(self) -> int:
        """Input height/width must be a multiple of this (callers pad)."""
        return 2 ** self.levels

    def forward(self, context: torch.Tensor, base: torch.Tensor, positions: torch.Tensor,
                linear: torch.Tensor | None = None) -> torch.Tensor:
        b, _, h, w = context.shape
        pos = (positions / self.pos_scale_mm).to(context.dtype)
        planes = pos[:, :, None, None].expand(b, -1, h, w)
        estimates = [base]
        if self.use_linear:
            if linear is None:
                raise ValueError("this generator needs the linear estimate as well")
            estimates.append(linear)
        x = self.stem(torch.cat([context, *estimates, planes], dim=1))
        skips = []
        for i, stage in enumerate(self.enc):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = stage(x)
            skips.append(x)
        skips.pop()
        for stage in self.dec:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = stage(torch.cat([x, skip], dim=1))
        start = base
        if self.use_linear:
            start = base + self.blend(pos)[:, :, None, None] * (linear - base)
        return start + self.residual_scale * self.head(x)


class PatchDiscriminator(nn.Module):
    """Conditional PatchGAN: judges (context slices, candidate slice) pairs, one logit per patch."""

    def __init__(self, n_side: int = 2, channels: int = 32, layers: int = 3):
        super().__init__()
        in_ch = 2 * n_side + 1
        mods: list[nn.Module] = []
        ch = in_ch
        for i in range(layers):
            out = channels * 2 ** i
            mods += [nn.utils.spectral_norm(nn.Conv2d(ch, out, 4, stride=2, padding=1)), nn.LeakyReLU(0.2, inplace=True)]
            ch = out
        mods += [nn.Conv2d(ch, 1, 3, padding=1)]
        self.net = nn.Sequential(*mods)

    def forward(self, context: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([context, candidate], dim=1))


def build_generator(arch_args: dict | None = None) -> SculptorGenerator:
    """A generator from a model card's ``arch_args``."""
    args = dict(arch_args or {})
    known = {"n_side", "base_channels", "levels", "pos_scale_mm", "residual_scale", "use_linear"}
    return SculptorGenerator(**{k: v for k, v in args.items() if k in known})


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
