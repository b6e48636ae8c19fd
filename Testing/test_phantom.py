"""The phantom is deterministic, anatomically sided, and degrades the way thick CT does."""
from __future__ import annotations

import numpy as np
import pytest

from SculptorGANLib.core.anatomy import split_structures
from SculptorGANLib.core.errors import InputError
from SculptorGANLib.synthetic.phantom import make_phantom, thick_labels, thick_slices


def test_same_seed_same_phantom_other_seed_differs():
    a, la = make_phantom(shape=(24, 48, 48), spacing=(6, 6, 6), seed=5)
    b, lb = make_phantom(shape=(24, 48, 48), spacing=(6, 6, 6), seed=5)
    c, _ = make_phantom(shape=(24, 48, 48), spacing=(6, 6, 6), seed=6)
    assert np.array_equal(a.array, b.array) and np.array_equal(la.array, lb.array)
    assert not np.array_equal(a.array, c.array)


def test_two_kidneys_on_their_anatomical_sides_and_a_tumor(small_phantom):
    ct, labels = small_phantom
    masks = split_structures(labels, ct.array)
    assert set(masks) == {"kidney_left", "kidney_right", "tumor"}
    to_mm = lambda m: labels.geometry.index_to_physical(np.argwhere(m)[:, ::-1].astype(float)).mean(axis=0)  # noqa: E731
    assert to_mm(masks["kidney_left"])[0] > 30  # LPS +x is the patient's left
    assert to_mm(masks["kidney_right"])[0] < -30
    volumes = labels.volumes_ml()
    assert 100 < volumes["kidney"] < 500 and 5 < volumes["tumor"] < 60
    kidney_hu = ct.array[labels.array == 1].mean()
    assert 100 < kidney_hu < 200  # enhancing parenchyma


def test_thick_slices_and_missing(small_phantom):
    ct, labels = small_phantom
    thick = thick_slices(ct, 2)
    assert thick.shape[0] == 24 and thick.spacing[2] == pytest.approx(10.0)
    assert thick.geometry.origin == ct.geometry.origin
    assert thick_labels(labels, 2).shape == thick.shape
    holed = thick.with_missing((5, 9))
    assert holed.missing_slices == (5, 9)
    np.testing.assert_allclose(holed.array[5], (thick.array[4] + thick.array[6]) / 2, atol=1e-3)
    with pytest.raises(InputError):
        thick.with_missing((0,))
