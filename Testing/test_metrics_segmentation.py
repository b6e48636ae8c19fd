"""Metrics on shapes with known answers (Dice of shifted cubes, Hausdorff in mm, anisotropic spacing)."""
import math

import numpy as np
import pytest

from SculptorGANLib.measure.metrics import binary_metrics, hausdorff, label_metrics, overlap_metrics


def cube(shape, start, size):
    m = np.zeros(shape, bool)
    m[tuple(slice(s, s + n) for s, n in zip(start, size))] = True
    return m


def test_dice_of_shifted_cubes():
    a = cube((30, 30, 30), (5, 5, 5), (10, 10, 10))
    b = cube((30, 30, 30), (5, 5, 7), (10, 10, 10))  # shifted 2 voxels along x
    m = overlap_metrics(b, a)
    # overlap 10*10*8 = 800 of 1000 each
    assert m["dice"] == pytest.approx(2 * 800 / 2000)
    assert m["jaccard"] == pytest.approx(800 / 1200)
    assert m["precision"] == pytest.approx(0.8)
    assert m["recall"] == pytest.approx(0.8)
    assert m["accuracy"] == pytest.approx(1 - 400 / 27000)


def test_hausdorff_uses_anisotropic_spacing_in_mm():
    a = cube((20, 20, 20), (5, 5, 5), (6, 6, 6))
    b = cube((20, 20, 20), (8, 5, 5), (6, 6, 6))  # shifted 3 voxels along z
    # spacing (x, y, z) = (1, 1, 2.5): a 3-voxel z shift is 7.5 mm
    m = binary_metrics(b, a, spacing_xyz=(1.0, 1.0, 2.5))
    assert m["hd"] == pytest.approx(7.5)
    assert m["hd95"] == pytest.approx(7.5)
    # same shift along x (1 mm voxels) is 3 mm
    c = cube((20, 20, 20), (5, 5, 8), (6, 6, 6))
    assert hausdorff(c, a, (2.5, 1.0, 1.0)) == pytest.approx(3.0)


def test_empty_masks_conventions():
    e = np.zeros((5, 5, 5), bool)
    f = cube((5, 5, 5), (1, 1, 1), (2, 2, 2))
    m = binary_metrics(e, e)
    assert m["dice"] == 1 and m["hd"] == 0
    m = binary_metrics(e, f)
    assert m["dice"] == 0 and math.isnan(m["hd95"])


def test_label_metrics_kidney_includes_tumor():
    truth = np.zeros((10, 10, 10), np.uint8)
    truth[2:6, 2:6, 2:6] = 1
    truth[3:5, 3:5, 3:5] = 2
    pred = truth.copy()
    pred[pred == 2] = 1  # tumor called kidney: kidney (kidney+tumor) perfect, tumor missed
    r = label_metrics(pred, truth)
    assert r["kidney"]["dice"] == pytest.approx(1.0)
    assert r["tumor"]["dice"] == pytest.approx(0.0)
