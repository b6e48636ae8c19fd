"""Shared fixtures: small phantoms and geometry helpers (no real data or GPU needed)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def small_phantom():
    """A 48×64×64 phantom at 5 mm (thin truth) — fast enough for end-to-end tests."""
    from SculptorGANLib.synthetic.phantom import make_phantom

    return make_phantom(shape=(48, 64, 64), spacing=(5.0, 5.0, 5.0), seed=3)


@pytest.fixture
def oblique_geometry():
    from SculptorGANLib.core.volume import Geometry

    a, b = np.deg2rad(20), np.deg2rad(10)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return Geometry((0.8, 0.9, 2.5), (-120.5, 33.0, 410.25), rz @ rx)


def shared_data(*parts: str) -> Path:
    """Path into ../shared/data, skipping the test when it is not there."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    return path


def write_dicom_series(folder: Path, array: np.ndarray, spacing_xy: tuple[float, float], positions_z,
                       origin_xy: tuple[float, float] = (0.0, 0.0), series_uid: str = "1.2.3.4") -> Path:
    """Write one axial CT slice per DICOM file at the given z positions (mm), in series ``series_uid``;
    returns the folder."""
    import SimpleITK as sitk

    from SculptorGANLib.io.dicom import preserved_locale

    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    x, y = origin_xy
    with preserved_locale():  # GDCM switches the process locale to "C" when writing decimals
        for i, (slice_, z) in enumerate(zip(array, positions_z)):
            image = sitk.GetImageFromArray(np.asarray(slice_).astype(np.int16)[None])
            image.SetSpacing((*spacing_xy, 1.0))
            image.SetOrigin((x, y, float(z)))
            for tag, value in (("0008|0060", "CT"), ("0020|000d", "1.2.3"), ("0020|000e", series_uid),
                               ("0020|0013", str(i + 1)), ("0020|0032", f"{x}\\{y}\\{z}"),
                               ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0028|1052", "0"), ("0028|1053", "1")):
                image.SetMetaData(tag, value)
            writer.SetFileName(str(folder / f"IM{i:04d}.dcm"))
            writer.Execute(image)
    return folder
