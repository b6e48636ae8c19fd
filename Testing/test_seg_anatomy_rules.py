"""Anatomy rules of the segmentation stage (segment/anatomy_rules.py) on small synthetic scenes."""
import numpy as np

from SculptorGANLib.core.volume import KIDNEY, TUMOR, Geometry
from SculptorGANLib.segment.anatomy_rules import apply_rules, landmarks, tumor_on_kidney

GEO = Geometry((3.0, 3.0, 3.0))  # identity LPS: +x patient left, +y posterior, +z superior


def ball(arr, c, r, value):
    z, y, x = np.ogrid[: arr.shape[0], : arr.shape[1], : arr.shape[2]]
    arr[((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) <= r * r] = value


def abdomen(nz=80):
    """A 60x80 voxel (180x240 mm) body, spine at y 40-48 in the midline x 40, soft tissue 40 HU."""
    hu = np.full((nz, 60, 80), -1000, np.float32)
    yy, xx = np.ogrid[:60, :80]
    hu[:, ((yy - 30) / 26.0) ** 2 + ((xx - 40) / 36.0) ** 2 <= 1] = 40
    hu[:, 40:48, 36:45] = 400  # vertebral column
    return hu


def kidneys(nz=80):
    lab = np.zeros((nz, 60, 80), np.uint8)
    ball(lab, (40, 44, 18), 8, KIDNEY)  # right (low x), beside the spine
    ball(lab, (40, 44, 62), 8, KIDNEY)  # left
    return lab


def test_landmarks_find_midline_and_spine():
    lm = landmarks(abdomen(), GEO)
    assert abs(lm["mid_x"] - 40) < 1.5
    assert 39 <= lm["spine_y"] <= 47
    assert lm["dome_z"] is None  # no lung in view


def test_clean_kidneys_are_left_alone():
    lab = kidneys()
    out, notes = apply_rules(lab, abdomen(), GEO)
    assert np.array_equal(out, lab) and notes == []


def test_leak_longer_than_a_kidney_is_cut_and_reported():
    lab = kidneys(110)
    lab[40:100, 40:48, 58:66] = KIDNEY  # a tube running 180 mm up from the left kidney: 204 mm in all
    out, notes = apply_rules(lab, abdomen(110), GEO)
    assert any("longer than 160 mm" in n for n in notes), notes
    assert out[97, 44, 62] == 0          # far end of the leak removed
    assert out[40, 44, 62] == KIDNEY     # the kidney itself kept
    assert out[40, 44, 18] == KIDNEY


def test_large_tumor_is_not_cut_by_the_length_rule():
    lab = kidneys()
    ball(lab, (40, 44, 62), 8, KIDNEY)
    lab[5:34, 38:50, 56:68] = TUMOR  # a long tumor below the kidney, touching it
    hu = abdomen()
    hu[lab > 0] = 180                # enhanced scan
    out, notes = apply_rules(lab, hu, GEO)
    assert not any("longer than" in n for n in notes)
    assert (out == TUMOR).sum() == (lab == TUMOR).sum()


def test_candidate_beside_the_spine_wins_over_a_larger_anterior_blob():
    lab = kidneys()
    lab[lab > 0] = 0
    ball(lab, (40, 44, 62), 6, KIDNEY)   # true left kidney beside the spine
    ball(lab, (40, 12, 62), 9, KIDNEY)   # larger blob far in front (bowel): 54 mm anterior of the spine
    out, notes = apply_rules(lab, abdomen(), GEO)
    assert out[40, 44, 62] == KIDNEY and out[40, 12, 62] == 0
    assert any("passed over a larger candidate" in n for n in notes)


def test_tumor_needs_contact_with_a_kidney():
    lab = kidneys()
    ball(lab, (40, 20, 62), 4, TUMOR)    # separate tumor blob: no contact
    lab[40:44, 44, 70:72] = TUMOR         # tumor inside/on the left kidney's edge: kept
    out, notes = tumor_on_kidney(lab, 0.027, 0.08)
    assert out[40, 20, 62] == 0 and out[41, 44, 70] == TUMOR
    assert any("not in or on a kidney" in n for n in notes)


def test_label_above_the_liver_dome_is_removed():
    hu = abdomen(100)
    yy, xx = np.ogrid[:60, :80]
    lung = ((yy - 30) / 20.0) ** 2 + ((xx - 40) / 30.0) ** 2 <= 1
    hu[85:, lung] = -850                  # lungs fill the body from slice 85 up
    lab = kidneys(100)
    ball(lab, (90, 44, 62), 3, KIDNEY)    # a false positive among the lungs
    out, notes = apply_rules(lab, hu, GEO)
    assert landmarks(hu, GEO)["dome_z"] == 85
    assert out[90, 44, 62] == 0 and out[40, 44, 62] == KIDNEY
    assert any("liver dome" in n for n in notes)


def test_tube_shaped_tumor_beside_the_kidney_is_dropped_only_on_non_contrast_scans():
    lab = kidneys()
    lab[28:54, 42:47, 67:71] = TUMOR       # a 78 mm long bowel-like tube along the left kidney's side
    hu = abdomen()
    hu[lab > 0] = 30                       # non-contrast kidney
    out, notes = apply_rules(lab, hu, GEO)
    assert (out == TUMOR).sum() == 0 and any("tube-shaped" in n for n in notes), notes
    hu[lab > 0] = 180                      # enhanced: the network's tumor shape is trusted
    out, notes = apply_rules(lab, hu, GEO)
    assert (out == TUMOR).sum() == (lab == TUMOR).sum()


def test_round_tumor_on_a_non_contrast_kidney_is_kept():
    lab = kidneys()
    ball(lab, (40, 44, 70), 4, TUMOR)
    hu = abdomen()
    hu[lab > 0] = 30
    out, _ = apply_rules(lab, hu, GEO)
    assert (out == TUMOR).sum() == (lab == TUMOR).sum()


def test_fat_inside_the_kidney_label_becomes_background_and_removed_voxels_stay_removed():
    from SculptorGANLib.core.volume import CTVolume
    from SculptorGANLib.segment.inference import labels_from_probabilities

    lab = kidneys()
    hu = abdomen()
    hu[lab > 0] = 180
    hu[36:44, 42:46, 60:64] = -100         # renal-sinus-like fat the network labelled kidney
    probs = np.zeros((3,) + lab.shape, np.float32)
    probs[0] = 1.0
    probs[1][lab == KIDNEY] = 0.9
    probs[0][lab == KIDNEY] = 0.1
    ct = CTVolume(hu, GEO)
    out, _ = labels_from_probabilities(probs, hu, GEO, ct)
    assert out[40, 44, 62] == 0 and out[40, 44, 18] == KIDNEY and out[40, 50, 62] == KIDNEY
    kept, _ = labels_from_probabilities(probs, hu, GEO, ct, fat_hu=None)
    assert kept[40, 44, 62] == KIDNEY


def test_mapping_back_only_around_the_labels_equals_the_whole_grid(oblique_geometry, monkeypatch):
    """The input-grid box used to map labels back covers everything the whole-grid mapping labels."""
    import SculptorGANLib.segment.preprocess as pp
    from SculptorGANLib.core.volume import CTVolume
    from SculptorGANLib.segment.inference import labels_from_probabilities
    from SculptorGANLib.segment.preprocess import to_canonical

    hu_in = np.full((60, 90, 100), -100.0, np.float32)
    ct = CTVolume(hu_in, oblique_geometry)
    hu, geo = to_canonical(ct, (3.0, 3.0, 3.0), default=-1024.0)
    lab = np.zeros(hu.shape, np.uint8)
    c = np.array(hu.shape) // 2
    ball(lab, tuple(c), 5, KIDNEY)
    ball(lab, tuple(c + [0, 0, 2]), 2, TUMOR)
    probs = np.zeros((3,) + hu.shape, np.float32)
    probs[0] = 1.0
    for value in (KIDNEY, TUMOR):
        probs[value][lab == value] = 0.9
        probs[0][lab == value] = 0.1
    hu[lab > 0] = 180.0
    box, _ = labels_from_probabilities(probs, hu, geo, ct, anatomy=False, fat_hu=None)
    monkeypatch.setattr(pp, "dst_box", lambda src, lo, hi, dst, shape, margin=2: tuple(slice(0, n) for n in shape))
    full, _ = labels_from_probabilities(probs, hu, geo, ct, anatomy=False, fat_hu=None)
    assert (full > 0).sum() > 100 and (full == TUMOR).any()
    assert np.array_equal(box, full)
