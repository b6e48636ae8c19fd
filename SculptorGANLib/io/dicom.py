"""DICOM series reading with detection of missing slices (irregular slice positions)."""
from __future__ import annotations

import contextlib
import locale
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk

from ..core.errors import InputError
from .limits import check_header_size
from ..core.volume import CTVolume, Geometry


@contextlib.contextmanager
def preserved_locale() -> Iterator[None]:
    """Undo GDCM's habit of switching the process locale to "C" (which makes Python's default text
    encoding ASCII for the rest of the process)."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _slice_positions(files: list[str], normal: np.ndarray) -> np.ndarray:
    """Position of every file's slice along the slice normal (mm)."""
    reader = sitk.ImageFileReader()
    positions = []
    for name in files:
        reader.SetFileName(name)
        reader.ReadImageInformation()
        positions.append(float(np.dot(reader.GetOrigin(), normal)))
    return np.asarray(positions)


def regular_grid_indices(positions: np.ndarray, tolerance: float = 0.2) -> tuple[np.ndarray, float]:
    """Map sorted slice positions to indices on a regular grid.

    The step is the smallest gap between consecutive slices; a gap that is a multiple of it means
    slices are missing there. Returns (index of each slice, step in mm).
    """
    gaps = np.diff(positions)
    if gaps.size == 0:
        return np.zeros(1, dtype=int), 1.0
    if np.any(gaps <= 1e-6):
        raise ValueError("two slices share the same position")
    step = float(np.min(gaps))
    steps = gaps / step
    if np.any(np.abs(steps - np.round(steps)) > tolerance):
        # Not a regular grid with holes: fall back to the median gap without gaps detection.
        raise ValueError(f"slice gaps {np.unique(np.round(gaps, 3))} mm are not multiples of one step")
    return np.concatenate([[0], np.cumsum(np.round(steps).astype(int))]), step


def read_dicom_series(folder: Path, series: str | None = None, allow_large: bool = False) -> CTVolume:
    """Read one DICOM series of ``folder`` onto a regular grid, recording missing slices.

    ``series`` is a SeriesInstanceUID; by default the series with most files is taken, and the volume's
    ``meta`` says which one and what other series the folder holds. A file that looks like DICOM but is in
    no series (corrupt or truncated: GDCM drops it and its slice would silently become a gap) is an error.
    """
    with preserved_locale():
        return _read_dicom_series(Path(folder), series, allow_large)


def _looks_like_dicom(path: Path) -> bool:
    """DICOM magic at byte 128, or a name DICOM files usually have (.dcm, .ima, no suffix)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return True
    return head[128:132] == b"DICM" or path.suffix.lower() in (".dcm", ".ima", ".dicom", "")


def _check_unlisted_files(folder: Path, listed: set[str]) -> None:
    """Name files of the folder that GDCM left out of every series although they look like DICOM slices."""
    reader = sitk.ImageFileReader()
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        if str(path) in listed or path.name.upper() == "DICOMDIR" or not _looks_like_dicom(path):
            continue
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            raise InputError(f"{path}: is in the DICOM folder but cannot be read (corrupt or truncated); "
                             "remove it to let its slice be synthesized as missing, or replace it") from None


def _read_dicom_series(folder: Path, wanted: str | None, allow_large: bool) -> CTVolume:
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise InputError(f"{folder}: no DICOM series found in this folder")
    members = {s: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), s)) for s in series_ids}
    _check_unlisted_files(folder, {f for files in members.values() for f in files})
    if wanted is not None and wanted not in members:
        raise InputError(f"{folder}: has no DICOM series {wanted}; it holds "
                         + ", ".join(f"{s} ({len(f)} files)" for s, f in members.items()))
    series = wanted or max(series_ids, key=lambda s: len(members[s]))
    files = members[series]
    meta = {"series_instance_uid": series}
    if len(members) > 1:
        meta["other_series"] = {s: len(f) for s, f in members.items() if s != series}
    if len(files) < 2:
        raise InputError(f"{folder}: the DICOM series has {len(files)} slice; a 3D volume needs at least 2")
    info = sitk.ImageFileReader()
    info.SetFileName(files[0])
    try:
        info.ReadImageInformation()
    except RuntimeError:
        raise InputError(f"{files[0]}: cannot be read as DICOM (corrupt or truncated)") from None
    size = info.GetSize()
    check_header_size(folder, int(size[0]) * int(size[1]) * len(files), int(size[0]) * int(size[1]) * len(files) * 4,
                      allow_large)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    sitk.ProcessObject.GlobalWarningDisplayOff()
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{_failing_file(files) or folder}: cannot read the DICOM series "
                         f"({str(exc).strip().splitlines()[-1][:160]})") from None
    finally:
        sitk.ProcessObject.GlobalWarningDisplayOn()
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    if array.ndim != 3:
        raise InputError(f"{folder}: the DICOM series is not a scalar 3D volume")
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    normal = direction[:, 2]
    positions = _slice_positions(files, normal)
    order = np.argsort(positions)
    positions, array = positions[order], array[order]
    try:
        indices, step = regular_grid_indices(positions)
    except ValueError as exc:
        raise InputError(f"{folder}: irregular DICOM slice positions: {exc}") from None
    first_origin = np.asarray(image.GetOrigin()) + normal * (positions[0] - np.dot(image.GetOrigin(), normal))
    spacing = (image.GetSpacing()[0], image.GetSpacing()[1], step)
    try:
        geometry = Geometry(spacing, tuple(first_origin), image.GetDirection())
    except ValueError as exc:
        raise InputError(f"{folder}: invalid DICOM geometry ({exc})") from None
    full = np.empty((int(indices[-1]) + 1,) + array.shape[1:], dtype=np.float32)
    full[indices] = array
    missing = sorted(set(range(full.shape[0])) - set(int(i) for i in indices))
    for k in missing:  # linear placeholder between the nearest acquired slices
        below = indices[indices < k].max()
        above = indices[indices > k].min()
        w = (k - below) / (above - below)
        full[k] = (1 - w) * full[below] + w * full[above]
    if not np.isfinite(full).all():
        raise InputError(f"{folder}: contains NaN or infinite voxel values")
    return CTVolume(full, geometry, name=folder.name, missing_slices=tuple(missing), meta=meta)


def _failing_file(files: list[str]) -> str | None:
    """The first file of a series that cannot be read on its own (to name it in the error)."""
    for name in files:
        try:
            sitk.ReadImage(name)
        except RuntimeError:
            return name
    return None
