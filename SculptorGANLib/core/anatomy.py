"""Anatomical helpers on labelmaps: patient left/right from geometry, components, (padded) crops."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .volume import KIDNEY, TUMOR, Geometry, LabelVolume

#: Structure name → (boolean mask crop, zyx offset of the crop in the full grid).
StructureCrops = dict[str, tuple[np.ndarray, np.ndarray]]
#: Zero voxels around each padded structure crop: contours close, and a structure's boundary voxels
#: see their neighbours (contact areas) inside the crop.
CROP_MARGIN = 2


def physical_x(geometry: Geometry, shape: tuple[int, int, int], zyx: np.ndarray) -> np.ndarray:
    """LPS x (+ = patient left) of (N, 3) voxel indices given in (z, y, x) order."""
    return geometry.index_to_physical(np.asarray(zyx, dtype=float)[:, ::-1])[:, 0]


def bounding_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(lo, hi) zyx bounds (hi exclusive) of the non-zero voxels, from axis projections; None if empty."""
    bounds = []
    for axis in range(3):
        hit = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(3) if a != axis)))
        if hit.size == 0:
            return None
        bounds.append((hit[0], hit[-1] + 1))
    lo, hi = np.array(bounds).T
    return lo, hi


def shifted_geometry(geometry: Geometry, offset_zyx: np.ndarray) -> Geometry:
    """Geometry of a sub-grid whose voxel (0, 0, 0) is voxel ``offset_zyx`` of ``geometry``'s grid."""
    origin = geometry.index_to_physical(np.asarray(offset_zyx, dtype=float)[::-1])
    return Geometry(geometry.spacing, tuple(origin), geometry.direction)


def component_centroids(mask: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """Connected components (26-connectivity): (labels, count, (count, 3) centroids in zyx)."""
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    index = np.nonzero(components)
    ids = components[index]
    sizes = np.bincount(ids, minlength=count + 1)[1:]
    centroids = np.stack([np.bincount(ids, weights=axis_index, minlength=count + 1)[1:] / np.maximum(sizes, 1)
                          for axis_index in index], axis=1) if count else np.zeros((0, 3))
    return components, count, centroids


def body_midline_x(ct_array: np.ndarray | None, geometry: Geometry, shape: tuple[int, int, int]) -> float:
    """LPS x of the body's midline: the centroid of tissue above -500 HU (grid centre without a CT)."""
    if ct_array is not None:
        body = ct_array[::2, ::2, ::2] > -500  # every other voxel is plenty for a centroid
        if body.any():
            centre = np.asarray(ndimage.center_of_mass(body)) * 2
            return float(physical_x(geometry, shape, centre[None])[0])
    centre = (np.asarray(shape, dtype=float) - 1) / 2
    return float(physical_x(geometry, shape, centre[None])[0])


def structure_crops(labels: LabelVolume, ct_array: np.ndarray | None = None) -> StructureCrops:
    """Each structure as (boolean mask cropped to the labels' bounding box, zyx offset of the crop).

    Structures: 'kidney_left', 'kidney_right', 'tumor' and any further label by its name (empty ones
    omitted). Kidney voxels go to the patient's left or right by the physical x of their connected
    component against the body midline, so the result does not depend on array orientation.
    """
    box = bounding_box(labels.array)
    if box is None:
        return {}
    lo, hi = box
    arr = labels.array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    out: dict[str, np.ndarray] = {}
    kidney = arr == KIDNEY
    if kidney.any():
        components, count, centroids = component_centroids(kidney)
        midline = body_midline_x(ct_array, labels.geometry, labels.shape)
        xs = physical_x(shifted_geometry(labels.geometry, lo), arr.shape, centroids)
        left = np.isin(components, [i + 1 for i in range(count) if xs[i] > midline])
        if left.any():
            out["kidney_left"] = left
        if (kidney & ~left).any():
            out["kidney_right"] = kidney & ~left
    if (arr == TUMOR).any():
        out["tumor"] = arr == TUMOR
    for value, name in labels.labels.items():
        if value not in (KIDNEY, TUMOR) and (arr == value).any():
            out[name] = arr == value
    return {name: (mask, lo) for name, mask in out.items()}


def padded_crop(array: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                margin: int = CROP_MARGIN) -> tuple[np.ndarray, np.ndarray]:
    """``array[lo:hi]`` surrounded by ``margin`` zero voxels; returns it and its offset (zyx, may be < 0)."""
    sub = array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    out = np.zeros(tuple(np.asarray(sub.shape) + 2 * margin), dtype=sub.dtype)
    out[margin:-margin, margin:-margin, margin:-margin] = sub
    return out, np.asarray(lo) - margin


def pad_crops(crops: StructureCrops) -> StructureCrops:
    """Each crop of :func:`structure_crops` output cut to its own structure's box plus :data:`CROP_MARGIN`."""
    padded = {}
    for name, (mask, offset) in crops.items():
        crop, sub_offset = padded_crop(mask, *bounding_box(mask))
        padded[name] = (crop, sub_offset + offset)
    return padded


def padded_structure_crops(labels: LabelVolume, ct_array: np.ndarray | None = None,
                           crops: StructureCrops | None = None) -> StructureCrops:
    """Each structure as (its own tight crop padded with zeros, zyx offset) — what surfaces and
    measurements consume. ``crops``: a :func:`structure_crops` result to reuse (else split here)."""
    return pad_crops(structure_crops(labels, ct_array) if crops is None else crops)


def crops_to_full(crops: StructureCrops, shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """Full-grid boolean masks from :func:`structure_crops` output."""
    full = {}
    for name, (mask, lo) in crops.items():
        grid = np.zeros(shape, bool)
        grid[lo[0]:lo[0] + mask.shape[0], lo[1]:lo[1] + mask.shape[1], lo[2]:lo[2] + mask.shape[2]] = mask
        full[name] = grid
    return full


def split_structures(labels: LabelVolume, ct_array: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Full-grid boolean masks for 'kidney_left', 'kidney_right', 'tumor' (see :func:`structure_crops`)."""
    return crops_to_full(structure_crops(labels, ct_array), labels.shape)
