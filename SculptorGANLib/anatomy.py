"""Anatomical helpers on labelmaps: patient left/right from geometry, connected components."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .volume import KIDNEY, TUMOR, Geometry, LabelVolume


def physical_x(geometry: Geometry, shape: tuple[int, int, int], zyx: np.ndarray) -> np.ndarray:
    """LPS x (+ = patient left) of (N, 3) voxel indices given in (z, y, x) order."""
    return geometry.index_to_physical(np.asarray(zyx, dtype=float)[:, ::-1])[:, 0]


def component_centroids(mask: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """Connected components (26-connectivity): (labels, count, (count, 3) centroids in zyx)."""
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return components, 0, np.zeros((0, 3))
    centroids = np.asarray(ndimage.center_of_mass(mask, components, range(1, count + 1)))
    return components, count, centroids


def body_midline_x(ct_array: np.ndarray | None, geometry: Geometry, shape: tuple[int, int, int]) -> float:
    """LPS x of the body's midline: the centroid of tissue above -500 HU (grid centre without a CT)."""
    if ct_array is not None:
        body = ct_array > -500
        if body.any():
            centre = np.asarray(ndimage.center_of_mass(body))[None]
            return float(physical_x(geometry, shape, centre)[0])
    centre = (np.asarray(shape, dtype=float) - 1) / 2
    return float(physical_x(geometry, shape, centre[None])[0])


def split_structures(labels: LabelVolume, ct_array: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Binary masks for 'kidney_left', 'kidney_right' and 'tumor' (empty structures omitted).

    Kidney voxels are assigned to the patient's left or right by the physical x of their connected
    component relative to the body midline, so the result does not depend on array orientation.
    """
    arr = labels.array
    out: dict[str, np.ndarray] = {}
    kidney = arr == KIDNEY
    if kidney.any():
        components, count, centroids = component_centroids(kidney)
        midline = body_midline_x(ct_array, labels.geometry, labels.shape)
        xs = physical_x(labels.geometry, labels.shape, centroids)
        left_ids = [i + 1 for i in range(count) if xs[i] > midline]
        left = np.isin(components, left_ids)
        if left.any():
            out["kidney_left"] = left
        right = kidney & ~left
        if right.any():
            out["kidney_right"] = right
    tumor = arr == TUMOR
    if tumor.any():
        out["tumor"] = tumor
    for value, name in labels.labels.items():  # any further labels keep their own names
        if value not in (KIDNEY, TUMOR) and (arr == value).any():
            out[name] = arr == value
    return out
