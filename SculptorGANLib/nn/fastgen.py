"""SculptorGAN's fast slice generator: a compact WP-UNet-style residual network for CPU inference.

Input (B×C×H×W, normalized units HU/1000, see ``interpolate/context.py``): the ``2·n_side`` nearest
acquired slices, the cubic and the linear estimate of the target slice; conditioning: the signed
distance in mm from the target to each context slice and the slice thickness in mm (0 = unknown).
The image is pixel-unshuffled to half resolution (4× channels), passes a three-level U-Net of
depthwise-separable (WP) blocks, and is shuffled back. The output is
``cubic + β·(linear − cubic) + s·residual`` with β a linear function of the conditioning; β and the
last layer start at zero, so an untrained network reproduces the cubic estimate exactly.
``refine_blocks`` residual WP blocks per level (default 0) add capacity where it is cheap; each starts as
the identity, so a trained network grows into a wider one with its function unchanged (``grow``).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

FAST_ARCH = "sculptorgan_fastunet2d"
ARCH_KEYS = ("n_side", "channels", "pos_scale_mm", "residual_scale", "depthwise", "refine_blocks")


def _cbr(cin: int, cout: int, depthwise: bool = False) -> nn.Sequential:
    """3×3 conv → BN → ReLU, or a WP block (depthwise 3×3 → BN → ReLU → pointwise → BN → ReLU)."""
    if depthwise:
        return nn.Sequential(nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                             nn.ReLU(inplace=True), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout),
                             nn.ReLU(inplace=True))
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _proj(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride=stride, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class _ResidualWP(nn.Module):
    """x + (depthwise 3×3 → BN → ReLU → pointwise → BN)(x); the last BN starts at zero (identity block,
    with gradients: no ReLU after it)."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), nn.BatchNorm2d(c),
                                  nn.ReLU(inplace=True), nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))
        nn.init.zeros_(self.body[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class FastSliceGenerator(nn.Module):
    """Residual slice generator working at half resolution (pixel-unshuffle), 3 levels."""

    takes_thickness = True
    use_linear = True

    def __init__(self, n_side: int = 2, channels: tuple[int, int, int] = (24, 48, 64), pos_scale_mm: float = 10.0,
                 residual_scale: float = 0.5, depthwise: bool = True, refine_blocks: int = 0):
        super().__init__()
        if n_side < 1 or len(channels) != 3:
            raise ValueError("n_side must be >= 1 and channels must list 3 widths")
        self.n_side, self.pos_scale_mm, self.residual_scale = int(n_side), float(pos_scale_mm), float(residual_scale)
        n_ctx = 2 * self.n_side
        self.n_cond = n_ctx + 1
        c0, c1, c2 = (int(c) for c in channels)
        dw = bool(depthwise)
        self.stem = _cbr(4 * (n_ctx + 2) + self.n_cond, c0)
        self.e0 = _cbr(c0, c0, dw)
        self.d1 = _proj(c0, c1, 2, 2)
        self.e1 = nn.Sequential(_cbr(c1, c1, dw), _cbr(c1, c1, dw))
        self.d2 = _proj(c1, c2, 2, 2)
        self.e2 = nn.Sequential(_cbr(c2, c2, dw), _cbr(c2, c2, dw), _cbr(c2, c2, dw))
        self.u2 = _proj(c2, c1, 1)
        self.g1 = nn.Sequential(_cbr(c1, c1, dw), _cbr(c1, c1, dw))
        self.u1 = _proj(c1, c0, 1)
        self.g0 = _cbr(c0, c0)
        self.refine_blocks = int(refine_blocks)
        self.r2, self.r1, self.r0 = (nn.Sequential(*[_ResidualWP(c) for _ in range(self.refine_blocks)])
                                     for c in (c2, c1, c0))
        self.head = nn.Conv2d(c0, 4, 3, padding=1)
        self.blend = nn.Linear(self.n_cond, 1)
        for layer in (self.head, self.blend):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def multiple(self) -> int:
        """Input height/width must be a multiple of this (callers pad)."""
        return 8

    def forward(self, context: torch.Tensor, base: torch.Tensor, positions: torch.Tensor, linear: torch.Tensor,
                thickness: torch.Tensor | None = None) -> torch.Tensor:
        b, _, h, w = context.shape
        if thickness is None:
            thickness = torch.zeros(b, device=context.device)
        cond = (torch.cat([positions.float(), thickness.float().reshape(b, 1)], 1) / self.pos_scale_mm).to(context.dtype)
        x = F.pixel_unshuffle(torch.cat([context, base, linear], 1), 2)
        x = self.e0(self.stem(torch.cat([x, cond[:, :, None, None].expand(b, -1, h // 2, w // 2)], 1)))
        s1 = self.e1(self.d1(x))
        y = self.r2(self.e2(self.d2(s1)))
        y = self.r1(self.g1(s1 + F.interpolate(self.u2(y), scale_factor=2, mode="bilinear", align_corners=False)))
        y = self.r0(self.g0(x + F.interpolate(self.u1(y), scale_factor=2, mode="bilinear", align_corners=False)))
        start = base + self.blend(cond)[:, :, None, None] * (linear - base)
        return start + self.residual_scale * F.pixel_shuffle(self.head(y), 2)


def build_fast_generator(arch_args: dict | None = None) -> FastSliceGenerator:
    """A generator from a model card's ``arch_args`` (unknown keys ignored)."""
    args = {k: v for k, v in dict(arch_args or {}).items() if k in ARCH_KEYS}
    if "channels" in args:
        args["channels"] = tuple(args["channels"])
    return FastSliceGenerator(**args)


def grow(state: dict, net: FastSliceGenerator) -> FastSliceGenerator:
    """``net`` with a trained generator's ``state`` loaded; only ``net``'s refinement blocks may be missing
    from it (they stay identity blocks, so the output is that of the trained generator)."""
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ValueError(f"state does not fit the generator: {str(exc).splitlines()[1].strip()}") from None
    new = [k for k in missing if not k.startswith(("r0.", "r1.", "r2."))]
    if new or unexpected:
        raise ValueError(f"state does not fit the generator: missing {new}, unexpected {list(unexpected)}")
    return net


def fuse_batchnorm(net: nn.Module) -> nn.Module:
    """An eval-mode copy of ``net`` with each Conv2d→BatchNorm2d pair inside a Sequential folded into the conv."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    net = copy.deepcopy(net).eval()
    for mod in net.modules():
        if isinstance(mod, nn.Sequential):
            names = list(mod._modules)
            for a, b in zip(names, names[1:]):
                conv, bn = mod._modules[a], mod._modules[b]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    mod._modules[a] = fuse_conv_bn_eval(conv, bn)
                    mod._modules[b] = nn.Identity()
    return net


def prepare_for_inference(net: nn.Module, channels_last: bool = True, fuse: bool = True) -> nn.Module:
    """Eval copy with fused batch norm and channels-last layout (both measured faster on CPU)."""
    out = fuse_batchnorm(net) if fuse else copy.deepcopy(net).eval()
    if channels_last:
        out = out.to(memory_format=torch.channels_last)
    out.channels_last = channels_last
    return out
