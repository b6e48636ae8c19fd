"""A region of interest (a box, possibly oblique) that restricts interpolation and segmentation.

The box is given in LPS millimetres in the CT's own physical frame: a ``center`` and three ``edges``
(full-length edge vectors, one per box axis). The pipeline crops the CT to the voxel-grid bounding
box of the ROI plus a context margin, and clears labels outside the exact box, so nothing is
produced where the user excluded it.

Accepted forms (:func:`parse_roi`): a dict ``{"center": [x, y, z], "size": [sx, sy, sz],
"orientation": [9 numbers, row-major, columns = box axes], "coordinateSystem": "LPS"|"RAS"}``;
a Slicer markups ROI file (``.mrk.json``); a plain JSON file holding such a dict; or the string
``"xmin,xmax,ymin,ymax,zmin,zmax"`` (LPS mm).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Tuple

import numpy as np

from .errors import InputError

_FLIP = np.diag([-1.0, -1.0, 1.0])  # LPS <-> RAS
#: Context kept around the ROI for the networks (mm); labels are still cleared outside the ROI.
CONTEXT_MM = 10.0


@dataclass(frozen=True)
class Roi:
    """An oriented box in LPS mm: ``center`` (3,) and ``edges`` (3x3, columns = full edge vectors)."""

    center: Tuple[float, float, float]
    edges: Tuple[float, ...]  # 9 numbers, row-major 3x3

    def __post_init__(self) -> None:
        center = np.asarray(self.center, dtype=float).ravel()
        edges = np.asarray(self.edges, dtype=float).reshape(-1)
        if center.size != 3 or edges.size != 9 or not (np.isfinite(center).all() and np.isfinite(edges).all()):
            raise InputError("ROI: needs a center (3 numbers) and 3 edge vectors (9 numbers)")
        if abs(np.linalg.det(edges.reshape(3, 3))) < 1e-9:
            raise InputError("ROI: the box has zero size along some axis")
        object.__setattr__(self, "center", tuple(float(c) for c in center))
        object.__setattr__(self, "edges", tuple(float(e) for e in edges))

    @property
    def edge_matrix(self) -> np.ndarray:
        return np.asarray(self.edges, dtype=float).reshape(3, 3)

    @classmethod
    def from_bounds(cls, bounds) -> "Roi":
        """Axis-aligned box from (xmin, xmax, ymin, ymax, zmin, zmax) in LPS mm."""
        b = np.asarray(bounds, dtype=float).ravel()
        if b.size != 6 or np.any(b[1::2] <= b[0::2]):
            raise InputError(f"ROI: bounds must be xmin,xmax,ymin,ymax,zmin,zmax with min < max, got {list(b)}")
        return cls(tuple((b[0::2] + b[1::2]) / 2), tuple(np.diag(b[1::2] - b[0::2]).ravel()))

    def corners(self) -> np.ndarray:
        """(8, 3) corner points, LPS mm."""
        signs = np.array([[i, j, k] for i in (-0.5, 0.5) for j in (-0.5, 0.5) for k in (-0.5, 0.5)])
        return np.asarray(self.center) + signs @ self.edge_matrix.T

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Boolean mask of the (..., 3) LPS points inside the box (boundary included)."""
        local = (np.asarray(points, dtype=float) - np.asarray(self.center)) @ np.linalg.inv(self.edge_matrix).T
        return np.all(np.abs(local) <= 0.5 + 1e-9, axis=-1)

    def to_dict(self) -> dict:
        """JSON-able form accepted by :func:`parse_roi` (LPS, orientation = unit box axes)."""
        e = self.edge_matrix
        size = np.linalg.norm(e, axis=0)
        return {"coordinateSystem": "LPS", "center": list(self.center), "size": size.tolist(),
                "orientation": (e / size).ravel().tolist()}


def _from_dict(d: dict, where: str) -> Roi:
    try:
        center = np.asarray(d["center"], dtype=float).ravel()
        size = np.asarray(d["size"], dtype=float).ravel()
        axes = np.asarray(d.get("orientation", np.eye(3).ravel()), dtype=float).reshape(3, 3)
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{where}: a ROI needs 'center' and 'size' (and optionally a 9-number 'orientation')") from None
    if center.size != 3 or size.size != 3 or np.any(size <= 0):
        raise InputError(f"{where}: ROI center must have 3 numbers and size 3 positive numbers")
    if d.get("insideOut"):
        raise InputError(f"{where}: an inside-out ROI (everything except a box) is not supported")
    system = str(d.get("coordinateSystem", "LPS")).upper()
    if system not in ("LPS", "RAS"):
        raise InputError(f"{where}: ROI coordinateSystem must be LPS or RAS, not {system!r}")
    if system == "RAS":
        center, axes = _FLIP @ center, _FLIP @ axes
    return Roi(tuple(center), tuple((axes * size).ravel()))


def _from_file(path: Path) -> Roi:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the ROI file ({exc})") from None
    if isinstance(data, dict) and "markups" in data:  # Slicer markups file
        rois = [m for m in data.get("markups", []) if isinstance(m, dict) and m.get("type") == "ROI"]
        if len(rois) != 1:
            raise InputError(f"{path}: expected one markups ROI, found {len(rois)}")
        return _from_dict(rois[0], str(path))
    if not isinstance(data, dict):
        raise InputError(f"{path}: the ROI file must hold a JSON object")
    return _from_dict(data, str(path))


