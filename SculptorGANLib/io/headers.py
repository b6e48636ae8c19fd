"""Checks on a volume file's header made before ITK reads it: the header is parsed here (NIfTI-1, MetaImage,
NRRD), so hostile files are refused with a one-line reason instead of being reinterpreted or read blindly.

* detached data files (MetaImage ``ElementDataFile``, NRRD ``data file``) must lie in the header's folder;
* spacing must be finite and positive, the direction (NIfTI sform, MetaImage ``TransformMatrix``, NRRD
  ``space directions``) non-singular and orthogonal;
* the voxel count and bytes the header promises are returned (:class:`HeaderInfo`) for the size limits
  (:mod:`.limits`) before any voxel is decompressed.
"""
from __future__ import annotations

import gzip
import math
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import InputError

#: Largest header we parse (text headers are a few kB; anything bigger is not a volume header).
MAX_HEADER_BYTES = 1 << 20
#: Tolerance on |cos| between two axes and on |det| - 1 of the normalized direction matrix.
ORTHOGONAL_TOL = 1e-3

_NIFTI_BYTES = {2: 1, 4: 2, 8: 4, 16: 4, 64: 8, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8}
_META_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
               "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
               "MET_DOUBLE": 8}
_NRRD_BYTES = {1: ("char", "signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"),
               2: ("short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort",
                   "unsigned short", "unsigned short int", "uint16", "uint16_t"),
               4: ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"),
               8: ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64",
                   "int64_t", "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t",
                   "double")}


@dataclass(frozen=True)
class HeaderInfo:
    """What a header promises: grid size (x, y, z, ...), spacing (mm, where known), bytes per voxel."""

    size: tuple[int, ...]
    spacing: tuple[float, ...] = ()
    bytes_per_voxel: int = 4
    compressed: bool = False

    @property
    def voxels(self) -> int:
        return int(np.prod([max(int(s), 1) for s in self.size], dtype=np.float64))

    @property
    def data_bytes(self) -> int:
        return self.voxels * self.bytes_per_voxel


# ----------------------------------------------------------------------------- shared checks
def check_spacing(path: Path, spacing, what: str = "voxel spacing") -> None:
    """Refuse zero, negative, NaN or infinite spacings."""
    values = [float(s) for s in spacing]
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise InputError(f"{path}: invalid {what} {tuple(values)} mm: every spacing must be a positive finite number")


def check_direction(path: Path, axes: np.ndarray, what: str = "direction matrix") -> None:
    """Refuse a singular or non-orthogonal 3x3 matrix (columns = the index axes)."""
    axes = np.asarray(axes, dtype=float)
    if not np.isfinite(axes).all():
        raise InputError(f"{path}: invalid {what}: contains NaN or infinite values")
    norms = np.linalg.norm(axes, axis=0)
    if np.any(norms < 1e-12):
        raise InputError(f"{path}: invalid {what}: singular (an axis has zero length)")
    unit = axes / norms
    gram = unit.T @ unit
    if abs(abs(np.linalg.det(unit)) - 1) > ORTHOGONAL_TOL or np.abs(gram - np.eye(3)).max() > ORTHOGONAL_TOL:
        kind = "singular" if abs(np.linalg.det(unit)) < ORTHOGONAL_TOL else "not orthogonal (sheared)"
        raise InputError(f"{path}: invalid {what}: the image axes are {kind}; only rigid orientations are supported")


def confine_data_file(header_path: Path, name: str) -> Path:
    """The detached data file ``name`` of a header, which must lie in the header's own folder."""
    name = name.strip()
    candidate = Path(name)
    folder = header_path.resolve().parent
    if candidate.is_absolute() or ".." in candidate.parts:
        raise InputError(f"{header_path}: its data file {name!r} lies outside the header's folder; "
                         "detached data files must sit beside their header")
    resolved = (folder / candidate).resolve()
    if folder not in resolved.parents:
        raise InputError(f"{header_path}: its data file {name!r} resolves outside the header's folder "
                         f"({resolved}); detached data files must sit beside their header")
    return resolved


def _text_header(path: Path) -> str:
    """The text header of a MetaImage/NRRD file (up to its data), decoded as Latin-1."""
    with open(path, "rb") as handle:
        head = handle.read(MAX_HEADER_BYTES)
    return head.decode("latin-1")


