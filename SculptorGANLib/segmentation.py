"""Phase II stage: kidney (1) and tumor (2) segmentation with the WP-UNet.

The CT is resampled onto the model's canonical grid (identity LPS direction, the spacing in its model
card), HU-windowed and normalized, and run through the network with MONAI's sliding-window inference
and Gaussian blending (mixed precision on CUDA; CUDA out-of-memory falls back to the CPU with a
message). The kidney/tumor probabilities are post-processed on that grid (largest kidney per body
side, tumor attached to kidney, holes, specks) and mapped back onto the exact input grid by linear
interpolation of the probabilities. Without shipped or given weights a classical threshold fallback
runs, and ``info['method']`` says which one ran.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .errors import CancelledError, InputError
from .volume import KIDNEY, TUMOR, CTVolume, Geometry, LabelVolume, Volume

log = logging.getLogger(__name__)
ProgressFn = Callable[[float, str], None]
DEFAULT_WINDOW = (-200.0, 400.0)
DEFAULT_SPACING = (3.0, 3.0, 3.0)


# ----------------------------------------------------------------------------- canonical grid
def to_sitk_image(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    return image


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
    image = to_sitk_image(array, src)
    ref = sitk.Image([int(dst_shape_zyx[2]), int(dst_shape_zyx[1]), int(dst_shape_zyx[0])], image.GetPixelID())
    ref.SetSpacing(dst.spacing)
    ref.SetOrigin(dst.origin)
    ref.SetDirection(dst.direction)
    interp = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    out = sitk.Resample(image, ref, sitk.Transform(), interp, float(default), image.GetPixelID())
    return sitk.GetArrayFromImage(out)


def to_canonical(volume: Volume, spacing, *, label: bool = False, default: float = 0.0) -> tuple[np.ndarray, Geometry]:
    """The volume's array on its canonical grid (see module doc) and that grid's geometry."""
    geo, shape = canonical_geometry(volume.geometry, volume.shape, spacing)
    return resample_array(volume.array, volume.geometry, geo, shape, label=label, default=default), geo




def normalize(hu: np.ndarray, window=DEFAULT_WINDOW) -> np.ndarray:
    """HU clipped to ``window`` and mapped linearly to [-1, 1] (float32)."""
    lo, hi = float(window[0]), float(window[1])
    return ((np.clip(hu, lo, hi) - lo) * (2.0 / (hi - lo)) - 1.0).astype(np.float32)


def _slab_geometry(geometry: Geometry, k0: int) -> Geometry:
    origin = geometry.index_to_physical(np.array([[0.0, 0.0, float(k0)]]))[0]
    return Geometry(geometry.spacing, tuple(origin), geometry.direction)


def probabilities_to_grid(fg: np.ndarray, tumor_frac: np.ndarray, src: Geometry, dst: Geometry,
                          dst_shape: tuple[int, int, int], slab: int = 32) -> np.ndarray:
    """Labels on ``dst`` from foreground probability and tumor fraction on ``src`` (linear, slab by slab)."""
    out = np.zeros(dst_shape, dtype=np.uint8)
    fg_img, tu_img = to_sitk_image(fg.astype(np.float32), src), to_sitk_image(tumor_frac.astype(np.float32), src)
    nz, ny, nx = dst_shape
    for k0 in range(0, nz, slab):
        k1 = min(nz, k0 + slab)
        ref = sitk.Image([nx, ny, k1 - k0], sitk.sitkFloat32)
        geo = _slab_geometry(dst, k0)
        ref.SetSpacing(geo.spacing)
        ref.SetOrigin(geo.origin)
        ref.SetDirection(geo.direction)
        f = sitk.GetArrayFromImage(sitk.Resample(fg_img, ref, sitk.Transform(), sitk.sitkLinear, 0.0))
        t = sitk.GetArrayFromImage(sitk.Resample(tu_img, ref, sitk.Transform(), sitk.sitkLinear, 0.0))
        part = np.where(f > 0.5, KIDNEY, 0).astype(np.uint8)
        part[(f > 0.5) & (t > 0.5)] = TUMOR
        out[k0:k1] = part
    return out


def threshold_kidneys(ct: CTVolume, low: float = 100.0, high: float = 260.0, min_ml: float = 20.0) -> np.ndarray:
    """Kidney mask from enhanced-parenchyma HU, dropping vessel-like tubes that span the whole scan."""
    smooth = ndimage.gaussian_filter(ct.array, 1.0)
    mask = (smooth > low) & (smooth < high)
    mask = ndimage.binary_opening(mask, iterations=1)
    components, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = ndimage.sum_labels(mask, components, range(1, count + 1)) * ct.voxel_volume_ml
    slices = ndimage.find_objects(components)
    nz = ct.shape[0]
    keep = [i + 1 for i, (size, sl) in enumerate(zip(sizes, slices))
            if size >= min_ml and (sl[0].stop - sl[0].start) < 0.8 * nz]
    keep = sorted(keep, key=lambda i: -sizes[i - 1])[:2]
    out = np.isin(components, keep)
    return np.stack([ndimage.binary_fill_holes(s) for s in out])


# ----------------------------------------------------------------------------- networks
_MODEL_CACHE: dict = {}


def load_network(card, device):
    """The card's network on ``device`` in eval mode (cached per card checksum and device)."""
    from .models import load_weights
    from .nn.wpunet import build_model

    key = (str(card.path), card.sha256, str(device))
    if key in _MODEL_CACHE:
        return _MODEL_CACHE[key]
    try:
        net = build_model(card.architecture, card.arch_args, fast_layout=device.type == "cpu")
    except (TypeError, ValueError) as exc:
        raise InputError(f"{card.path}: cannot build {card.architecture!r} from its arch_args ({exc})") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_weights(card).items()}
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(f"{card.path}: weights do not fit the architecture in the card ({str(exc)[:200]})") from None
    net = net.eval()
    if card.architecture == "wpunet":
        from .nn.wpunet import fuse_for_inference

        net = fuse_for_inference(net)
    net = net.to(device)
    if device.type == "cpu":
        from .nn.blocks import to_fast_layout

        net = to_fast_layout(net, int(card.arch_args.get("dims", 3)))
    if len(_MODEL_CACHE) > 4:
        _MODEL_CACHE.clear()
    _MODEL_CACHE[key] = net
    return net