def parse_roi(value: Any) -> Optional[Roi]:
    """A :class:`Roi` from any accepted form (see the module docstring); None/"" give None."""
    if value is None or isinstance(value, Roi):
        return value
    if isinstance(value, dict):
        return _from_dict(value, "ROI")
    text = str(value).strip()
    if not text:
        return None
    if text.startswith("{"):
        try:
            return _from_dict(json.loads(text), "ROI")
        except ValueError:
            raise InputError("ROI: not valid JSON") from None
    if text.lower().endswith(".json"):
        return _from_file(Path(text))
    try:
        numbers = [float(v) for v in text.replace(";", ",").split(",")]
    except ValueError:
        raise InputError(f"ROI {text!r}: give xmin,xmax,ymin,ymax,zmin,zmax (LPS mm) or a .mrk.json file") from None
    return Roi.from_bounds(numbers)


def voxel_box(roi: Roi, geometry, shape_zyx, margin_mm: float = 0.0) -> Tuple[slice, slice, slice]:
    """(z, y, x) index slices of the grid's voxels covering ``roi`` grown by ``margin_mm``."""
    e = roi.edge_matrix
    lengths = np.linalg.norm(e, axis=0)
    grown = Roi(roi.center, tuple((e * ((lengths + 2 * margin_mm) / lengths)).ravel()))
    to_index = np.linalg.inv(geometry.direction_matrix @ np.diag(geometry.spacing))
    ijk = (grown.corners() - np.asarray(geometry.origin)) @ to_index.T  # (8, 3) in x, y, z order
    low = np.maximum(np.floor(ijk.min(axis=0) + 0.5).astype(int), 0)
    high = np.minimum(np.ceil(ijk.max(axis=0) - 0.5).astype(int) + 1, np.asarray(shape_zyx[::-1]))
    if np.any(high <= low):
        raise InputError("the ROI does not overlap the CT")
    return slice(low[2], high[2]), slice(low[1], high[1]), slice(low[0], high[0])


def crop_to_roi(ct, roi: Roi, margin_mm: float = CONTEXT_MM):
    """``ct`` cropped to the ROI's voxel box plus ``margin_mm`` (a new CTVolume; missing slices kept).

    The z range is widened until its first and last slices were acquired, so that interpolation
    can still fill every missing slice inside the crop.
    """
    from .volume import CTVolume, Geometry

    z, y, x = voxel_box(roi, ct.geometry, ct.shape, margin_mm)
    missing = set(ct.missing_slices)
    z0, z1 = z.start, z.stop - 1
    while z0 > 0 and z0 in missing:
        z0 -= 1
    while z1 < ct.shape[0] - 1 and z1 in missing:
        z1 += 1
    z = slice(z0, z1 + 1)
    if z.stop - z.start < 2 or y.stop - y.start < 2 or x.stop - x.start < 2:
        raise InputError("the ROI covers less than 2 voxels along some axis of the CT")
    g = ct.geometry
    origin = g.index_to_physical(np.array([x.start, y.start, z.start], dtype=float))
    geometry = Geometry(g.spacing, tuple(origin), g.direction)
    kept = tuple(k - z.start for k in sorted(missing) if z.start < k < z.stop - 1)
    return CTVolume(np.ascontiguousarray(ct.array[z, y, x]), geometry, name=ct.name, missing_slices=kept)


def inside_mask(roi: Roi, geometry, shape_zyx) -> np.ndarray:
    """Boolean (z, y, x) mask of the grid's voxel centres inside the exact ROI box (slab by slab)."""
    # box coordinates u = M (index) + c are affine in the voxel index: three broadcast sums per slab
    to_box = np.linalg.inv(roi.edge_matrix)
    m = to_box @ geometry.direction_matrix @ np.diag(geometry.spacing)  # columns: per x, y, z index step
    c = to_box @ (np.asarray(geometry.origin) - np.asarray(roi.center))
    nz, ny, nx = shape_zyx
    i, j = np.arange(nx, dtype=np.float64), np.arange(ny, dtype=np.float64)
    mask = np.empty(shape_zyx, dtype=bool)
    for z0 in range(0, nz, 16):
        k = np.arange(z0, min(z0 + 16, nz), dtype=np.float64)
        inside = np.ones((k.size, ny, nx), dtype=bool)
        for a in range(3):
            u = m[a, 0] * i[None, None, :] + m[a, 1] * j[None, :, None] + (m[a, 2] * k + c[a])[:, None, None]
            inside &= np.abs(u) <= 0.5 + 1e-9
        mask[z0:z0 + k.size] = inside
    return mask


def clear_outside(labels, roi: Roi):
    """``labels`` (a LabelVolume) with every voxel outside the exact ROI box set to background."""
    from dataclasses import replace

    inside = inside_mask(roi, labels.geometry, labels.shape)
    return replace(labels, array=np.where(inside, labels.array, 0).astype(labels.array.dtype))