# ----------------------------------------------------------------------------- NIfTI-1
def nifti_header_bytes(path: Path) -> bytes:
    """The first 348 bytes of a NIfTI file (decompressing only those from a .gz)."""
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                return handle.read(348)
        with open(path, "rb") as handle:
            return handle.read(348)
    except (EOFError, OSError, zlib.error) as exc:
        raise InputError(f"{path}: cannot be read as an image volume (truncated or corrupt gzip data: {exc})") from None


def nifti1_fields(header: bytes) -> tuple[str, tuple[int, ...], int, int] | None:
    """(byte order ``<`` or ``>``, ``dim[0..7]``, datatype, bitpix) of a NIfTI-1 header (its first 348
    bytes); None when ``sizeof_hdr`` is 348 in neither byte order (NIfTI-2, or not NIfTI)."""
    for endian in "<>":
        if struct.unpack(endian + "i", header[:4])[0] == 348:
            datatype, bitpix = struct.unpack(endian + "hh", header[70:74])
            return endian, struct.unpack(endian + "8h", header[40:56]), datatype, bitpix
    return None


def inspect_nifti(path: Path) -> HeaderInfo | None:
    """Size and spacing of a NIfTI-1 file; refuses bad pixdim and a singular/sheared sform. None for NIfTI-2."""
    data = nifti_header_bytes(path)
    if len(data) < 348:
        raise InputError(f"{path}: cannot be read as an image volume (truncated NIfTI header: {len(data)} of 348 bytes)")
    fields = nifti1_fields(data)
    if fields is None:
        return None  # NIfTI-2 or not NIfTI: ITK decides
    endian, dims, datatype, bitpix = fields
    ndim = dims[0]
    if not 0 < ndim <= 7 or any(d < 0 for d in dims[1:ndim + 1]):
        raise InputError(f"{path}: invalid NIfTI dimensions {dims}")
    pixdim = struct.unpack(endian + "8f", data[76:108])
    check_spacing(path, pixdim[1:min(ndim, 3) + 1], "voxel spacing (pixdim)")
    qform_code, sform_code = struct.unpack(endian + "hh", data[252:256])
    if sform_code > 0:
        srow = np.asarray(struct.unpack(endian + "12f", data[280:328]), float).reshape(3, 4)
        check_direction(path, srow[:, :3], "orientation (sform)")
    size = tuple(int(d) for d in dims[1:ndim + 1])
    return HeaderInfo(size, tuple(float(p) for p in pixdim[1:ndim + 1]), _NIFTI_BYTES.get(datatype, max(bitpix, 8) // 8),
                      path.name.lower().endswith(".gz"))


# ----------------------------------------------------------------------------- MetaImage
def _meta_fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        fields[key.strip().lower()] = value.strip()
        if key.strip().lower() == "elementdatafile":
            break
    return fields


def _floats(path: Path, text: str, key: str) -> list[float]:
    try:
        return [float(v) for v in text.split()]
    except ValueError:
        raise InputError(f"{path}: header field {key} = {text!r} is not a list of numbers") from None


def inspect_metaimage(path: Path) -> HeaderInfo:
    """Size/spacing of an .mha/.mhd header; refuses bad spacing/direction and data files outside its folder."""
    fields = _meta_fields(_text_header(path))
    if "dimsize" not in fields:
        raise InputError(f"{path}: not a MetaImage header (no DimSize)")
    try:
        size = tuple(int(v) for v in fields["dimsize"].split())
    except ValueError:
        raise InputError(f"{path}: invalid DimSize {fields['dimsize']!r}") from None
    if not size or any(s < 0 for s in size):
        raise InputError(f"{path}: invalid DimSize {fields['dimsize']!r}")
    ndim = len(size)
    for key in ("elementspacing", "elementsize"):
        if key in fields:
            check_spacing(path, _floats(path, fields[key], key)[:ndim], f"voxel spacing ({key})")
    for key in ("transformmatrix", "orientation", "rotation"):
        if key in fields and ndim >= 3:
            values = _floats(path, fields[key], key)
            if len(values) >= 9:
                # MetaImage stores the matrix row by row with rows = the index axes
                check_direction(path, np.asarray(values[:9]).reshape(3, 3).T, f"direction ({key})")
    data_file = fields.get("elementdatafile", "")
    if data_file and data_file.upper() != "LOCAL":
        _confine_meta_list(path, data_file)
    compressed = fields.get("compresseddata", "false").lower() == "true"
    return HeaderInfo(size, (), _META_BYTES.get(fields.get("elementtype", "").upper(), 8)
                      * int(fields.get("elementnumberofchannels", "1") or 1), compressed)


def _confine_meta_list(path: Path, data_file: str) -> None:
    parts = data_file.split()
    if parts[0].upper() == "LIST":
        raise InputError(f"{path}: ElementDataFile = LIST (one file per slice) is not supported; "
                         "convert the volume to a single .mha or .nii.gz file")
    if "%" in parts[0]:  # "name%03d.raw first last step": every generated name must stay in the folder
        if len(parts) < 3:
            raise InputError(f"{path}: invalid ElementDataFile pattern {data_file!r}")
        try:
            first, last = int(parts[1]), int(parts[2])
            step = int(parts[3]) if len(parts) > 3 else 1
            names = [parts[0] % i for i in range(first, last + 1, step or 1)][:100000]
        except (TypeError, ValueError):
            raise InputError(f"{path}: invalid ElementDataFile pattern {data_file!r}") from None
        for name in names:
            confine_data_file(path, name)
        return
    confine_data_file(path, data_file)


# ----------------------------------------------------------------------------- NRRD
def _nrrd_fields(path: Path, text: str) -> dict[str, str]:
    if not text.startswith("NRRD"):
        raise InputError(f"{path}: not a NRRD file (no NRRD magic)")
    fields: dict[str, str] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines[1:], start=1):
        if not line.strip():
            break
        if line.startswith("#") or ":=" in line:
            continue
        key, sep, value = line.partition(":")
        if sep:
            key = key.strip().lower()
            fields[key] = value.strip()
            if key in ("data file", "datafile") and value.strip().upper().startswith("LIST"):
                fields["_list"] = "\n".join(lines[i + 1:])
                break
    return fields


