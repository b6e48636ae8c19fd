"""Phase II stage: kidney (1) and tumor (2) segmentation with the WP-UNet.

The CT is resampled onto the model's canonical grid (identity LPS direction, the spacing in its model
card), HU-windowed and normalized, and run through the network with MONAI's sliding-window inference
and Gaussian blending (mixed precision on CUDA; CUDA out-of-memory falls back to the CPU with a
message). The kidney/tumor probabilities are post-processed on that grid (anatomy rules: the kidney
candidate beside the spine per body side, leaks longer than a kidney cut, tumor only in or on a kidney;
then tumor attached to kidney, holes, specks) and mapped back onto the exact input grid by linear
interpolation of the probabilities. Without shipped or given weights a classical threshold fallback
runs, and ``info['method']`` says which one ran.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import numpy as np
from scipy import ndimage

from ..core.volume import KIDNEY, CTVolume, LabelVolume
from .inference import load_network, predict_labels

log = logging.getLogger(__name__)
ProgressFn = Callable[[float, str], None]


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


def segment(ct: CTVolume, model: str | None = None, device: str = "auto", progress: ProgressFn | None = None,
            cancel: Callable[[], bool] | None = None, *, postprocess: bool = True, morph_mm: float = 0.0,
            overlap: float = 0.25, anatomy: bool | dict = True, tumor_threshold: float = 0.5,
            **_ignored) -> tuple[LabelVolume, dict]:
    """Segment kidneys (1) and tumor (2) on the CT's own grid.

    Args:
        ct: the CT in HU (any orientation and spacing).
        model: a model card/weights path, a shipped model name, ``'threshold'`` for the classical
            fallback, or None for the default shipped segmentation model.
        device: 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'.
        postprocess: keep the largest kidney per side, tumor attached to kidney, fill holes, drop specks.
        morph_mm: optional opening/closing radius (mm) before the component rules.
        overlap: sliding-window overlap (0–1).
        anatomy: the anatomy rules of :mod:`.anatomy_rules` (kidney candidates beside the spine, leaks
            longer than a kidney cut, nothing above the liver dome, tumor only in or on a kidney); a dict
            passes their parameters. Every rule that changed the result is listed in info['rules'] and
            in the notes.
        tumor_threshold: tumor share of the foreground probability above which a voxel is tumor.
    Returns:
        (labels, info) with info['method'], 'model', 'version', 'device', 'seconds', 'rules' and notes.
    """
    from ..nn.cards import find_model

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

    from ..core.device import is_out_of_memory, resolve_device

    dev = resolve_device(device)
    notes = []
    if progress:
        progress(0.0, f"loading {card.name} on {dev}")
    try:
        net = load_network(card, dev)
        arr, extra = predict_labels(net, ct, card, dev, overlap=overlap, postprocess=postprocess,
                                    morph_mm=morph_mm, progress=progress, cancel=cancel,
                                    anatomy=anatomy, tumor_threshold=tumor_threshold)
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
                                    morph_mm=morph_mm, progress=progress, cancel=cancel,
                                    anatomy=anatomy, tumor_threshold=tumor_threshold)
    notes += [f"post-processing: {rule}" for rule in extra.get("rules", [])]
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
