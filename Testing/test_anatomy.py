"""Padded per-structure crops: the one cropping step surfaces and measurements share."""
from __future__ import annotations

import numpy as np
import pytest

from SculptorGANLib.core.anatomy import (CROP_MARGIN, bounding_box, padded_crop, padded_structure_crops, split_structures,
                                    structure_crops)
from SculptorGANLib.synthetic.phantom import make_phantom


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(shape=(48, 64, 64), spacing=(2.5, 5.0, 5.0), seed=3)


def test_padded_crop_surrounds_the_box_with_zeros():
    array = np.arange(5 * 6 * 7).reshape(5, 6, 7)
    crop, offset = padded_crop(array, np.array([1, 2, 3]), np.array([4, 5, 6]), margin=1)
    assert crop.shape == (5, 5, 5) and list(offset) == [0, 1, 2]
    assert np.array_equal(crop[1:-1, 1:-1, 1:-1], array[1:4, 2:5, 3:6])
    crop[1:-1, 1:-1, 1:-1] = 0
    assert not crop.any()


def test_padded_structure_crops_are_tight_boxes_plus_margin(phantom):
    ct, labels = phantom
    full = split_structures(labels, ct.array)
    padded = padded_structure_crops(labels, ct.array)
    assert set(padded) == set(full) >= {"kidney_left", "kidney_right", "tumor"}
    for name, (mask, offset) in padded.items():
        lo, hi = bounding_box(full[name])
        assert list(offset) == list(lo - CROP_MARGIN)
        assert mask.shape == tuple(hi - lo + 2 * CROP_MARGIN)
        inner = (slice(CROP_MARGIN, -CROP_MARGIN),) * 3
        assert np.array_equal(mask[inner], full[name][lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
        assert mask.sum() == full[name].sum()


def test_padded_structure_crops_reuse_given_crops(phantom):
    ct, labels = phantom
    crops = structure_crops(labels, ct.array)
    again = padded_structure_crops(labels, crops=crops)  # no CT: the split must come from ``crops``
    reference = padded_structure_crops(labels, ct.array)
    assert set(again) == set(reference)
    for name in reference:
        assert np.array_equal(again[name][0], reference[name][0])
        assert np.array_equal(again[name][1], reference[name][1])
