"""Deterministic synthetic abdominal CT with ground-truth kidney/tumor labels.

The phantom is built in physical LPS millimetres (+x = patient left, +y = posterior, +z = superior)
from simple shapes with CT-like Hounsfield units: body wall and fat, spine, psoas and back muscles,
aorta and IVC, liver, spleen, bowel with air, two kidneys (cortex, medulla, fatty sinus) and a renal
tumor. ``make_phantom`` returns the thin-slice truth; ``thick_slices`` and ``CTVolume.with_missing`` make the
degraded inputs the pipeline is meant to repair.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy import ndimage

from ..core.volume import KIDNEY, TUMOR, CTVolume, Geometry, LabelVolume


def _ellipsoid(x, y, z, center, radii) -> np.ndarray:
    return ((x - center[0]) / radii[0]) ** 2 + ((y - center[1]) / radii[1]) ** 2 + ((z - center[2]) / radii[2]) ** 2 <= 1


def _ellipse(x, y, center, radii) -> np.ndarray:
    return ((x - center[0]) / radii[0]) ** 2 + ((y - center[1]) / radii[1]) ** 2 <= 1


def make_phantom(shape: tuple[int, int, int] = (96, 128, 128), spacing: tuple[float, float, float] = (2.5, 2.5, 2.5),
                 seed: int = 0, noise_hu: float = 12.0, tumor_side: str | None = None) -> tuple[CTVolume, LabelVolume]:
    """Synthetic abdominal CT and its labels (1 kidney, 2 tumor) on a thin-slice grid.

    Args:
        shape: array shape (z, y, x).
        spacing: voxel size (x, y, z) in mm.
        seed: random seed; the same seed always gives the same phantom.
        noise_hu: standard deviation of the added Gaussian noise.
        tumor_side: 'left' or 'right' kidney for the tumor; random when None.
    """
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    sx, sy, sz = spacing
    origin = (-(nx - 1) * sx / 2, -(ny - 1) * sy / 2, -(nz - 1) * sz / 2)
    geometry = Geometry(spacing, origin)
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float32) * s + o for n, s, o in
                            zip(shape, (sz, sy, sx), origin[::-1])), indexing="ij")
    jitter = lambda scale: float(rng.uniform(1 - scale, 1 + scale))  # noqa: E731

    hu = np.full(shape, -1000.0, dtype=np.float32)  # air
    body = _ellipse(x, y, (0, 0), (150 * jitter(0.08), 110 * jitter(0.08)))
    hu[body] = -100  # subcutaneous fat
    wall = _ellipse(x, y, (0, 0), (135, 96))
    hu[wall] = 45  # muscle wall
    cavity = _ellipse(x, y, (0, 0), (125, 86))
    hu[cavity] = -90  # visceral fat

    # Organs in the upper abdomen.
    liver = _ellipsoid(x, y, z, (-70, -5, 60 * jitter(0.2)), (70 * jitter(0.1), 70, 90))
    hu[liver & cavity] = 60
    spleen = _ellipsoid(x, y, z, (85, 35, 55), (28, 40, 50 * jitter(0.2)))
    hu[spleen & cavity] = 50
    for _ in range(6):  # bowel loops: wall, fluid content, some air
        c = (rng.uniform(-70, 70), rng.uniform(-70, -20), rng.uniform(-120, 20))
        r = rng.uniform(12, 22)
        loop = _ellipsoid(x, y, z, c, (r, r * 0.8, r * 1.5)) & cavity & ~liver
        hu[loop] = 35
        lumen = _ellipsoid(x, y, z, c, (r * 0.6, r * 0.5, r * 1.1)) & loop
        hu[lumen] = 15 if rng.random() < 0.5 else -850

    # Spine, muscles and vessels (cylinders along z).
    psoas_r = np.clip(8 + (40 - z) * 0.08, 8, 22)
    for side in (-1, 1):
        hu[_ellipse(x, y, (side * 38, 40), (psoas_r, psoas_r * 1.1)) & cavity] = 50
        hu[_ellipse(x, y, (side * 35, 78), (26, 16)) & body] = 55
    hu[_ellipse(x, y, (0, 45), (22, 18))] = 260  # vertebral body
    hu[_ellipse(x, y, (0, 45), (22, 18)) & ~_ellipse(x, y, (0, 45), (19, 15))] = 700  # cortex
    hu[_ellipse(x, y, (0, 72), (9, 8))] = 20  # spinal canal
    hu[_ellipse(x, y, (0, 88), (6, 10))] = 500  # spinous process
    hu[_ellipse(x, y, (12, 20), (11, 11))] = 160  # aorta
    hu[_ellipse(x, y, (-22, 22), (12, 10))] = 140  # inferior vena cava

    # Kidneys: parenchyma (cortex + medulla) labelled, fatty sinus on the medial side not labelled.
    labels = np.zeros(shape, dtype=np.uint8)
    kidney_centers = {}
    for side, name in ((1, "left"), (-1, "right")):
        c = (side * 70 * jitter(0.06), 52 * jitter(0.05), (-10 if side > 0 else -25) * jitter(0.3))
        radii = (27 * jitter(0.1), 22 * jitter(0.1), 52 * jitter(0.1))
        kidney = _ellipsoid(x, y, z, c, radii)
        medulla = _ellipsoid(x, y, z, c, (radii[0] * 0.65, radii[1] * 0.65, radii[2] * 0.8))
        sinus = _ellipsoid(x, y, z, (c[0] - side * radii[0] * 0.55, c[1] - 3, c[2]), (radii[0] * 0.5, 8, radii[2] * 0.35))
        hu[kidney] = 175
        hu[medulla] = 125
        hu[sinus & kidney] = -60
        labels[kidney & ~sinus] = KIDNEY
        kidney_centers[name] = (c, radii)

    side = tumor_side or ("left" if rng.random() < 0.5 else "right")
    c, radii = kidney_centers[side]
    sign = 1 if side == "left" else -1
    direction = np.array([sign * 0.9, 0.1, rng.uniform(-0.6, 0.6)])
    direction /= np.linalg.norm(direction)
    tumor_center = np.asarray(c) + direction * np.asarray(radii) * 0.85
    r = rng.uniform(12, 20)
    tumor = _ellipsoid(x, y, z, tumor_center, (r, r * 0.9, r * 1.1)) & body
    texture = ndimage.gaussian_filter(rng.normal(0, 1, shape).astype(np.float32), 2.0)
    hu[tumor] = 85 + 60 * texture[tumor]
    labels[tumor] = TUMOR

    smooth = ndimage.gaussian_filter(hu, sigma=0.6)
    smooth += rng.normal(0, noise_hu, shape).astype(np.float32)
    ct = CTVolume(np.clip(smooth, -1024, 3071), geometry, name=f"phantom_{seed}")
    return ct, LabelVolume(labels, geometry, name=f"phantom_{seed}_labels")


def thick_slices(volume: CTVolume, factor: int, average: bool = True) -> CTVolume:
    """Keep every ``factor``-th slice (optionally averaging each slab, like a thick reconstruction).

    The kept slices sit exactly on the original grid positions 0, factor, 2·factor, ...
    """
    if factor < 1:
        raise ValueError("factor must be >= 1")
    array = volume.array
    if average and factor > 1:
        array = ndimage.uniform_filter1d(array, size=factor, axis=0, mode="nearest")
    thick = array[::factor].copy()
    geometry = volume.geometry.with_z_spacing(volume.geometry.spacing[2] * factor)
    return CTVolume(thick, geometry, name=f"{volume.name}_x{factor}")


def thick_labels(labels: LabelVolume, factor: int) -> LabelVolume:
    """Labels on the grid of :func:`thick_slices` (nearest slice)."""
    geometry = labels.geometry.with_z_spacing(labels.geometry.spacing[2] * factor)
    return replace(labels, array=labels.array[::factor].copy(), geometry=geometry)
