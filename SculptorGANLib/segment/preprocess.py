"""The segmentation model's view of a CT, shared by inference, training, synthesis and evaluation.

A volume is resampled onto its *canonical grid* — identity LPS direction, the model card's spacing,
covering the volume's bounding box (:func:`to_canonical`) — and its HU are windowed to [-1, 1]
(:func:`normalize_window`); network outputs go back to the input grid with :func:`probabilities_to_grid`.
"""
from __future__ import annotations


import numpy as np
import SimpleITK as sitk

from ..core.volume import KIDNEY, TUMOR, Geometry, Volume
from ..io.sitk_bridge import image_from_array, reference_image

DEFAULT_WINDOW = (-200.0, 400.0)
DEFAULT_SPACING = (3.0, 3.0, 3.0)


# ----------------------------------------------------------------------------- canonical grid
def canonical_geometry(geometry: Geometry, shape_zyx: tuple[int, int, int], spacing) -> tuple[Geometry, tuple[int, int, int]]:
    """Identity-direction geometry at ``spacing`` (x, y, z mm) covering the grid's bounding box."""
    nz, ny, nx = shape_zyx
    corners = np.array([[i, j, k] for i in (0, nx - 1) for j in (0, ny - 1) for k in (0, nz - 1)], float)
    pts = geometry.index_to_physical(corners)
    lo, hi = pts.min(0), pts.max(0)
    spacing = np.asarray(spacing, float)
    size = np.floor((hi - lo) / spacing + 1e-6).astype(int) + 1
    return Geometry(tuple(spacing), tuple(lo)), (int(size[2]), int(size[1]), int(size[0]))


def resample_array(array: np.ndarray, src: Geometry, dst: Geometry, dst_shape_zyx, *, label: bool = False,
                   default: float = 0.0) -> np.ndarray:
    """``array`` on ``src`` resampled onto ``dst`` (linear, or nearest-neighbour for labels)."""
    image = image_from_array(array, src)
    ref = reference_image(dst_shape_zyx, dst, image.GetPixelID())
    interp = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    out = sitk.Resample(image, ref, sitk.Transform(), interp, float(default), image.GetPixelID())
    return sitk.GetArrayFromImage(out)


def to_canonical(volume: Volume, spacing, *, label: bool = False, default: float = 0.0) -> tuple[np.ndarray, Geometry]:
    """The volume's array on its canonical grid (see module doc) and that grid's geometry."""
    geo, shape = canonical_geometry(volume.geometry, volume.shape, spacing)
    return resample_array(volume.array, volume.geometry, geo, shape, label=label, default=default), geo




def normalize_window(hu: np.ndarray, window=DEFAULT_WINDOW) -> np.ndarray:
    """HU clipped to ``window`` and mapped linearly to [-1, 1] (float32)."""
    lo, hi = float(window[0]), float(window[1])
    return ((np.clip(hu, lo, hi) - lo) * (2.0 / (hi - lo)) - 1.0).astype(np.float32)


def _slab_geometry(geometry: Geometry, k0: int) -> Geometry:
    origin = geometry.index_to_physical(np.array([[0.0, 0.0, float(k0)]]))[0]
    return Geometry(geometry.spacing, tuple(origin), geometry.direction)


def dst_box(src: Geometry, src_lo, src_hi, dst: Geometry, dst_shape, margin: int = 2) -> tuple[slice, ...]:
    """The (z, y, x) index box of ``dst`` covering the ``src`` index box [lo, hi) (zyx) plus ``margin``."""
    lo, hi = np.asarray(src_lo, float) - 1, np.asarray(src_hi, float)  # one source voxel of interpolation support
    corners = np.array([[x, y, z] for z in (lo[0], hi[0]) for y in (lo[1], hi[1]) for x in (lo[2], hi[2])])
    pts = src.index_to_physical(corners)
    affine = dst.affine_lps()
    ijk = (pts - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T
    a = np.floor(ijk.min(0))[::-1].astype(int) - margin
    b = np.ceil(ijk.max(0))[::-1].astype(int) + margin + 1
    return tuple(slice(int(max(0, x)), int(min(n, y))) for x, y, n in zip(a, b, dst_shape))


def probabilities_to_grid(fg: np.ndarray, tumor_frac: np.ndarray, src: Geometry, dst: Geometry,
                          dst_shape: tuple[int, int, int], slab: int = 32) -> np.ndarray:
    """Labels on ``dst`` from foreground probability and tumor fraction on ``src`` (linear, slab by slab)."""
    out = np.zeros(dst_shape, dtype=np.uint8)
    fg_img, tu_img = image_from_array(fg.astype(np.float32), src), image_from_array(tumor_frac.astype(np.float32), src)
    nz, ny, nx = dst_shape
    for k0 in range(0, nz, slab):
        k1 = min(nz, k0 + slab)
        ref = reference_image((k1 - k0, ny, nx), _slab_geometry(dst, k0))
        f = sitk.GetArrayFromImage(sitk.Resample(fg_img, ref, sitk.Transform(), sitk.sitkLinear, 0.0))
        t = sitk.GetArrayFromImage(sitk.Resample(tu_img, ref, sitk.Transform(), sitk.sitkLinear, 0.0))
        part = np.where(f > 0.5, KIDNEY, 0).astype(np.uint8)
        part[(f > 0.5) & (t > 0.5)] = TUMOR
        out[k0:k1] = part
    return out
