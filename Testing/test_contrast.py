"""Contrast-phase check from the HU inside the kidneys, and its note in the segment stage."""
import numpy as np

from SculptorGANLib.segment.contrast import contrast_note, contrast_phase, kidney_median_hu
from SculptorGANLib.segment.stage import segment
from SculptorGANLib.core.volume import CTVolume


def _kidney_block(hu: float) -> tuple[np.ndarray, np.ndarray]:
    ct = np.full((20, 20, 20), -100.0, np.float32)
    labels = np.zeros(ct.shape, np.uint8)
    labels[5:15, 5:15, 5:15] = 1
    ct[5:15, 5:15, 5:15] = hu
    ct[5, 5:15, 5:15] = -100.0  # partial-volume edge: the erosion keeps it out of the median
    return ct, labels


def test_kidney_median_and_phase():
    for hu, phase in ((35.0, "non-contrast"), (180.0, "enhanced")):
        ct, labels = _kidney_block(hu)
        median = kidney_median_hu(ct, labels)
        assert median == hu
        assert contrast_phase(median) == phase
    assert contrast_note(180.0) is None
    assert "non-contrast" in contrast_note(35.0)


def test_no_kidney_gives_no_verdict():
    ct, labels = _kidney_block(35.0)
    assert kidney_median_hu(ct, np.zeros_like(labels)) is None
    assert contrast_phase(None) == "unknown" and contrast_note(None) is None


def test_segment_reports_phase(small_phantom):
    ct, _ = small_phantom
    labels, info = segment(ct)
    assert info["contrast"] == "enhanced"  # the phantom's kidneys are drawn contrast-enhanced
    assert info["kidney_median_hu"] > 80



def test_segment_stage_adds_the_non_contrast_note_and_the_rules(small_phantom, monkeypatch):
    """The stage measures the kidneys the network returned: kidneys at 35 HU must give the note, always."""
    import SculptorGANLib.segment.stage as stage

    ct, truth = small_phantom
    plain = CTVolume(np.where(truth.array > 0, 35.0, ct.array).astype(np.float32), ct.geometry, name="plain")
    monkeypatch.setattr(stage, "predict_labels",
                        lambda *a, **k: ((truth.array > 0).astype(np.uint8), {"rules": ["cut 3 ml of leak"]}))
    _, info = stage.segment(plain)
    assert info["contrast"] == "non-contrast" and info["kidney_median_hu"] < 80
    assert any("looks non-contrast" in note for note in info["notes"]), info["notes"]
    assert "post-processing: cut 3 ml of leak" in info["notes"]
    _, info = stage.segment(ct)  # the phantom's own (enhanced) kidneys: no note
    assert info["contrast"] == "enhanced" and not any("non-contrast" in n for n in info["notes"])