def _vectors(path: Path, text: str) -> list[np.ndarray | None]:
    vectors: list[np.ndarray | None] = []
    for token in re.findall(r"\([^)]*\)|none", text):
        if token == "none":
            vectors.append(None)
            continue
        try:
            vectors.append(np.asarray([float(v) for v in token.strip("()").split(",")]))
        except ValueError:
            raise InputError(f"{path}: invalid space directions {text!r}") from None
    return vectors


def inspect_nrrd(path: Path) -> HeaderInfo:
    """Size/spacing of a .nrrd/.nhdr header; refuses bad spacing/directions and data files outside its folder."""
    fields = _nrrd_fields(path, _text_header(path))
    try:
        size = tuple(int(v) for v in fields.get("sizes", "").split())
    except ValueError:
        raise InputError(f"{path}: invalid NRRD sizes {fields.get('sizes')!r}") from None
    if not size or any(s < 0 for s in size):
        raise InputError(f"{path}: invalid NRRD sizes {fields.get('sizes')!r}")
    spacing: list[float] = []
    if "space directions" in fields:
        vectors = [v for v in _vectors(path, fields["space directions"]) if v is not None]
        if len(vectors) >= 3:
            axes = np.stack(vectors[:3], axis=1)
            if not np.isfinite(axes).all():
                raise InputError(f"{path}: invalid space directions: contain NaN or infinite values")
            spacing = list(np.linalg.norm(axes, axis=0))
            check_spacing(path, spacing, "voxel spacing (space directions)")
            check_direction(path, axes, "space directions")
    if "spacings" in fields:
        values = [v for v in fields["spacings"].split() if v.lower() != "nan"]
        spacing = _floats(path, " ".join(values), "spacings")
        check_spacing(path, spacing, "voxel spacing (spacings)")
    data_file = fields.get("data file", fields.get("datafile", ""))
    if data_file:
        if data_file.upper().startswith("LIST"):
            for name in fields.get("_list", "").split("\n"):
                if name.strip():
                    confine_data_file(path, name)
        else:
            _confine_meta_list(path, data_file) if "%" in data_file else confine_data_file(path, data_file.split()[0])
    type_ = fields.get("type", "").lower()
    nbytes = next((n for n, names in _NRRD_BYTES.items() if type_ in names), 8)
    compressed = fields.get("encoding", "raw").lower() in ("gzip", "gz", "bzip2", "bz2")
    return HeaderInfo(size, tuple(spacing), nbytes, compressed)


def inspect_header(path: Path, suffix: str) -> HeaderInfo | None:
    """:class:`HeaderInfo` for the formats we parse ('' suffix or unknown: None, ITK decides)."""
    if suffix in (".nii", ".nii.gz"):
        return inspect_nifti(path)
    if suffix in (".mha", ".mhd"):
        return inspect_metaimage(path)
    if suffix in (".nrrd", ".nhdr", ".seg.nrrd"):
        return inspect_nrrd(path)
    return None
