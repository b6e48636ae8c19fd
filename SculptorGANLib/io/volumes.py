"""Read and write CT volumes and labelmaps (NIfTI, NRRD, MHA, DICOM series) with exact geometry.

Every reader validates its input and raises :class:`InputError` naming the file and the problem.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.errors import InputError, OutputError
from ..core.volume import CTVolume, Geometry, LabelVolume, Volume
from .headers import inspect_header
from .limits import check_header_size
from .nifti_check import check_nifti
from .sitk_bridge import geometry_from_sitk, to_sitk
from .verify import verify_volume_file

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def volume_suffix(path: str | os.PathLike) -> str:
    """The volume-format suffix of ``path`` ('.nii.gz', '.nrrd', ...) or '' if none is known."""
    name = str(path).lower()
    if name.endswith(".seg.nrrd"):
        return ".seg.nrrd"
    return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), "")


def stem(path: str | os.PathLike) -> str:
    """File name without its volume suffix ('ct.nii.gz' -> 'ct')."""
    name = Path(path).name
    suffix = volume_suffix(name)
    return name[: len(name) - len(suffix)] if suffix else Path(name).stem


def _checked_array(image: sitk.Image, path: Path) -> tuple[np.ndarray, sitk.Image]:
    """The image's voxels as a 3D array, or an InputError saying why it is not a 3D scalar volume."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel "
                         "(colour or vector image); a scalar CT volume is needed")
    dim = image.GetDimension()
    size = image.GetSize()
    if dim == 4 and size[3] == 1:
        image = image[:, :, :, 0]
    elif dim == 4:
        raise InputError(f"{path}: is a 4D image of size {size}; a single 3D volume is needed")
    elif dim == 2 or (dim == 3 and size[2] == 1):
        raise InputError(f"{path}: is a 2D image of size {size[:2]}; a 3D volume is needed")
    elif dim != 3:
        raise InputError(f"{path}: has {dim} dimensions; a 3D volume is needed")
    array = sitk.GetArrayFromImage(image)
    if min(array.shape) < 2:
        raise InputError(f"{path}: has size {size}; at least 2 voxels along every axis are needed")
    return array, image


def _read_file(path: Path) -> sitk.Image:
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()
        detail = next((line for line in reason if "rror" in line or "nable" in line), reason[-1] if reason else "")
        raise InputError(f"{path}: cannot be read as an image volume (corrupt, truncated or unsupported "
                         f"format{': ' + detail.strip()[:160] if detail else ''})") from None
    except MemoryError:
        raise InputError(f"{path}: out of memory while reading it; the volume is too large for this machine") from None


def _check_file(path: Path, allow_large: bool) -> None:
    """Refuse what is not a readable regular file, and hostile or oversized headers, before ITK reads it."""
    if not path.is_file():
        raise InputError(f"{path}: is not a regular file (a FIFO, socket or device?); a volume file is needed")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: not readable (permission denied)")
    info = inspect_header(path, volume_suffix(path))
    if info is not None:
        check_header_size(path, info.voxels, info.data_bytes, allow_large)
    if volume_suffix(path) in (".nii", ".nii.gz"):
        check_nifti(path)


def _geometry(image: sitk.Image, path: Path) -> Geometry:
    try:
        return geometry_from_sitk(image)
    except ValueError as exc:
        raise InputError(f"{path}: invalid geometry ({exc})") from None


def _checked_read(path: Path, allow_large: bool) -> tuple[np.ndarray, sitk.Image]:
    _check_file(path, allow_large)
    try:
        return _checked_array(_read_file(path), path)
    except MemoryError:
        raise InputError(f"{path}: out of memory while reading it; the volume is too large for this machine") from None


# ----------------------------------------------------------------------------- reading
def read_ct(path: str | os.PathLike, series: str | None = None, allow_large: bool = False) -> CTVolume:
    """Read a CT from a NIfTI/NRRD/MHA file or a DICOM series folder.

    DICOM series with irregular slice positions are placed on a regular grid; slices that were not
    acquired are listed in ``missing_slices`` and linearly filled as placeholders. ``series`` picks a
    DICOM series by its SeriesInstanceUID (default: the one with most slices). Headers are checked
    before any voxel is read (:mod:`.headers`, :mod:`.limits`; ``allow_large`` lifts the size limit).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        from .dicom import read_dicom_series

        return read_dicom_series(path, series=series, allow_large=allow_large)
    if series:
        raise InputError(f"{path}: --series applies to DICOM folders only")
    array, image = _checked_read(path, allow_large)
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise InputError(f"{path}: contains {bad} NaN or infinite voxel values")
    return CTVolume(array, _geometry(image, path), name=stem(path))


def read_labels(path: str | os.PathLike, allow_large: bool = False) -> LabelVolume:
    """Read a labelmap (NIfTI/NRRD/MHA, or a Slicer ``.seg.nrrd``) in the one label encoding (1 kidney, 2 tumor
    for ``.seg.nrrd`` files, whose segments are recognised by name and terminology)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; a labelmap file is needed")
    if volume_suffix(path) == ".seg.nrrd":
        from .segfile import read_seg_nrrd

        _check_file(path, allow_large)
        return read_seg_nrrd(path)
    array, image = _checked_read(path, allow_large)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.isfinite(array).all() or not np.allclose(array, np.round(array)):
            raise InputError(f"{path}: is not a labelmap (non-integer voxel values)")
    if array.min() < 0 or array.max() > 255:
        raise InputError(f"{path}: label values must lie in 0..255, found {array.min()}..{array.max()}")
    array = array.astype(np.uint8)
    values = [int(v) for v in np.unique(array) if v != 0]
    from ..core.volume import LABEL_NAMES

    labels = {v: LABEL_NAMES.get(v, f"label_{v}") for v in values} or dict(LABEL_NAMES)
    return LabelVolume(array, _geometry(image, path), name=stem(path), labels=labels)


# ----------------------------------------------------------------------------- writing
def write_volume(volume: Volume, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write a volume (format from the suffix: .nii.gz, .nii, .nrrd, .mha) with its geometry."""
    path = Path(path)
    suffix = volume_suffix(path)
    if suffix == ".seg.nrrd":
        from .segfile import write_seg_nrrd

        if not isinstance(volume, LabelVolume):
            raise OutputError(f"{path}: only labelmaps can be written as .seg.nrrd")
        return write_seg_nrrd(volume, path)
    if not suffix:
        raise OutputError(f"{path}: unknown volume format; use one of {', '.join(VOLUME_SUFFIXES)}")
    try:
        sitk.WriteImage(to_sitk(volume), str(path), useCompression=compress)
    except RuntimeError as exc:
        raise OutputError(f"{path}: cannot be written ({str(exc).strip().splitlines()[-1][:160]})") from None
    verify_volume_file(path, volume.shape, volume.geometry, volume.array.dtype.itemsize)
    return path
