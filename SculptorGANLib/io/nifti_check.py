"""Checks ITK's NIfTI reader skips: truncated gzip streams (ITK zero-fills them) and NaN voxels
(ITK replaces them with 0). Streams the raw file in chunks (constant memory, never past the voxel data
the header promises, so a gzip bomb is not inflated)."""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from ..core.errors import InputError
from .headers import nifti1_fields

_FLOAT_TYPES = {16: "f4", 64: "f8"}
_CHUNK = 1 << 22


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def check_nifti(path: Path) -> None:
    """Raise InputError if the NIfTI file is truncated or holds NaN/inf values."""
    try:
        with _open(path) as handle:
            header = handle.read(348)
            if len(header) < 348:
                raise InputError(f"{path}: truncated NIfTI header")
            fields = nifti1_fields(header)
            if fields is None:
                return  # NIfTI-2 or unknown layout: leave it to ITK
            endian, dims, datatype, bitpix = fields
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            count = int(np.prod([max(d, 1) for d in dims[1:dims[0] + 1]], dtype=np.float64)) if 0 < dims[0] <= 7 else 0
            expected = offset + count * bitpix // 8
            handle.read(max(offset - 348, 0))
            itemsize = bitpix // 8 if datatype in _FLOAT_TYPES else 0
            remaining, got, bad, carry = expected - max(offset, 348), max(offset, 348), 0, b""
            while remaining > 0:
                chunk = handle.read(min(_CHUNK, remaining))
                if not chunk:
                    break
                got += len(chunk)
                remaining -= len(chunk)
                if itemsize:
                    data = carry + chunk
                    usable = len(data) - len(data) % itemsize
                    values = np.frombuffer(data[:usable], dtype=endian + _FLOAT_TYPES[datatype])
                    bad += int((~np.isfinite(values)).sum())
                    carry = data[usable:]
    except (EOFError, OSError, zlib.error) as exc:
        raise InputError(f"{path}: truncated or corrupt gzip data ({exc})") from None
    if got < expected:
        raise InputError(f"{path}: truncated: {got} bytes of data, the header promises {expected}")
    if bad:
        raise InputError(f"{path}: contains {bad} NaN or infinite voxel values")
