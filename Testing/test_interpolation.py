"""Phase I stage: geometry exactness, acquired slices kept, missing-slice filling, GAN method and fallback."""
from __future__ import annotations

import numpy as np
import pytest

from SculptorGANLib.nn import cards as models
from SculptorGANLib.core.errors import CancelledError, InputError
from SculptorGANLib.interpolate.stage import interpolate, plan_grid
from SculptorGANLib.synthetic.phantom import make_phantom, thick_slices
from SculptorGANLib.core.volume import CTVolume, Geometry

import torch as _torch

_torch.set_num_threads(1)  # 2-core machine shared with other jobs: avoid oversubscription


@pytest.fixture(scope="module")
def phantom():
    ct, _ = make_phantom((24, 40, 40), (2.5, 2.5, 2.0), seed=3)
    return ct


@pytest.fixture(scope="module")
def oblique(phantom):
    a = np.deg2rad(20)
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    geo = Geometry((0.8, 0.9, 3.0), (-12.5, 40.25, 7.0), tuple(rot.ravel()))
    return CTVolume(phantom.array[::2].copy(), geo, name="oblique")


TINY_ARGS = {"n_side": 2, "base_channels": 4, "levels": 2, "pos_scale_mm": 10.0, "residual_scale": 0.25,
             "use_linear": True}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A small original (WP-UNet) generator with a non-zero head, saved with a card like a shipped model."""
    import torch

    from SculptorGANLib.nn.cards import ModelCard, save_model
    from SculptorGANLib.nn.gan import GENERATOR_ARCH, build_generator

    torch.manual_seed(0)
    args = TINY_ARGS
    gen = build_generator(args)
    torch.nn.init.normal_(gen.head.weight, std=0.05)
    torch.nn.init.constant_(gen.blend.bias, 0.3)  # part-way between cubic and linear
    card = ModelCard(name="tiny_interp", task="interpolation", architecture=GENERATOR_ARCH, arch_args=args,
                     preprocessing={"max_gap_mm": 16.0, "min_gap_mm": 1.0}, license="Apache-2.0", version="t")
    return save_model(gen.state_dict(), card, tmp_path_factory.mktemp("models"))


def _z_of_slice(volume, i):
    return volume.geometry.index_to_physical(np.array([0.0, 0.0, float(i)]))


@pytest.mark.parametrize("method", ["linear", "cubic", "gan"])
def test_geometry_exact_oblique(oblique, tiny_model, method):
    out, info = interpolate(oblique, factor=3, method=method, model=str(tiny_model) if method == "gan" else None)
    assert info["method"] == method
    n = oblique.shape[0]
    assert out.shape == ((n - 1) * 3 + 1,) + oblique.shape[1:]
    assert out.geometry.spacing == pytest.approx((0.8, 0.9, 1.0))
    assert out.geometry.origin == pytest.approx(oblique.geometry.origin)
    assert out.geometry.direction == pytest.approx(oblique.geometry.direction)
    # slice i lies at z0 + i·spacing along the (oblique) slice normal; input slice j at output 3j
    normal = oblique.geometry.direction_matrix[:, 2]
    for i in (0, 1, 5, out.shape[0] - 1):
        expected = np.asarray(oblique.geometry.origin) + normal * i * 1.0
        assert _z_of_slice(out, i) == pytest.approx(expected, abs=1e-6)
    for j in range(n):
        assert _z_of_slice(out, 3 * j) == pytest.approx(_z_of_slice(oblique, j), abs=1e-6)
        np.testing.assert_array_equal(out.array[3 * j], oblique.array[j])  # acquired slices kept exactly


def test_target_spacing_non_divisor(oblique):
    out, info = interpolate(oblique, target_spacing=1.3, method="cubic")
    assert out.geometry.spacing[2] == pytest.approx(1.3)
    assert (out.shape[0] - 1) * 1.3 <= (oblique.shape[0] - 1) * 3.0 + 1e-6
    assert out.shape[0] == int(np.floor((oblique.shape[0] - 1) * 3.0 / 1.3 + 1e-6)) + 1
    np.testing.assert_array_equal(out.array[0], oblique.array[0])
    with pytest.raises(ValueError):
        plan_grid(oblique, factor=2, target_spacing=1.0)


def test_gan_beats_nothing_but_changes_only_new_slices(phantom, tiny_model):
    thick = thick_slices(phantom, 2, average=False)
    cubic, _ = interpolate(thick, factor=2, method="cubic")
    gan, info = interpolate(thick, factor=2, method="gan", model=str(tiny_model))
    assert info["model"] == "tiny_interp" and info["device"] == "cpu"
    assert info["synthesized_by_gan"] == thick.shape[0] - 1
    np.testing.assert_array_equal(gan.array[::2], thick.array)
    assert not np.allclose(gan.array[1::2], cubic.array[1::2])  # the (random-head) network did something
    assert np.isfinite(gan.array).all()


def test_fill_missing(phantom, tiny_model):
    missing = (5, 6, 11)
    ct = phantom.with_missing(missing)
    for method in ("cubic", "gan"):
        out, info = interpolate(ct, fill_missing=True, method=method, model=str(tiny_model) if method == "gan" else None)
        assert out.shape == phantom.shape and out.same_grid(phantom)
        assert info["filled_missing"] == list(missing)
        keep = [i for i in range(phantom.shape[0]) if i not in missing]
        np.testing.assert_array_equal(out.array[keep], phantom.array[keep])
        for i in missing:  # a real estimate, not the placeholder, and close to the truth
            assert not np.array_equal(out.array[i], ct.array[i])
            assert np.abs(out.array[i] - phantom.array[i]).mean() < 60
    out, info = interpolate(ct, fill_missing=False, method="cubic")
    np.testing.assert_array_equal(out.array, ct.array)


def test_gap_wider_than_trained_falls_back_to_cubic(phantom, tiny_model):
    thick = thick_slices(phantom, 6, average=False)  # 12 mm gaps; the tiny model allows 16 mm
    _, info = interpolate(thick, factor=6, method="gan", model=str(tiny_model))
    assert info["cubic_fallback_slices_gap_too_wide"] == 0
    wide = CTVolume(thick.array, thick.geometry.with_z_spacing(20.0))
    cubic, _ = interpolate(wide, factor=2, method="cubic")
    gan, info = interpolate(wide, factor=2, method="gan", model=str(tiny_model))
    assert info["cubic_fallback_slices_gap_too_wide"] == wide.shape[0] - 1 and "note" in info
    np.testing.assert_array_equal(gan.array, cubic.array)
    narrow = CTVolume(thick.array, thick.geometry.with_z_spacing(0.5))  # below the card's min_gap_mm (1 mm)
    cubic, _ = interpolate(narrow, factor=2, method="cubic")
    gan, info = interpolate(narrow, factor=2, method="gan", model=str(tiny_model))
    assert info["cubic_fallback_slices_gap_too_narrow"] == narrow.shape[0] - 1
    np.testing.assert_array_equal(gan.array, cubic.array)


def test_gan_without_weights_falls_back(phantom, tmp_path, monkeypatch):
    monkeypatch.setattr(models, "MODELS_DIR", tmp_path)
    thick = thick_slices(phantom, 2, average=False)
    out, info = interpolate(thick, factor=2, method="gan")
    assert info["method"] == "cubic" and "fallback" in info
    cubic, _ = interpolate(thick, factor=2, method="cubic")
    np.testing.assert_array_equal(out.array, cubic.array)
    _, info = interpolate(thick, factor=2)  # default: best available
    assert info["method"] == "cubic"
    with pytest.raises(InputError):  # a named model that does not exist is an error, not a fallback
        interpolate(thick, factor=2, method="gan", model=str(tmp_path / "nope.json"))
    with pytest.raises(InputError):
        interpolate(thick, factor=2, method="bicubic")


def test_progress_cancel_enhance_smoothing(phantom, tiny_model):
    thick = thick_slices(phantom, 2, average=False)
    seen = []
    out, info = interpolate(thick, factor=2, method="gan", model=str(tiny_model),
                            progress=lambda f, m: seen.append(f), batch_size=3)
    assert seen[0] == 0.0 and seen[-1] == 1.0 and len(seen) > 3 and seen == sorted(seen)
    with pytest.raises(CancelledError):
        interpolate(thick, factor=2, method="gan", model=str(tiny_model), cancel=lambda: True)
    enhanced, info = interpolate(thick, factor=2, method="gan", model=str(tiny_model), enhance=True)
    assert info["enhanced"] and info["enhanced_slices"] == thick.shape[0] - 2
    inner = enhanced.array[2:-2:2]
    assert not np.array_equal(inner, thick.array[1:-1])
    np.testing.assert_array_equal(enhanced.array[0], thick.array[0])
    smooth, info = interpolate(thick, factor=2, method="cubic", smoothing_mm=2.0)
    cubic, _ = interpolate(thick, factor=2, method="cubic")
    np.testing.assert_array_equal(smooth.array[::2], thick.array)
    assert not np.allclose(smooth.array[1::2], cubic.array[1::2])


def test_inplane_tiling_matches_whole_slice(phantom, tiny_model):
    """Tiles (bounded memory) give the untiled result within tolerance, for the original generator too."""
    from SculptorGANLib.interpolate.context import normalize_hu
    from SculptorGANLib.interpolate.learned import predict
    from SculptorGANLib.interpolate.stage import load_generator

    net, _ = load_generator(str(tiny_model))
    known = np.arange(0, 24, 3).astype(float)
    slices = normalize_hu(phantom.array[::3])
    targets = np.array([7.0, 8.0, 13.5])
    whole = predict(net, known, slices, targets, 2.0, batch_size=2)
    tiled = predict(net, known, slices, targets, 2.0, batch_size=2, tile=24, overlap=8)
    assert tiled.shape == whole.shape == (3, 40, 40)
    from SculptorGANLib.nn.gan import build_generator

    base = predict(build_generator(TINY_ARGS).eval(), known, slices, targets, 2.0)  # zero head: the cubic estimate
    resid = np.abs(whole - base).mean()
    assert resid > 0 and np.abs(tiled - whole).mean() < 0.5 * resid


def test_banded_spline_equals_the_spline_fit():
    from SculptorGANLib.interpolate.context import banded_spline, spline_at

    rng = np.random.default_rng(4)
    known = np.cumsum(rng.integers(1, 4, 60)).astype(float)
    slices = rng.normal(0, 300, (60, 6, 7)).astype(np.float32)
    targets = np.linspace(known[0], known[-1], 333)
    for method in ("cubic", "linear"):
        ref = spline_at(known, slices, targets, method)
        out = banded_spline(known, slices, targets, method, block=16)
        assert out.dtype == np.float32 and np.abs(out - ref).max() < 1e-2
    few = banded_spline(known[:3], slices[:3], targets[:5])  # < 4 knots: linear, as spline_at
    np.testing.assert_allclose(few, spline_at(known[:3], slices[:3], targets[:5]), atol=1e-3)


def test_values_outside_the_networks_range_keep_cubic(phantom, tiny_model):
    """Padding beyond the field of view (-2048 here) stays padding in synthesized slices, not -1024."""
    arr = phantom.array[::2].copy()
    arr[:, :5, :] = -2048.0
    thick = CTVolume(arr, phantom.geometry.with_z_spacing(4.0), name="padded")
    out, info = interpolate(thick, factor=2, method="gan", model=str(tiny_model))
    cubic, _ = interpolate(thick, factor=2, method="cubic")
    assert info["slices_by_method"] == {"gan": thick.shape[0] - 1}
    np.testing.assert_array_equal(out.array[1::2, :4, :], cubic.array[1::2, :4, :])
    assert out.array[1::2, :4, :].max() < -2047.0  # padding, not clipped to -1024
    assert not np.array_equal(out.array[1::2, 8:], cubic.array[1::2, 8:])  # the network made the rest
