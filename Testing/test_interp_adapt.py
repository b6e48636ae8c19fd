"""Adapting the generator to one scan: in-plane training pairs, fine-tuning, and the stage's choice."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from SculptorGANLib.core.errors import CancelledError
from SculptorGANLib.core.options import PipelineOptions, add_arguments, options_from_args
from SculptorGANLib.core.volume import CTVolume, Geometry
from SculptorGANLib.interpolate.adapt import AdaptSettings, adapt_generator, degraded_sample, in_plane_stacks
from SculptorGANLib.interpolate.context import normalize_hu
from SculptorGANLib.interpolate.stage import interpolate
from SculptorGANLib.nn.cards import ModelCard, save_model
from SculptorGANLib.nn.fastgen import FAST_ARCH, FastSliceGenerator
from SculptorGANLib.synthetic.phantom import make_phantom

torch.set_num_threads(1)
ARGS = {"n_side": 2, "channels": [8, 12, 16], "residual_scale": 0.5, "depthwise": True}
FEW = AdaptSettings(steps=30, lr=3e-3, batch_size=4, patch=32)


def _net() -> FastSliceGenerator:
    torch.manual_seed(0)
    return FastSliceGenerator(**{**ARGS, "channels": tuple(ARGS["channels"])}).eval()


@pytest.fixture(scope="module")
def scan() -> CTVolume:
    """A phantom acquired with 1 mm pixels and 4 mm slices (the case adaptation is for)."""
    ct, _ = make_phantom((20, 48, 48), (1.0, 1.0, 4.0), seed=5)
    return ct


def test_in_plane_pairs_mimic_the_slice_gap(scan):
    slices = normalize_hu(scan.array)
    (along_y, dy), (along_x, dx) = in_plane_stacks(slices, (1.0, 1.0))
    assert along_y.shape == (48, 20, 48) and along_x.shape == (48, 20, 48) and dy == dx == 1.0
    np.testing.assert_array_equal(along_y[5], slices[:, 5, :])
    rng = np.random.default_rng(0)
    items = [s for s in (degraded_sample(along_y, 1.0, 4, 1.0, rng, 32, 2) for _ in range(20)) if s is not None]
    assert items
    ctx, pos, cubic, target, linear, thick = items[0]
    assert ctx.shape == (4, 16, 32) and target.shape == cubic.shape == linear.shape == (1, 16, 32)
    assert np.all(np.abs(pos) >= 1.0) and np.all(np.abs(pos) % 4.0 < 4.0) and thick == 0.0
    gaps = sorted(set(np.round(np.diff(np.sort(pos)), 3)))
    assert gaps == [4.0]  # kept rows every 4 mm, like the slices
    slab = degraded_sample(along_y, 1.0, 4, 4.0, np.random.default_rng(1), 32, 2)
    assert slab is not None and slab[5] == pytest.approx(4.0)  # thickness told in mm


def test_adaptation_fits_the_scan_and_leaves_the_original(scan):
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    seen = []
    adapted, info = adapt_generator(net, normalize_hu(scan.array), 4.0, (1.0, 1.0), settings=FEW,
                                    progress=lambda f, m: seen.append(f))
    assert info["steps"] == 30 and info["axes"] == 2 and info["rows_kept_every"] == [4, 4]
    assert info["loss_end"] < info["loss_start"]  # it learns this scan's in-plane pairs
    assert seen[-1] == 1.0 and not adapted.training
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k])
    changed = [k for k, v in adapted.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("head") for k in changed)
    assert not any("running_mean" in k for k in changed)  # batch-norm statistics frozen


def test_adaptation_skips_coarse_in_plane_scans_and_cancels(scan):
    net = _net()
    same, info = adapt_generator(net, normalize_hu(scan.array), 4.0, (3.0, 3.0), settings=FEW)
    assert same is net and "skipped" in info
    with pytest.raises(CancelledError):
        adapt_generator(net, normalize_hu(scan.array), 4.0, (1.0, 1.0), settings=FEW, cancel=lambda: True)


@pytest.fixture(scope="module")
def fast_card(tmp_path_factory):
    net = _net()
    torch.nn.init.normal_(net.head.weight, std=0.02)
    card = ModelCard(name="fast_t", task="interpolation", architecture=FAST_ARCH, arch_args=ARGS,
                     preprocessing={"max_gap_mm": 40.0, "min_gap_mm": 0.0}, license="Apache-2.0", version="t")
    return str(save_model(net.state_dict(), card, tmp_path_factory.mktemp("m")))


def test_stage_reports_the_adaptation(scan, fast_card):
    thick = CTVolume(scan.array, Geometry((1.0, 1.0, 4.0)), name="thick")
    out, info = interpolate(thick, factor=2, method="gan", model=fast_card, adapt=FEW)
    assert info["adaptation"]["used"] is True and info["adaptation"]["steps"] > 0
    assert "adapted" in info["decision"] and info["slices_by_method"] == {"gan": 19}
    plain, _ = interpolate(thick, factor=2, method="gan", model=fast_card)
    assert not np.array_equal(out.array[1::2], plain.array[1::2])  # the adapted network made them
    np.testing.assert_array_equal(out.array[::2], thick.array)      # acquired slices untouched
    auto_out, auto = interpolate(thick, factor=2, model=fast_card, adapt=FEW)
    assert set(auto["self_check_gains_db"]) == {"adapted", "unadapted"}
    assert auto["adaptation"]["used"] == (auto["method"] == "gan" and auto["decision"].startswith("adapted"))


def test_adapt_option_reaches_the_stage():
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser, ["interpolate"])
    args = parser.parse_args(["--adapt"])
    options = options_from_args(args)
    assert options.adapt is True and PipelineOptions().adapt is False
    assert PipelineOptions.from_json(options.to_json()).adapt is True
