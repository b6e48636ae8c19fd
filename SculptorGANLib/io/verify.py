"""Verified writes: after a file is written, check that it is complete before the output is committed.

ITK's writers only print ``NWAD: wrote only 0 of N bytes`` on a full disk or a file-size limit and VTK's
writers print to their error stream: neither raises. So every volume we write is read back (its header:
size and geometry; its data: the byte count, through the whole gzip stream when compressed) and every
mesh file is parsed again (points and cells), and a mismatch is an :class:`OutputError`.
"""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from ..core.errors import OutputError

_CHUNK = 1 << 22


def _incomplete(path: Path, detail: str) -> OutputError:
    return OutputError(f"{path}: written incompletely ({detail}); is the disk full or a file-size limit set?")


def _gzip_length(path: Path, offset: int = 0) -> int:
    """Bytes in the gzip stream starting at ``offset`` of ``path`` (read in chunks; raises on truncation)."""
    with open(path, "rb") as raw:
        raw.seek(offset)
        with gzip.GzipFile(fileobj=raw) as handle:
            total = 0
            while chunk := handle.read(_CHUNK):
                total += len(chunk)
    return total


def _nrrd_data_offset(path: Path) -> int:
    with open(path, "rb") as handle:
        head = handle.read(1 << 20)
    end = head.find(b"\n\n")
    if end < 0:
        raise _incomplete(path, "the NRRD header is cut off")
    return end + 2


def _metaimage_data(path: Path) -> tuple[int, bool]:
    """(offset of the voxel data, compressed?) of a .mha file (header ends at 'ElementDataFile = LOCAL')."""
    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    end = head.find(b"ElementDataFile")
    if end < 0:
        raise _incomplete(path, "the MetaImage header is cut off")
    newline = head.find(b"\n", end)
    if newline < 0:
        raise _incomplete(path, "the MetaImage header is cut off")
    return newline + 1, b"CompressedData = True" in head[:end]


def _zlib_length(path: Path, offset: int) -> int:
    inflater = zlib.decompressobj()
    total = 0
    with open(path, "rb") as handle:
        handle.seek(offset)
        while chunk := handle.read(_CHUNK):
            total += len(inflater.decompress(chunk))
    if not inflater.eof:
        raise EOFError("the compressed stream ends early")
    return total


def verify_volume_file(path: str | os.PathLike, shape_zyx, geometry, itemsize: int) -> None:
    """Raise :class:`OutputError` unless ``path`` holds a complete volume of ``shape_zyx`` on ``geometry``."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise _incomplete(path, "the file is missing or empty")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise _incomplete(path, "its header cannot be read back") from None
    size = tuple(reader.GetSize())[:3]
    if size != tuple(int(n) for n in shape_zyx[::-1]):
        raise _incomplete(path, f"it reads back as size {size}, not {tuple(shape_zyx[::-1])}")
    if not (np.allclose(reader.GetSpacing()[:3], geometry.spacing, rtol=1e-5, atol=1e-6)
            and np.allclose(reader.GetOrigin()[:3], geometry.origin, rtol=1e-6, atol=1e-4)
            and np.allclose(np.asarray(reader.GetDirection()).reshape(-1)[:9], geometry.direction, atol=1e-5)):
        raise OutputError(f"{path}: reads back with a different geometry than was written "
                          f"(spacing {reader.GetSpacing()}, origin {reader.GetOrigin()})")
    expected = int(np.prod(shape_zyx)) * int(itemsize)
    name = path.name.lower()
    try:
        if name.endswith(".gz"):
            got = _gzip_length(path)
            complete = got >= expected
        elif name.endswith(".nrrd"):
            offset = _nrrd_data_offset(path)
            with open(path, "rb") as handle:
                handle.seek(offset)
                magic = handle.read(2)
            got = _gzip_length(path, offset) if magic == b"\x1f\x8b" else path.stat().st_size - offset
            complete = got >= expected
        elif name.endswith(".mha"):
            offset, compressed = _metaimage_data(path)
            got = _zlib_length(path, offset) if compressed else path.stat().st_size - offset
            complete = got >= expected
        else:
            got = path.stat().st_size
            complete = got >= expected
    except (EOFError, OSError, zlib.error) as exc:
        raise _incomplete(path, f"its data stream is cut off: {exc}") from None
    if not complete:
        raise _incomplete(path, f"{got} of {expected} bytes of voxel data")


def verify_mesh_file(path: str | os.PathLike, points: int, cells: int) -> None:
    """Raise :class:`OutputError` unless the mesh file parses back with ``points``/``cells`` (STL: cells only)."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise _incomplete(path, "the file is missing or empty")
    suffix = path.suffix.lower()
    if suffix == ".stl":
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(84)
        count = int.from_bytes(head[80:84], "little") if len(head) == 84 else -1
        if size == 84 + 50 * count:
            if count < cells:
                raise _incomplete(path, f"{count} of {cells} triangles")
            return
    import vtk

    readers = {".stl": vtk.vtkSTLReader, ".obj": vtk.vtkOBJReader, ".ply": vtk.vtkPLYReader,
               ".vtp": vtk.vtkXMLPolyDataReader}
    if suffix not in readers:
        return
    reader = readers[suffix]()
    reader.SetFileName(str(path))
    reader.Update()
    mesh = reader.GetOutput()
    got = mesh.GetNumberOfCells() if mesh is not None else 0
    if got < cells:
        raise _incomplete(path, f"{got} of {cells} cells read back")
