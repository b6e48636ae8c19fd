"""Synthetic CT around kidney masks: tissues in the right places, labels untouched, HU plausible."""
import numpy as np
import pytest

from SculptorGANLib.synthetic import TISSUES, make_layout, render
from SculptorGANLib.synthetic.layout import T


def two_kidneys(shape=(40, 64, 64), spacing=3.0):
    z, y, x = np.meshgrid(*(np.arange(n) * spacing for n in shape), indexing="ij")
    cz, cy, cx = (np.asarray(shape) - 1) * spacing / 2
    labels = np.zeros(shape, np.uint8)
    for side in (-1, 1):
        k = ((x - cx - side * 65) / 25) ** 2 + ((y - cy - 10) / 20) ** 2 + ((z - cz) / 45) ** 2 <= 1
        labels[k] = 1
    t = ((x - cx - 85) / 12) ** 2 + ((y - cy - 10) / 12) ** 2 + ((z - cz) / 12) ** 2 <= 1
    labels[t] = 2
    return labels


@pytest.fixture(scope="module")
def layout_and_labels():
    labels = two_kidneys()
    return make_layout(labels, (3.0, 3.0, 3.0), np.random.default_rng(0)), labels


def test_layout_keeps_kidney_and_tumor_where_labelled(layout_and_labels):
    layout, labels = layout_and_labels
    assert layout.shape == labels.shape and layout.dtype == np.uint8
    kidney_tissues = {T["cortex"], T["medulla"]}
    assert set(np.unique(layout[labels == 1])) <= kidney_tissues
    assert set(np.unique(layout[labels == 2])) <= {T["tumor"], T["necrosis"]}
    outside = layout[labels == 0]
    assert not np.isin(outside, list(kidney_tissues | {T["tumor"], T["necrosis"]})).any()


def test_layout_has_surrounding_anatomy(layout_and_labels):
    layout, _ = layout_and_labels
    present = {TISSUES[i] for i in np.unique(layout)}
    for needed in ("subcut_fat", "visceral_fat", "muscle", "cancellous", "aorta", "perirenal_fat"):
        assert needed in present, needed


def test_spine_lies_between_the_kidneys(layout_and_labels):
    layout, labels = layout_and_labels
    spine_x = np.argwhere(layout == T["cancellous"])[:, 2].mean()
    kid = np.argwhere(labels > 0)[:, 2]
    assert kid.min() < spine_x < kid.max()


def test_render_is_ct_like_and_randomized(layout_and_labels):
    layout, labels = layout_and_labels
    a, info_a = render(layout, np.random.default_rng(1))
    b, _ = render(layout, np.random.default_rng(2))
    assert a.dtype == np.float32 and np.isfinite(a).all()
    assert a.min() >= -1024 and a.max() <= 3071
    assert not np.allclose(a, b)
    fat = a[layout == T["subcut_fat"]].mean()
    bone = a[layout == T["cortical_bone"]].mean() if (layout == T["cortical_bone"]).any() else 500
    if info_a["phase"] != "random":
        assert fat < 0 < bone
    non, _ = render(layout, np.random.default_rng(3), phase="noncontrast")
    art, _ = render(layout, np.random.default_rng(3), phase="arterial")
    assert art[layout == T["cortex"]].mean() > non[layout == T["cortex"]].mean() + 50
