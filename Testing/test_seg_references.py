"""Real-CT reference tooling (training/references) on synthetic stand-ins: no ../shared/data needed."""
import numpy as np
import pytest
import SimpleITK as sitk

from SculptorGANLib.core.volume import CTVolume, Geometry
from training.references import build, score
from training.references.data import read_canonical


def kidney_scene():
    """Fat body with a 40 HU ellipsoid 'kidney', a thin fat rim, and a 40 HU 'liver' touching one corner."""
    ct = np.full((30, 40, 40), -100, np.float32)
    z, y, x = np.ogrid[:30, :40, :40]
    kidney = ((z - 15) / 9.0) ** 2 + ((y - 20) / 7.0) ** 2 + ((x - 20) / 6.0) ** 2 <= 1
    ct[kidney] = 40
    ct[:, 30:, 30:] = 45  # neighbour outside the ellipse but inside the box corner
    ct += np.random.default_rng(0).normal(0, 5, ct.shape).astype(np.float32)
    return ct, kidney


def test_grow_recovers_the_kidney_and_ellipse_keeps_box_corners_out():
    ct, kidney = kidney_scene()
    params = {"keys": [[5, 12, 33, 11, 33], [25, 12, 33, 11, 33]], "hu": [-30, 70], "sigma": 0.7,
              "seeds": [[15, 20, 20]], "open": 1, "regrow": 1, "close": 1, "ellipse": 1.15}
    m = build.grow(ct, params)
    dice = 2 * (m & kidney).sum() / (m.sum() + kidney.sum())
    assert dice > 0.9
    assert not m[:, 32:, 32:].any()  # the box corner with the neighbour is excluded by the ellipse
    with pytest.raises(ValueError, match="seed"):
        build.grow(ct, {**params, "seeds": [[15, 2, 2]]})


def test_box_mask_interpolates_between_key_slices():
    m = build.box_mask((10, 20, 20), [[0, 0, 4, 0, 4], [8, 0, 12, 0, 12]])
    assert m[0].sum() == 25 and m[8].sum() == 169 and 25 < m[4].sum() < 169 and not m[9].any()


def test_build_all_writes_labelmap_and_grown_references(tmp_path, monkeypatch):
    ct, kidney = kidney_scene()
    for rel in ("ct_a.nii.gz", "ct_b.nii.gz"):
        img = sitk.GetImageFromArray(ct)
        img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))  # RAS-like storage: flipped on reading
        sitk.WriteImage(img, str(tmp_path / rel))
    organs = np.zeros(ct.shape, np.uint8)
    organs[kidney & (np.arange(40) < 20)[None, None, :]] = 7
    organs[kidney & (np.arange(40) >= 20)[None, None, :]] = 8
    img = sitk.GetImageFromArray(organs)
    img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    sitk.WriteImage(img, str(tmp_path / "labels.nii.gz"))
    flipped = sitk.GetArrayFromImage(read_canonical(tmp_path / "ct_a.nii.gz"))
    assert np.array_equal(flipped, ct[:, ::-1, ::-1])
    monkeypatch.setattr(build, "CASES", {"a": "ct_a.nii.gz", "b": "ct_b.nii.gz"})
    grow = {"keys": [[5, 6, 28, 6, 28], [25, 6, 28, 6, 28]], "hu": [-30, 70], "seeds": [[15, 20, 20]],
            "open": 1, "regrow": 1, "close": 1, "ellipse": 1.15}
    params = {"a": {"right": grow},
              "b": {"labels": "labels.nii.gz", "right": {"ids": [7]}, "left": {"ids": [8]}}}
    monkeypatch.setattr(build.json, "loads", lambda _text: params)
    vols = build.build_all(tmp_path / "refs", tmp_path, ["a", "b"])
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "refs" / "b_kidneys.nii.gz")))
    assert set(np.unique(b)) == {0, 1, 2} and vols["b"]["right"] > 0 and vols["b"]["left"] > 0
    assert vols["a"]["right"] > 0.9 * kidney.sum() / 1000


def test_score_labels_dice_volumes_false_tumor_and_sides():
    geo = Geometry((2.0, 2.0, 2.0))
    ct = np.full((20, 30, 40), 40, np.float32)
    ref = np.zeros(ct.shape, np.uint8)
    ref[5:15, 10:20, 4:12] = 1     # right kidney at low x (identity LPS: +x = patient left)
    ref[5:15, 10:20, 28:36] = 2
    vol = CTVolume(ct, geo)
    good = (ref > 0).astype(np.uint8)
    r = score.score_labels(vol, ref, good)
    assert r["kidney_dice"] == 1.0 and r["left_on_left"] == 1.0 and r["right_on_right"] == 1.0
    assert r["false_tumor_ml"] == 0.0 and r["pred_ml"] == r["ref_ml"] == pytest.approx(12.8)
    bad = good.copy()
    bad[5:15, 10:20, 36:40] = 2    # tumor next to the left kidney
    r = score.score_labels(vol, ref, bad)
    assert r["false_tumor_ml"] == pytest.approx(3.2) and r["kidney_dice"] < 1.0
    half = good.copy()
    half[:10] = 0
    r = score.score_labels(vol, ref, half, partial=True)
    assert r["kidney_dice"] == pytest.approx(2 * 5 / 15, abs=1e-3)
    md = score.markdown({"x": {**r, "rules": ["cut 3 ml"]}}, "t")
    assert "| x | 0.667" in md and "cut 3 ml" in md
