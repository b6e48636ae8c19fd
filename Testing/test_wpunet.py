"""WP-UNet shapes (2D/3D), magnitude pruning to a target sparsity, the composite loss, cost report."""
import pytest
import torch

from SculptorGANLib.nn.baselines import model_cost, monai_unet
from SculptorGANLib.nn.blocks import WPBlock
from SculptorGANLib.nn.pruning import apply_magnitude_pruning, make_permanent, prunable_parameters, sparsity_report
from SculptorGANLib.nn.wpunet import WPUNet, build_model


@pytest.mark.parametrize("dims,shape", [(3, (2, 1, 16, 24, 32)), (2, (3, 1, 32, 48))])
def test_output_shapes(dims, shape):
    net = WPUNet(1, 3, features=(4, 8, 16), dims=dims).eval()
    with torch.no_grad():
        y = net(torch.randn(shape))
    assert y.shape == (shape[0], 3, *shape[2:])
    assert any(isinstance(m, WPBlock) for m in net.modules())


def test_fast_layout_model_matches_default_layout():
    torch.manual_seed(0)
    a = build_model("wpunet", {"features": [4, 8], "dims": 3}, fast_layout=False).eval()
    b = build_model("wpunet", {"features": [4, 8], "dims": 3}, fast_layout=True).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        assert torch.allclose(a(x), b(x.contiguous(memory_format=torch.channels_last_3d)), atol=1e-5)


@pytest.mark.parametrize("target", [0.3, 0.8])
def test_pruning_reaches_target_sparsity_and_survives_export(target):
    net = WPUNet(1, 3, features=(4, 8, 16), dims=3)
    apply_magnitude_pruning(net, target)
    make_permanent(net)
    rep = sparsity_report(net)
    assert rep["wp_sparsity"] == pytest.approx(target, abs=0.01)
    assert rep["nonzero_parameters"] < rep["parameters"]
    # a fresh model loaded from the state dict keeps the zeros
    other = WPUNet(1, 3, features=(4, 8, 16), dims=3)
    other.load_state_dict(net.state_dict())
    assert sparsity_report(other)["wp_sparsity"] == pytest.approx(target, abs=0.01)


def test_pruned_weights_stay_zero_while_training():
    torch.manual_seed(0)
    net = WPUNet(1, 3, features=(4, 8), dims=3)
    apply_magnitude_pruning(net, 0.5)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(2):
        loss = net(torch.randn(2, 1, 8, 8, 8)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    make_permanent(net)
    zeros = sum(int((getattr(m, n) == 0).sum()) for m, n in prunable_parameters(net))
    total = sum(getattr(m, n).numel() for m, n in prunable_parameters(net))
    assert zeros / total == pytest.approx(0.5, abs=0.01)


def test_bn_fusion_keeps_outputs():
    from SculptorGANLib.nn.wpunet import fuse_for_inference

    torch.manual_seed(0)
    net = WPUNet(1, 3, features=(4, 8), dims=3)
    net(torch.randn(2, 1, 8, 8, 8))  # move BN running stats away from the identity
    net.eval()
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        ref = net(x)
        fused = fuse_for_inference(net)(x)
    assert torch.allclose(ref, fused, atol=1e-4)


def test_composite_loss_prefers_correct_prediction():
    from monai.losses import DiceCELoss

    loss = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.5, lambda_ce=0.5)
    y = torch.zeros(1, 1, 8, 8, 8, dtype=torch.long)
    y[..., 2:6, 2:6, 2:6] = 1
    good = torch.nn.functional.one_hot(y[:, 0], 3).permute(0, 4, 1, 2, 3).float() * 10
    bad = torch.roll(good, shifts=3, dims=-1)
    assert float(loss(good, y)) < float(loss(bad, y))


def test_wpunet_is_cheaper_than_monai_unet():
    wp = WPUNet(1, 3, features=(8, 16, 32), dims=3)
    unet = monai_unet(features=(8, 16, 32))
    c_wp, c_unet = model_cost(wp, (1, 1, 16, 16, 16)), model_cost(unet, (1, 1, 16, 16, 16))
    assert c_wp["parameters"] < c_unet["parameters"]
    assert c_wp["flops"] > 0 and c_unet["flops"] > 0
