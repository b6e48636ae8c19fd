"""Running the segmentation network: loading it from its card, sliding-window probabilities, labels."""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage

from ..core.errors import CancelledError, InputError
from ..core.volume import KIDNEY, TUMOR, CTVolume, Geometry, LabelVolume

from .preprocess import DEFAULT_SPACING, DEFAULT_WINDOW, normalize_window, probabilities_to_grid, to_canonical

ProgressFn = Callable[[float, str], None]

_MODEL_CACHE: dict = {}


def load_network(card, device):
    """The card's network on ``device`` in eval mode (cached per card checksum and device)."""
    from ..nn.cards import load_into
    from ..nn.wpunet import build_model

    key = (str(card.path), card.sha256, str(device))
    if key in _MODEL_CACHE:
        return _MODEL_CACHE[key]
    try:
        net = build_model(card.architecture, card.arch_args, fast_layout=device.type == "cpu")
    except (TypeError, ValueError) as exc:
        raise InputError(f"{card.path}: cannot build {card.architecture!r} from its arch_args ({exc})") from None
    net = load_into(net, card)
    if card.architecture == "wpunet":
        from ..nn.wpunet import fuse_for_inference

        net = fuse_for_inference(net)
    net = net.to(device)
    if device.type == "cpu":
        from ..nn.blocks import to_fast_layout

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


def model_probabilities(net, ct: CTVolume, card, device, *, overlap: float = 0.25, progress=None,
                        cancel=None) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """Softmax probabilities (3, z, y, x) on the model's canonical grid, that grid's HU and geometry."""
    prep = card.preprocessing or {}
    spacing = tuple(prep.get("spacing", DEFAULT_SPACING))
    window = tuple(prep.get("window", DEFAULT_WINDOW))
    roi = tuple(prep.get("roi", (96, 128, 128)))
    hu, geo = to_canonical(ct, spacing, default=-1024.0)
    if progress:
        progress(0.1, f"resampled to {spacing[0]:g} mm model grid {hu.shape}")
    probs = sliding_window_probabilities(net, normalize_window(hu, window), roi, device, overlap=overlap,
                                         progress=progress, cancel=cancel)
    return probs, hu, geo


def labels_from_probabilities(probs: np.ndarray, hu: np.ndarray, geo: Geometry, ct: CTVolume, *,
                              postprocess: bool = True, morph_mm: float = 0.0, anatomy: bool | dict = True,
                              tumor_threshold: float = 0.5, fat_hu: float | None = -40.0,
                              progress=None) -> tuple[np.ndarray, list[str]]:
    """Labels on ``ct``'s own grid from model-grid probabilities, and what the anatomy rules changed.

    A voxel is foreground when kidney + tumor probability exceeds 0.5, tumor when the tumor share of
    it exceeds ``tumor_threshold``. ``anatomy``: run :mod:`.anatomy_rules` (True, or a dict of its
    keyword arguments) before the component rules of :mod:`.postprocess`. ``fat_hu``: kidney-labelled
    voxels of the input CT below this HU (lightly smoothed) are fat (renal sinus, perirenal rim at the
    coarse model grid's edge) and become background, as in the KiTS/TotalSegmentator conventions."""
    from .postprocess import postprocess as post

    fg = probs[1] + probs[2]
    tumor_frac = probs[2] / np.maximum(fg, 1e-6)
    is_tumor = tumor_frac > tumor_threshold
    labels = np.where(fg > 0.5, np.where(is_tumor, TUMOR, KIDNEY), 0).astype(np.uint8)
    tumor_frac = np.where(is_tumor, np.maximum(tumor_frac, 0.51), np.minimum(tumor_frac, 0.49))
    rules: list[str] = []
    raw = labels
    if postprocess and anatomy:
        from .anatomy_rules import apply_rules

        labels, rules = apply_rules(labels, hu, geo, **(anatomy if isinstance(anatomy, dict) else {}))
    if postprocess:
        # with the anatomy rules, candidates were ranked beside the spine: no second "posterior" rule
        kept = post(LabelVolume(labels, geo), hu, morph_mm=morph_mm, posterior_only=not anatomy).array
        region = ndimage.binary_dilation(kept > 0, iterations=1) & ~((raw > 0) & (kept == 0))
        fg = np.where(region, fg, 0.0)  # what a rule removed does not come back at the kept region's edge
        fg[(kept > 0) & (fg <= 0.5)] = 0.51  # holes filled on the model grid stay filled
        tumor_frac = np.where(kept == TUMOR, np.maximum(tumor_frac, 0.51), np.where(kept == KIDNEY, np.minimum(tumor_frac, 0.49), tumor_frac))
    if progress:
        progress(0.9, "mapping back to the input grid")
    if postprocess:
        # fg is zero away from the kept labels: map back only the input-grid box around them
        from ..core.anatomy import bounding_box, shifted_geometry
        from .preprocess import dst_box

        out = np.zeros(ct.shape, np.uint8)
        box = bounding_box(fg > 0)
        if box is not None:
            sub = dst_box(geo, box[0], box[1], ct.geometry, ct.shape)
            lo = np.array([s.start for s in sub])
            if all(s.stop > s.start for s in sub):
                out[sub] = probabilities_to_grid(fg, tumor_frac, geo, shifted_geometry(ct.geometry, lo),
                                                 tuple(s.stop - s.start for s in sub))
    else:
        out = probabilities_to_grid(fg, tumor_frac, geo, ct.geometry, ct.shape)
    if postprocess and out.any():
        # components were chosen on the model grid; here only tidy the interpolated result (in its box)
        from .postprocess import drop_specks, fill_holes, tumor_attached

        idx = np.argwhere(out > 0)
        box = tuple(slice(max(0, a - 2), b + 3) for a, b in zip(idx.min(0), idx.max(0)))
        part = fill_holes(tumor_attached(drop_specks(out[box], ct.voxel_volume_ml, 0.2)))
        if fat_hu is not None:
            smooth = ndimage.gaussian_filter(ct.array[box], 0.7)
            part[(part == KIDNEY) & (smooth < fat_hu)] = 0
        out[box] = part
    return out, rules


def predict_labels(net, ct: CTVolume, card, device, *, overlap: float = 0.25, postprocess: bool = True,
                   morph_mm: float = 0.0, progress=None, cancel=None, anatomy: bool | dict = True,
                   tumor_threshold: float = 0.5, fat_hu: float | None = -40.0) -> tuple[np.ndarray, dict]:
    """Labels on ``ct``'s own grid from the network described by ``card``; info has the grid and
    ``rules`` (what the anatomy rules changed, empty when nothing)."""
    probs, hu, geo = model_probabilities(net, ct, card, device, overlap=overlap, progress=progress, cancel=cancel)
    out, rules = labels_from_probabilities(probs, hu, geo, ct, postprocess=postprocess, morph_mm=morph_mm,
                                           anatomy=anatomy, tumor_threshold=tumor_threshold, fat_hu=fat_hu,
                                           progress=progress)
    window = (card.preprocessing or {}).get("window", DEFAULT_WINDOW)
    return out, {"model_grid": list(hu.shape), "model_spacing": list(geo.spacing), "window": list(window),
                 "rules": rules}
