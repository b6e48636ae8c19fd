"""Volumes with physical geometry: a numpy array indexed (z, y, x) plus spacing, origin, direction.

Geometry follows ITK/SimpleITK conventions in LPS: ``spacing`` and ``origin`` are given in (x, y, z)
order and ``direction`` is a 3x3 matrix whose *columns* are the x, y, z index axes in LPS space, so
that ``physical = origin + direction @ (spacing * (i, j, k))`` for voxel index (i=x, j=y, k=z).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence, Mapping

import numpy as np

#: Label values used throughout the project.
BACKGROUND, KIDNEY, TUMOR = 0, 1, 2
#: Default label names; left/right kidney are split only when surfaces are made.
LABEL_NAMES: dict[int, str] = {KIDNEY: "kidney", TUMOR: "tumor"}
#: Structure colors (RGB 0-1), Slicer's anatomical defaults.
STRUCTURE_COLORS: dict[str, tuple[float, float, float]] = {
    "kidney": (185 / 255, 102 / 255, 83 / 255),  # Slicer's recommended Kidney colour, both sides
    "kidney_left": (185 / 255, 102 / 255, 83 / 255),
    "kidney_right": (185 / 255, 102 / 255, 83 / 255),
    "tumor": (0.565, 0.933, 0.565),
}


#: Largest deviation from orthonormal a direction matrix may have (float32 files round to about 1e-7).
DIRECTION_TOLERANCE = 1e-3


def check_direction(matrix: np.ndarray) -> None:
    """Raise ValueError unless ``matrix`` is a rotation or reflection: finite, non-singular, orthonormal axes."""
    matrix = np.asarray(matrix, dtype=float)
    if not np.isfinite(matrix).all():
        raise ValueError("direction matrix contains NaN or infinite values")
    det = float(np.linalg.det(matrix))
    if abs(det) < DIRECTION_TOLERANCE:
        raise ValueError("direction matrix is singular (two image axes coincide)")
    if np.abs(matrix.T @ matrix - np.eye(3)).max() > DIRECTION_TOLERANCE:
        raise ValueError("direction matrix is not orthonormal (sheared or scaled axes)")


@dataclass(frozen=True)
class Geometry:
    """Where a (z, y, x) voxel grid sits in LPS physical space."""

    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(o) for o in self.origin))
        object.__setattr__(self, "direction", tuple(float(d) for d in np.ravel(self.direction)))
        if len(self.spacing) != 3 or len(self.origin) != 3 or len(self.direction) != 9:
            raise ValueError("Geometry needs 3 spacings, 3 origin values and a 3x3 direction")
        if not all(np.isfinite(self.spacing)) or min(self.spacing) <= 0:
            raise ValueError(f"spacing must be positive and finite, got {self.spacing}")
        if not all(np.isfinite(self.origin)):
            raise ValueError(f"origin must be finite, got {self.origin}")
        check_direction(self.direction_matrix)

    @property
    def direction_matrix(self) -> np.ndarray:
        """3x3 direction matrix (columns = index axes x, y, z in LPS)."""
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    def affine_lps(self) -> np.ndarray:
        """4x4 matrix mapping (x, y, z, 1) voxel indices to LPS millimetres."""
        affine = np.eye(4)
        affine[:3, :3] = self.direction_matrix @ np.diag(self.spacing)
        affine[:3, 3] = self.origin
        return affine

    def index_to_physical(self, ijk: np.ndarray) -> np.ndarray:
        """Map (..., 3) voxel indices in (x, y, z) order to LPS millimetres."""
        ijk = np.asarray(ijk, dtype=float)
        return ijk @ (self.direction_matrix @ np.diag(self.spacing)).T + np.asarray(self.origin)

    def with_z_spacing(self, z_spacing: float) -> "Geometry":
        """Same grid start and axes with a new through-plane spacing."""
        return replace(self, spacing=(self.spacing[0], self.spacing[1], float(z_spacing)))

    def to_dict(self) -> dict:
        return {"spacing": list(self.spacing), "origin": list(self.origin), "direction": list(self.direction)}


@dataclass
class Volume:
    """A 3D array indexed (z, y, x) with its geometry."""

    array: np.ndarray
    geometry: Geometry = field(default_factory=Geometry)
    name: str = "volume"

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"{self.name}: expected a 3D array, got shape {self.array.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        return self.geometry.spacing

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.geometry.spacing)) / 1000.0

    def same_grid(self, other: "Volume", atol: float = 1e-4) -> bool:
        """True when both volumes share shape and geometry."""
        a, b = self.geometry, other.geometry
        return (
            self.shape == other.shape
            and np.allclose(a.spacing, b.spacing, atol=atol)
            and np.allclose(a.origin, b.origin, atol=atol)
            and np.allclose(a.direction, b.direction, atol=atol)
        )


@dataclass
class CTVolume(Volume):
    """A CT in Hounsfield units (float32).

    ``missing_slices`` lists z indices that were not acquired (gaps found in a DICOM series or
    declared by the user); their content is a placeholder until the interpolation stage fills them.
    ``meta`` says where the voxels came from (DICOM series chosen), for the report.
    """

    name: str = "ct"
    missing_slices: tuple[int, ...] = ()
    #: Where the voxels came from, for the report (e.g. the DICOM SeriesInstanceUID and the other series).
    meta: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.array = np.asarray(self.array, dtype=np.float32)

    def with_missing(self, indices: Sequence[int]) -> "CTVolume":
        """A copy with slices ``indices`` (0-based, inner slices only) marked as not acquired; their content
        becomes a linear placeholder from the nearest acquired neighbours until interpolation fills them."""
        from .errors import InputError

        missing = sorted(set(int(i) for i in indices) | set(self.missing_slices))
        nz = self.shape[0]
        bad = [i for i in missing if i <= 0 or i >= nz - 1]
        if bad:
            raise InputError(f"missing slices {bad}: only inner slices 1..{nz - 2} can be missing")
        kept = np.array([i for i in range(nz) if i not in missing])
        array = self.array.copy()
        for k in missing:
            below, above = kept[kept < k].max(), kept[kept > k].min()
            w = (k - below) / (above - below)
            array[k] = (1 - w) * array[below] + w * array[above]
        return CTVolume(array, self.geometry, name=self.name, missing_slices=tuple(missing), meta=dict(self.meta))


@dataclass
class LabelVolume(Volume):
    """An integer labelmap (0 background) with names for its labels."""

    name: str = "segmentation"
    labels: Mapping[int, str] = field(default_factory=lambda: dict(LABEL_NAMES))

    def __post_init__(self) -> None:
        super().__post_init__()
        self.array = np.asarray(self.array, dtype=np.uint8)

    def volumes_ml(self) -> dict[str, float]:
        """Volume of each named label in millilitres."""
        counts = np.bincount(self.array.ravel(), minlength=max(self.labels, default=0) + 1)
        return {name: float(counts[value]) * self.voxel_volume_ml for value, name in self.labels.items()}
