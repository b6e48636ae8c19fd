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
    plain = CTVolume(np.where(labels.array == 1, 35.0, ct.array).astype(np.float32), ct.geometry, name="plain")
    _, info_plain = segment(plain)
    assert info_plain["contrast"] in ("non-contrast", "unknown")
    if info_plain["contrast"] == "non-contrast":
        assert any("non-contrast" in note for note in info_plain["notes"])
