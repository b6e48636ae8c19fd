"""PNG preview: axial and coronal slices with the segmentation overlaid, plus a 3D rendering."""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from ..core.volume import STRUCTURE_COLORS, CTVolume, LabelVolume

log = logging.getLogger(__name__)
WINDOW = (-160.0, 240.0)  # abdominal soft-tissue window (HU)


def _overlay(ax, image: np.ndarray, masks: dict[str, np.ndarray], aspect: float, title: str) -> None:
    ax.imshow(image, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], aspect=aspect, interpolation="nearest")
    for name, mask in masks.items():
        if mask.any():
            ax.contour(mask.astype(float), levels=[0.5], colors=[STRUCTURE_COLORS.get(name, (1, 1, 0))], linewidths=1.2)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def _as_lps(array: np.ndarray, geometry) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The array permuted/flipped to LPS axes (columns toward patient left, rows toward posterior,
    slices toward superior) and its spacing (x, y, z), so views are drawn the radiological way."""
    import SimpleITK as sitk

    from ..io.sitk_bridge import image_from_array

    image = image_from_array(array, geometry)
    oriented = sitk.DICOMOrient(image, "LPS")
    return sitk.GetArrayFromImage(oriented), oriented.GetSpacing()


def write_preview(ct: CTVolume, labels: LabelVolume | None, masks: dict[str, np.ndarray], path: Path,
                  meshes: dict | None = None) -> Path:
    """Three axial slices through the structures, one coronal slice and (when possible) a 3D view."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    same_grid = labels is not None and ct.same_grid(labels)
    masks = {n: _as_lps(m.astype(np.uint8), ct.geometry)[0].astype(bool) for n, m in masks.items()} if same_grid else {}
    array, (sx, sy, sz) = _as_lps(ct.array, ct.geometry)
    union = np.zeros(array.shape, bool)
    for mask in masks.values():
        union |= mask
    zs = np.flatnonzero(union.any(axis=(1, 2)))
    if zs.size:
        axial = [int(zs[len(zs) // 4]), int(zs[len(zs) // 2]), int(zs[3 * len(zs) // 4])]
        coronal = int(np.flatnonzero(union.any(axis=(0, 2)))[len(np.flatnonzero(union.any(axis=(0, 2)))) // 2])
    else:
        axial = [array.shape[0] // 4, array.shape[0] // 2, 3 * array.shape[0] // 4]
        coronal = array.shape[1] // 2
    render = _render_png(meshes) if meshes else None
    ncols = 5 if render is not None else 4
    fig, axes = plt.subplots(1, ncols, figsize=(3.2 * ncols, 3.6))
    for ax, k in zip(axes[:3], axial):
        _overlay(ax, array[k], {n: m[k] for n, m in masks.items()}, sy / sx, f"axial z={k}")
    _overlay(axes[3], array[::-1, coronal, :], {n: m[::-1, coronal, :] for n, m in masks.items()}, sz / sx,
             f"coronal y={coronal}")
    if render is not None:
        axes[4].imshow(render)
        axes[4].set_title("3D models (anterior)", fontsize=9)
        axes[4].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _render_png(meshes: dict) -> np.ndarray | None:
    """An offscreen VTK rendering of the meshes as an RGB array, or None when rendering is unavailable."""
    try:
        import matplotlib.image as mpimg

        from .render import render_meshes_png

        with tempfile.TemporaryDirectory() as tmp:
            png = render_meshes_png(meshes, Path(tmp) / "render.png")
            return mpimg.imread(png)
    except Exception as exc:  # rendering is optional; the slices still tell the story
        log.warning("3D rendering unavailable (%s); preview shows slices only", exc)
        return None
