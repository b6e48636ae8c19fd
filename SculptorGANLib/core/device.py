"""Choosing the torch device: auto picks CUDA, then MPS, else CPU; explicit requests are checked."""
from __future__ import annotations

import logging

from .errors import SculptorGANError

log = logging.getLogger(__name__)
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str = "auto"):
    """A ``torch.device`` for ``name``; 'cuda' without a GPU is a clear error, 'auto' never fails."""
    import torch

    name = (name or "auto").lower()
    if name not in DEVICE_CHOICES and not name.startswith("cuda:"):
        raise SculptorGANError(f"unknown device {name!r}; choose from {', '.join(DEVICE_CHOICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SculptorGANError("device 'cuda' requested but no CUDA GPU is available; use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise SculptorGANError("device 'mps' requested but Apple MPS is not available; use --device cpu or auto")
    return torch.device(name)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA/MPS out-of-memory errors (callers retry on the CPU)."""
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()
