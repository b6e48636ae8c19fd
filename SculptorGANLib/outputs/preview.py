"""PNG preview: axial and coronal slices with the segmentation overlaid, plus a 3D rendering.

Readable at a glance: about 2000 x 560 pixels, one distinct colour per structure with a legend (and each
structure's volume), the patient's R/L, A/P, S/I on every slice (radiological view: patient right on the
image's left) and each slice's position in LPS millimetres.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from ..core.structures import PREVIEW_COLORS
from ..core.volume import CTVolume, LabelVolume

log = logging.getLogger(__name__)
WINDOW = (-160.0, 240.0)  # abdominal soft-tissue window (HU)


#: Orientation letters (left, right, top, bottom edge) of the views.
_AXIAL_EDGES = ("R", "L", "A", "P")
_CORONAL_EDGES = ("R", "L", "S", "I")


def _overlay(ax, image: np.ndarray, masks: dict[str, np.ndarray], aspect: float, title: str,
             edges: tuple[str, str, str, str]) -> None:
    ax.imshow(image, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], aspect=aspect, interpolation="nearest")
    for name, mask in masks.items():
        if mask.any():
            ax.contour(mask.astype(float), levels=[0.5], colors=[PREVIEW_COLORS.get(name, (1, 1, 0))], linewidths=2.0)
    style = dict(color="yellow", fontsize=13, fontweight="bold", transform=ax.transAxes)
    ax.text(0.02, 0.5, edges[0], ha="left", va="center", **style)
    ax.text(0.98, 0.5, edges[1], ha="right", va="center", **style)
    ax.text(0.5, 0.98, edges[2], ha="center", va="top", **style)
    ax.text(0.5, 0.02, edges[3], ha="center", va="bottom", **style)
    ax.set_title(title, fontsize=12)
    ax.axis("off")


def _as_lps(array: np.ndarray, geometry, with_origin: bool = False):
    """The array permuted/flipped to LPS axes (columns toward patient left, rows toward posterior,
    slices toward superior) and its spacing (x, y, z) (and origin, LPS mm), so views are drawn the
    radiological way."""
    import SimpleITK as sitk

    from ..io.sitk_bridge import image_from_array

    image = image_from_array(array, geometry)
    oriented = sitk.DICOMOrient(image, "LPS")
    if with_origin:
        return sitk.GetArrayFromImage(oriented), oriented.GetSpacing(), oriented.GetOrigin()
    return sitk.GetArrayFromImage(oriented), oriented.GetSpacing()


def _legend(fig, masks: dict[str, np.ndarray], voxel_ml: float) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=PREVIEW_COLORS.get(name, (1, 1, 0)), edgecolor="black",
                     label=f"{name.replace('_', ' ')}  {mask.sum() * voxel_ml:.1f} mL")
               for name, mask in masks.items() if mask.any()]
    if not handles:
        handles = [Patch(facecolor="none", edgecolor="none", label="no kidney or tumor found")]
    fig.legend(handles=handles, loc="lower center", ncol=max(len(handles), 1), fontsize=12, frameon=False)


def write_preview(ct: CTVolume, labels: LabelVolume | None, masks: dict[str, np.ndarray], path: Path,
                  meshes: dict | None = None) -> Path:
    """Three axial slices through the structures, one coronal slice and (when possible) a 3D view."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    same_grid = labels is not None and ct.same_grid(labels)
    masks = {n: _as_lps(m.astype(np.uint8), ct.geometry)[0].astype(bool) for n, m in masks.items()} if same_grid else {}
    array, (sx, sy, sz), (ox, oy, oz) = _as_lps(ct.array, ct.geometry, with_origin=True)
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
    fig, axes = plt.subplots(1, ncols, figsize=(4.4 * ncols, 5.6))
    for ax, k in zip(axes[:3], axial):
        _overlay(ax, array[k], {n: m[k] for n, m in masks.items()}, sy / sx,
                 f"axial, z = {oz + k * sz:+.1f} mm (slice {k})", _AXIAL_EDGES)
    _overlay(axes[3], array[::-1, coronal, :], {n: m[::-1, coronal, :] for n, m in masks.items()}, sz / sx,
             f"coronal, y = {oy + coronal * sy:+.1f} mm", _CORONAL_EDGES)
    if render is not None:
        axes[4].imshow(render)
        axes[4].set_title("3D models (anterior view)", fontsize=12)
        axes[4].axis("off")
    _legend(fig, masks, ct.voxel_volume_ml)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=100)
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
