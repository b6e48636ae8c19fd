"""Synthetic tumors in real kidneys (synthetic/tumor_insert.py) and layouts from label maps
(synthetic/real_layout.py) on small stand-in volumes."""
import numpy as np
import pytest

from SculptorGANLib.synthetic.layout import T
from SculptorGANLib.synthetic.real_layout import layout_from_labelmap, layout_with_tumor
from SculptorGANLib.synthetic.tumor_insert import insert_tumor, place_tumor, tumor_hu, tumor_shapes
from training.seg_real_cases import crop_around


def ellipsoid(shape, c, r):
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 <= 1


def scene(kidney_hu=180.0):
    shape = (40, 48, 64)
    hu = np.full(shape, -90, np.float32)                      # fat
    kidney = ellipsoid(shape, (20, 24, 20), (12, 8, 7))
    hu[kidney] = kidney_hu
    hu[:, 40:, 28:36] = 500                                   # bone behind
    labels = kidney.astype(np.uint8)
    hu += np.random.default_rng(1).normal(0, 8, shape).astype(np.float32)
    return hu, labels


def shapes():
    lab = np.zeros((20, 20, 20), np.uint8)
    lab[ellipsoid(lab.shape, (10, 10, 10), (4, 3, 3))] = 2
    lab[0:1, 0:1, 0:2] = 2  # a speck: too small to be a shape
    return tumor_shapes([lab])


def test_tumor_shapes_skip_specks():
    got = shapes()
    assert len(got) == 1 and got[0].sum() > 50


def test_insert_tumor_labels_a_tumor_in_or_on_the_kidney_only():
    hu, labels = scene()
    for seed in range(6):
        rng = np.random.default_rng(seed)
        new_hu, lab, desc = insert_tumor(hu, labels, shapes(), rng)
        tumor = lab == 2
        assert tumor.sum() >= 4, desc
        assert not (tumor & (hu > 300)).any()                 # never into bone
        from scipy import ndimage
        assert (ndimage.binary_dilation(lab == 1) & tumor).any()  # touches the remaining kidney
        assert set(np.unique(lab)) <= {0, 1, 2}
        far = ~ndimage.binary_dilation(tumor, iterations=4)
        assert np.allclose(new_hu[far], hu[far])              # only the tumor's neighbourhood changes
        assert desc["appearance"] in ("hypo", "iso", "hyper", "necrotic", "cystic")


@pytest.mark.parametrize("appearance,check", [
    ("hypo", lambda t, k: t < k - 20), ("cystic", lambda t, k: t < 35), ("hyper", lambda t, k: t > k + 15),
    ("iso", lambda t, k: abs(t - k) < 30)])
def test_tumor_appearance_relative_to_the_enhanced_kidney(appearance, check):
    hu, labels = scene(180.0)
    kidney = labels == 1
    tumor = kidney & ellipsoid(hu.shape, (20, 24, 20), (5, 4, 4))
    new, app = tumor_hu(hu, kidney, tumor, np.random.default_rng(3), appearance)
    core = tumor & ellipsoid(hu.shape, (20, 24, 20), (3, 2, 2))
    assert app == appearance and check(float(np.median(new[core])), 180.0)


def test_exophytic_tumor_grows_out_of_the_kidney_but_not_into_forbidden_voxels():
    hu, labels = scene()
    kidney = labels == 1
    forbidden = np.zeros_like(kidney)
    forbidden[:, :, 27:] = True
    out = place_tumor(kidney, forbidden, shapes()[0], np.random.default_rng(0), exophytic=True)
    assert out.any() and not (out & forbidden).any()
    assert (out & ~kidney).any()


def test_layout_from_labelmap_maps_organs_and_splits_kidney_and_fat():
    hu, labels = scene(40.0)
    organs = np.zeros(hu.shape, np.uint8)
    organs[labels == 1] = 2                                   # kidney_right (TotalSegmentator id)
    organs[:, 5:12, 40:60] = 5                                # liver
    hu[:, 5:12, 40:60] = 60
    organs[:, 40:, 28:36] = 30                                # vertebra
    layout, kid = layout_from_labelmap(hu, organs, (3.0, 3.0, 3.0), np.random.default_rng(0))
    assert np.array_equal(kid, labels)
    assert (layout[organs == 5] == T["liver"]).all()
    assert set(np.unique(layout[labels == 1])) <= {T["cortex"], T["medulla"], T["urine"]}
    assert (layout[labels == 1] == T["cortex"]).any()
    assert np.isin(layout[organs == 30], [T["cortical_bone"], T["cancellous"]]).all()
    assert (layout[(hu < -60) & (organs == 0) & (layout != T["air"])] != T["muscle"]).all()
    tumored, lab, desc = layout_with_tumor(layout, hu, kid, shapes(), np.random.default_rng(2))
    assert (lab == 2).any() and np.isin(tumored[lab == 2], [T["tumor"], T["necrosis"]]).all()


def test_crop_around_keeps_every_label():
    lab = np.zeros((120, 200, 200), np.uint8)
    lab[30:60, 50:80, 20:40] = 1
    lab[40:70, 60:90, 150:170] = 1
    box = crop_around(lab)
    assert lab[box].sum() == lab.sum()
    assert lab[box].shape[0] <= 120 and lab[box].shape[2] >= 150
