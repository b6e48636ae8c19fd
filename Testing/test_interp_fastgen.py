"""The fast residual generator: starts at cubic, inference speed-ups change nothing, conditioning is used."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from SculptorGANLib.interpolate.learned import predict
from SculptorGANLib.nn.fastgen import FastSliceGenerator, build_fast_generator, prepare_for_inference

torch.set_num_threads(1)


def _inputs(b=2, h=40, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    ctx = torch.randn(b, 4, h, w, generator=g)
    base = ctx[:, 1:3].mean(1, keepdim=True)
    lin = base + 0.1 * torch.randn(b, 1, h, w, generator=g)
    pos = torch.tensor([[-7.5, -2.5, 2.5, 7.5]] * b)
    return ctx, base, pos, lin


def _trained_like(seed=0) -> FastSliceGenerator:
    """A generator with non-zero head/blend and non-trivial batch-norm statistics."""
    torch.manual_seed(seed)
    net = FastSliceGenerator(channels=(8, 12, 16))
    torch.nn.init.normal_(net.head.weight, std=0.05)
    torch.nn.init.constant_(net.blend.bias, 0.3)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return net.eval()


def test_untrained_generator_is_exactly_cubic():
    net = FastSliceGenerator(channels=(8, 12, 16)).eval()
    ctx, base, pos, lin = _inputs()
    with torch.no_grad():
        out = net(ctx, base, pos, lin, torch.tensor([0.0, 5.0]))
    assert out.shape == base.shape
    assert torch.equal(out, base)


def test_fused_channels_last_matches_plain():
    net = _trained_like()
    ctx, base, pos, lin = _inputs()
    with torch.no_grad():
        ref = net(ctx, base, pos, lin)
    for cl, fuse in ((True, False), (False, True), (True, True)):
        fast = prepare_for_inference(net, channels_last=cl, fuse=fuse)
        if fuse:
            assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
        with torch.no_grad():
            out = fast(ctx.contiguous(memory_format=torch.channels_last) if cl else ctx, base, pos, lin)
        assert torch.allclose(out, ref, atol=1e-4)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # the original is untouched


def test_position_and_thickness_change_the_output():
    net = _trained_like(1)
    ctx, base, pos, lin = _inputs(b=1)
    with torch.no_grad():
        a = net(ctx, base, pos, lin, torch.tensor([0.0]))
        b = net(ctx, base, pos, lin, torch.tensor([10.0]))
        c = net(ctx, base, pos * 2, lin, torch.tensor([0.0]))
    assert (a - b).abs().max() > 1e-4 and (a - c).abs().max() > 1e-4


def test_build_from_card_args_round_trip():
    net = build_fast_generator({"n_side": 2, "channels": [8, 12, 16], "residual_scale": 0.5, "depthwise": True,
                                "unknown_key": 1})
    assert sum(p.numel() for p in net.parameters()) < 20_000
    with pytest.raises(ValueError):
        FastSliceGenerator(channels=(8, 12))


def test_predict_tiles_and_batches_match_whole_slices():
    net = prepare_for_inference(_trained_like(2))
    rng = np.random.default_rng(0)
    slices = rng.normal(0, 0.3, (6, 70, 90)).astype(np.float32)
    known = np.arange(6, dtype=float) * 2
    targets = np.array([3.0, 4.5, 5.0, 7.0])
    whole = predict(net, known, slices, targets, 2.5, batch_size=4)
    assert whole.shape == (4, 70, 90)
    one_by_one = predict(net, known, slices, targets, 2.5, batch_size=1)
    assert np.allclose(whole, one_by_one, atol=1e-4)
    tiled = predict(net, known, slices, targets, 2.5, batch_size=3, tile=48, overlap=12)
    # tiles see less context at their borders: equal in the tile interiors, close everywhere
    assert np.abs(tiled - whole).mean() < 2e-3


def test_grown_generator_keeps_the_trained_function_then_learns():
    from SculptorGANLib.nn.fastgen import grow

    small = _trained_like(3)
    big = grow(small.state_dict(), FastSliceGenerator(channels=(8, 12, 16), refine_blocks=1)).eval()
    ctx, base, pos, lin = _inputs()
    with torch.no_grad():
        assert torch.equal(small(ctx, base, pos, lin), big(ctx, base, pos, lin))
    fused = prepare_for_inference(big)
    with torch.no_grad():
        assert torch.allclose(fused(ctx.contiguous(memory_format=torch.channels_last), base, pos, lin),
                              small(ctx, base, pos, lin), atol=1e-4)
    big.train()
    loss = (big(ctx, base, pos, lin) - ctx[:, :1]).pow(2).mean()
    loss.backward()
    assert big.r0[0].body[-1].weight.grad.abs().sum() > 0  # the identity blocks get gradients
    with pytest.raises(ValueError, match="does not fit"):
        grow(FastSliceGenerator(channels=(8, 12, 20)).state_dict(), FastSliceGenerator(channels=(8, 12, 16)))
    assert build_fast_generator({"channels": [8, 12, 16], "refine_blocks": 1}).refine_blocks == 1
