"""The pipeline end to end on a small phantom: geometry, progress, cancel, input untouched."""
from __future__ import annotations

import numpy as np
import pytest

from SculptorGANLib.errors import CancelledError, SculptorGANError
from SculptorGANLib.phantom import drop_slices, thick_slices
from SculptorGANLib.pipeline import PipelineOptions, run_pipeline


@pytest.fixture(scope="module")
def thick_input(small_phantom):
    ct, _ = small_phantom
    return drop_slices(thick_slices(ct, 2), (7,))


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


def test_left_right_split_done_once_per_run(small_phantom, tmp_path, monkeypatch):
    """Surfaces, measurements, the .seg.nrrd and the report share one kidney split, and surfaces and
    measurements one padding of its crops."""
    from SculptorGANLib import anatomy
    from SculptorGANLib.results import write_results

    ct, _ = small_phantom
    calls, pads = [], []
    original, original_pad = anatomy.component_centroids, anatomy.pad_crops
    monkeypatch.setattr(anatomy, "component_centroids", lambda mask: calls.append(1) or original(mask))
    monkeypatch.setattr(anatomy, "pad_crops", lambda crops: pads.append(1) or original_pad(crops))
    result = run_pipeline(ct, PipelineOptions(steps=("segment", "surfaces"), device="cpu"))
    write_results(result, tmp_path / "out")
    assert {"kidney_left", "kidney_right"} <= set(result.meshes)
    assert len(calls) == 1
    assert len(pads) == 1