def _window_count(shape, roi, overlap: float) -> int:
    n = 1
    for s, r in zip(shape, roi):
        step = max(1, int(r * (1 - overlap)))
        n *= 1 if s <= r else int(np.ceil((s - r) / step)) + 1
    return n


def sliding_window_probabilities(net, image: np.ndarray, roi, device, *, overlap: float = 0.25, amp: bool = True,
                                 progress: ProgressFn | None = None, cancel: Callable[[], bool] | None = None,
                                 progress_range=(0.1, 0.85)) -> np.ndarray:
    """Softmax probabilities (C, z, y, x) for a normalized (z, y, x) image; Gaussian-blended windows."""
    import torch
    from monai.inferers import sliding_window_inference

    roi = tuple(int(r) for r in roi)
    total = _window_count(image.shape, roi, overlap)
    done = [0]
    dims_fmt = torch.channels_last_3d if device.type == "cpu" else torch.contiguous_format

    def predictor(x):
        if cancel and cancel():
            raise CancelledError("segmentation cancelled")
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=amp and device.type == "cuda"):
            y = net(x.contiguous(memory_format=dims_fmt))
        done[0] += x.shape[0]
        if progress:
            a, b = progress_range
            progress(a + (b - a) * min(1.0, done[0] / total), f"segmenting window {done[0]}/{total}")
        return y.float()

    x = torch.from_numpy(image)[None, None].to(device)
    with torch.no_grad():
        logits = sliding_window_inference(x, roi, 1, predictor, overlap=overlap, mode="gaussian")
        probs = torch.softmax(logits, dim=1)[0]
    return probs.cpu().numpy()


