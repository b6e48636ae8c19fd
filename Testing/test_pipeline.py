"""The pipeline end to end on a small phantom: geometry, progress, cancel, input untouched."""
from __future__ import annotations

import numpy as np
import pytest

from SculptorGANLib.core.errors import CancelledError, SculptorGANError
from SculptorGANLib.synthetic.phantom import thick_slices
from SculptorGANLib.pipeline import PipelineOptions, run_pipeline


@pytest.fixture(scope="module")
def thick_input(small_phantom):
    ct, _ = small_phantom
    return thick_slices(ct, 2).with_missing((7,))


def test_end_to_end(thick_input, small_phantom):
    truth_ct, truth_labels = small_phantom
    before = thick_input.array.copy()
    seen = []
    result = run_pipeline(thick_input, PipelineOptions(factor=2, device="cpu"),
                          progress=lambda f, m: seen.append(f))
    assert np.array_equal(thick_input.array, before)  # input untouched
    assert result.ct.shape == ((thick_input.shape[0] - 1) * 2 + 1,) + thick_input.shape[1:]
    assert result.ct.geometry.spacing == pytest.approx(truth_ct.geometry.spacing)
    assert result.ct.geometry.origin == thick_input.geometry.origin
    assert result.labels is not None and result.ct.same_grid(result.labels)
    assert {"kidney_left", "kidney_right"} <= set(result.meshes)
    assert set(result.methods) == {"interpolate", "segment", "surfaces"}
    assert all(t >= 0 for t in result.timings.values())
    assert seen == sorted(seen) and seen[-1] == 1.0
    n = result.ct.shape[0]
    kidney_pred, kidney_true = result.labels.array[:n] == 1, truth_labels.array[:n] == 1
    dice = 2 * (kidney_pred & kidney_true).sum() / (kidney_pred.sum() + kidney_true.sum())
    assert dice > 0.7, f"kidney Dice {dice:.3f} on the phantom"


def test_cancel_stops_the_run(thick_input):
    with pytest.raises(CancelledError):
        run_pipeline(thick_input, PipelineOptions(factor=2, device="cpu"), cancel=lambda: True)


def test_surfaces_without_segment_is_refused(thick_input):
    with pytest.raises(SculptorGANError, match="segment"):
        run_pipeline(thick_input, PipelineOptions(steps=("surfaces",)))


@pytest.mark.parametrize("kwargs", [dict(factor=0), dict(target_spacing=-1.0), dict(steps=("nope",)),
                                    dict(factor=2, target_spacing=1.0), dict(smoothing=2.0),
                                    dict(overlap=0.95), dict(overlap=-0.1)])
def test_bad_options(kwargs):
    with pytest.raises(SculptorGANError):
        PipelineOptions(**kwargs)


def test_structure_split_is_shared_and_follows_the_labels(small_phantom):
    """Surfaces, measurements and the outputs share one left/right split per labelmap: the result hands out
    the same crops until its labels are replaced, then splits the new labels."""
    from dataclasses import replace

    ct, _ = small_phantom
    result = run_pipeline(ct, PipelineOptions(steps=("segment", "surfaces"), device="cpu"))
    crops = result.structure_crops()
    assert {"kidney_left", "kidney_right"} <= set(crops) <= set(result.meshes) | {"tumor"}
    assert result.structure_crops() is crops and result.padded_structure_crops() is result.padded_structure_crops()
    flipped = replace(result.labels, array=result.labels.array[:, :, ::-1].copy())
    result.labels = flipped
    assert result.structure_crops() is not crops


def test_missing_slices_option_marks_a_copy(small_phantom):
    """``missing_slices`` are marked on a copy of the input and synthesized; a bad index names the range."""
    ct, _ = small_phantom
    thick = thick_slices(ct, 2)
    options = PipelineOptions(steps=("interpolate",), missing_slices=(5,), interpolation_method="linear")
    result = run_pipeline(thick, options)
    assert thick.missing_slices == () and result.input.missing_slices == (5,)
    assert result.ct.shape == thick.shape
    expected = (thick.array[4] + thick.array[6]) / 2  # linear between the neighbours, not the acquired slice
    np.testing.assert_allclose(result.ct.array[5], expected, atol=1.0)
    assert not np.allclose(result.ct.array[5], thick.array[5], atol=1.0)
    with pytest.raises(SculptorGANError, match="inner slices 1"):
        run_pipeline(thick, PipelineOptions(steps=("interpolate",), missing_slices=(0,)))
