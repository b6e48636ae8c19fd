"""Checks ITK's NIfTI reader skips: truncated gzip streams (ITK zero-fills them) and NaN voxels
(ITK replaces them with 0). Reads the raw file once with numpy."""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from ..core.errors import InputError

_FLOAT_TYPES = {16: "f4", 64: "f8"}


def _raw_bytes(path: Path) -> bytes:
    if path.name.lower().endswith(".gz"):
        try:
            with gzip.open(path, "rb") as handle:
                return handle.read()
        except (EOFError, OSError, zlib.error) as exc:
            raise InputError(f"{path}: truncated or corrupt gzip data ({exc})") from None
    return path.read_bytes()


def check_nifti(path: Path) -> None:
    """Raise InputError if the NIfTI file is truncated or holds NaN/inf values."""
    data = _raw_bytes(path)
    if len(data) < 348:
        raise InputError(f"{path}: truncated NIfTI header")
    for endian in "<>":
        if struct.unpack(endian + "i", data[:4])[0] == 348:
            break
    else:
        return  # NIfTI-2 or unknown layout: leave it to ITK
    dims = struct.unpack(endian + "8h", data[40:56])
    datatype, bitpix = struct.unpack(endian + "hh", data[70:74])
    offset = int(struct.unpack(endian + "f", data[108:112])[0])
    count = int(np.prod([max(d, 1) for d in dims[1:dims[0] + 1]])) if 0 < dims[0] <= 7 else 0
    expected = offset + count * bitpix // 8
    if len(data) < expected:
        raise InputError(f"{path}: truncated: {len(data)} bytes of data, the header promises {expected}")
    if datatype in _FLOAT_TYPES:
        values = np.frombuffer(data, dtype=endian + _FLOAT_TYPES[datatype], count=count, offset=offset)
        bad = int((~np.isfinite(values)).sum())
        if bad:
            raise InputError(f"{path}: contains {bad} NaN or infinite voxel values")