def predict_labels(net, ct: CTVolume, card, device, *, overlap: float = 0.25, postprocess: bool = True,
                   morph_mm: float = 0.0, progress=None, cancel=None) -> tuple[np.ndarray, dict]:
    """Labels on ``ct``'s own grid from the network described by ``card``."""
    from .postprocess import postprocess as post

    prep = card.preprocessing or {}
    spacing = tuple(prep.get("spacing", DEFAULT_SPACING))
    window = tuple(prep.get("window", DEFAULT_WINDOW))
    roi = tuple(prep.get("roi", (96, 128, 128)))
    hu, geo = to_canonical(ct, spacing, default=-1024.0)
    if progress:
        progress(0.1, f"resampled to {spacing[0]:g} mm model grid {hu.shape}")
    probs = sliding_window_probabilities(net, normalize(hu, window), roi, device, overlap=overlap,
                                         progress=progress, cancel=cancel)
    labels = probs.argmax(0).astype(np.uint8)
    fg = probs[1] + probs[2]
    tumor_frac = probs[2] / np.maximum(fg, 1e-6)
    if postprocess:
        kept = post(LabelVolume(labels, geo), hu, morph_mm=morph_mm).array
        region = ndimage.binary_dilation(kept > 0, iterations=1)
        fg = np.where(region, fg, 0.0)
        fg[(kept > 0) & (fg <= 0.5)] = 0.51  # holes filled on the model grid stay filled
        tumor_frac = np.where(kept == TUMOR, np.maximum(tumor_frac, 0.51), np.where(kept == KIDNEY, np.minimum(tumor_frac, 0.49), tumor_frac))
    if progress:
        progress(0.9, "mapping back to the input grid")
    out = probabilities_to_grid(fg, tumor_frac, geo, ct.geometry, ct.shape)
    if postprocess and out.any():
        # components were chosen on the model grid; here only tidy the interpolated result (in its box)
        from .postprocess import drop_specks, fill_holes, tumor_attached

        idx = np.argwhere(out > 0)
        box = tuple(slice(max(0, a - 2), b + 3) for a, b in zip(idx.min(0), idx.max(0)))
        part = drop_specks(out[box], ct.voxel_volume_ml, 0.2)
        out[box] = fill_holes(tumor_attached(part))
    return out, {"model_grid": list(hu.shape), "model_spacing": list(spacing), "window": list(window)}


def segment(ct: CTVolume, model: str | None = None, device: str = "auto", progress: ProgressFn | None = None,
            cancel: Callable[[], bool] | None = None, *, postprocess: bool = True, morph_mm: float = 0.0,
            overlap: float = 0.25, **_ignored) -> tuple[LabelVolume, dict]:
    """Segment kidneys (1) and tumor (2) on the CT's own grid.

    Args:
        ct: the CT in HU (any orientation and spacing).
        model: a model card/weights path, a shipped model name, ``'threshold'`` for the classical
            fallback, or None for the default shipped segmentation model.
        device: 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'.
        postprocess: keep the largest kidney per side, tumor attached to kidney, fill holes, drop specks.
        morph_mm: optional opening/closing radius (mm) before the component rules.
        overlap: sliding-window overlap (0–1).
    Returns:
        (labels, info) with info['method'], 'model', 'version', 'device', 'seconds' and notes.
    """
    from .models import find_model

    start = time.time()
    card = None if model == "threshold" else find_model("segmentation", model)
    if card is None:
        if progress:
            progress(0.0, "segmenting (threshold fallback)")
        labels = np.zeros(ct.shape, dtype=np.uint8)
        labels[threshold_kidneys(ct)] = KIDNEY
        if progress:
            progress(1.0, "segmented")
        why = "requested" if model == "threshold" else "no segmentation model found"
        info = {"method": f"threshold (classical fallback, {why}; tumor not detected)", "device": "cpu",
                "model": None, "version": None, "seconds": round(time.time() - start, 3)}
        return LabelVolume(labels, ct.geometry, name=f"{ct.name}_segmentation"), info

    from .device import is_out_of_memory, resolve_device

    dev = resolve_device(device)
    notes = []
    if progress:
        progress(0.0, f"loading {card.name} on {dev}")
    try:
        net = load_network(card, dev)
        arr, extra = predict_labels(net, ct, card, dev, overlap=overlap, postprocess=postprocess,
                                    morph_mm=morph_mm, progress=progress, cancel=cancel)
    except Exception as exc:  # noqa: BLE001 - only OOM is retried
        if dev.type == "cpu" or not is_out_of_memory(exc):
            raise
        import torch

        torch.cuda.empty_cache()
        msg = f"{dev} ran out of memory; segmenting on the CPU instead (slower)"
        log.warning(msg)
        notes.append(msg)
        if progress:
            progress(0.05, msg)
        dev = resolve_device("cpu")
        net = load_network(card, dev)
        arr, extra = predict_labels(net, ct, card, dev, overlap=overlap, postprocess=postprocess,
                                    morph_mm=morph_mm, progress=progress, cancel=cancel)
    from .contrast import contrast_note, contrast_phase, kidney_median_hu

    kidney_hu = kidney_median_hu(ct.array, arr)
    note = contrast_note(kidney_hu)
    if note:
        notes.append(note)
    if progress:
        progress(1.0, "segmented")
    info = {"method": card.architecture, "model": card.name, "version": card.version, "device": str(dev),
            "postprocess": bool(postprocess), "seconds": round(time.time() - start, 3), "notes": notes,
            "kidney_median_hu": None if kidney_hu is None else round(kidney_hu, 1),
            "contrast": contrast_phase(kidney_hu), **extra}
    return LabelVolume(arr, ct.geometry, name=f"{ct.name}_segmentation"), info
