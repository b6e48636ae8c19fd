"""The default method: per scan, the network only where it beats cubic on held-back acquired slices."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from SculptorGANLib.core.volume import CTVolume, Geometry
from SculptorGANLib.interpolate.context import normalize_hu as normalize
from SculptorGANLib.interpolate.selfcheck import decide
from SculptorGANLib.interpolate.stage import interpolate
from SculptorGANLib.nn.cards import ModelCard, save_model
from SculptorGANLib.nn.fastgen import FAST_ARCH, FastSliceGenerator, prepare_for_inference

torch.set_num_threads(1)
ARGS = {"n_side": 2, "channels": [8, 12, 16], "residual_scale": 0.5, "depthwise": True}


def _linear_net() -> FastSliceGenerator:
    """A generator whose output is exactly the linear estimate (blend 1, zero residual)."""
    net = FastSliceGenerator(**{**ARGS, "channels": tuple(ARGS["channels"])})
    torch.nn.init.constant_(net.blend.bias, 1.0)
    return net.eval()


@pytest.fixture(scope="module")
def linear_card(tmp_path_factory):
    card = ModelCard(name="linear_like", task="interpolation", architecture=FAST_ARCH, arch_args=ARGS,
                     preprocessing={"max_gap_mm": 40.0, "min_gap_mm": 0.0}, license="Apache-2.0", version="t")
    return str(save_model(_linear_net().state_dict(), card, tmp_path_factory.mktemp("m")))


def _volume(kind: str, nz: int = 17, dz: float = 4.0) -> CTVolume:
    """z profiles where cubic is exact (a cubic polynomial) or loses to linear (white noise)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:24, :24] / 24.0
    if kind == "cubic":
        z = np.linspace(-1, 1, nz)[:, None, None]
        arr = 200 * (z ** 3 - 0.5 * z) * (1 + xx) + 100 * yy
    else:
        arr = rng.normal(0, 200, (nz, 24, 24))
    return CTVolume(arr.astype(np.float32), Geometry((1.0, 1.0, dz)), name=kind)


def test_decide_picks_the_better_method():
    net = prepare_for_inference(_linear_net())
    for kind, expect in (("cubic", False), ("noise", True)):
        ct = _volume(kind)
        d = decide(net, np.arange(ct.shape[0], dtype=float), normalize(ct.array), 4.0)
        assert d.use_network is expect, d.text
        assert d.checked_slices == 8 and d.gain_db is not None
        assert (d.gain_db > 0) is expect
    few = _volume("noise", nz=4)
    d = decide(net, np.arange(4, dtype=float), normalize(few.array), 4.0)
    assert not d.use_network and "too few" in d.text


def test_default_falls_back_to_cubic_and_says_so(linear_card):
    ct = _volume("cubic")
    out, info = interpolate(ct, factor=4, model=linear_card)
    cubic, _ = interpolate(ct, factor=4, method="cubic")
    np.testing.assert_array_equal(out.array, cubic.array)  # never worse than cubic: it *is* cubic here
    n_new = out.shape[0] - ct.shape[0]
    assert info["method"] == "cubic" and info["requested_method"] == "auto"
    assert info["slices_by_method"] == {"cubic": n_new}
    assert "did not beat cubic" in info["decision"] and info["note"] == info["decision"]
    assert info["self_check_gain_db"] < 0


def test_default_uses_the_network_where_it_wins(linear_card):
    ct = _volume("noise")
    out, info = interpolate(ct, factor=4, model=linear_card)
    linear, _ = interpolate(ct, factor=4, method="linear")
    n_new = out.shape[0] - ct.shape[0]
    assert info["method"] == "gan" and info["slices_by_method"] == {"gan": n_new}
    assert "beat cubic" in info["decision"] and info["self_check_gain_db"] > 0
    np.testing.assert_allclose(out.array, linear.array, atol=0.05)  # this "network" is linear interpolation
    forced, info = interpolate(_volume("cubic"), factor=4, method="gan", model=linear_card)
    assert info["slices_by_method"] == {"gan": n_new} and info["decision"].startswith("network requested")


def test_counts_split_between_methods_when_gaps_exceed_the_model(linear_card):
    ct = _volume("noise", nz=17, dz=4.0)
    wide = CTVolume(ct.array, Geometry((1.0, 1.0, 50.0)))  # wider than the card's 40 mm
    out, info = interpolate(wide, factor=2, method="gan", model=linear_card)
    assert info["slices_by_method"] == {"cubic": 16}
    assert info["method"] == "cubic" and "note" in info
    missing = CTVolume(ct.array, ct.geometry, missing_slices=(3,))
    out, info = interpolate(missing, factor=2, method="gan", model=linear_card)
    assert sum(info["slices_by_method"].values()) == out.shape[0] - 16
