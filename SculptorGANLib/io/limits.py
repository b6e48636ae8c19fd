"""Size limits: the work and memory a run needs, estimated from the header and the options before it starts.

A 740 kB file can claim voxels of 60 mm (the segmentation's 3 mm grid is then 8,000 times larger), a 2 MB
gzip stream can inflate to gigabytes and ``--factor 16`` on a large CT writes gigabytes: such runs are
refused with a one-line reason unless the user allows them (``--allow-large``, or
``SCULPTORGAN_ALLOW_LARGE=1``).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from ..core.errors import InputError

#: Voxels of an input volume (512 x 512 x 2048: more than a 0.5 mm whole-body CT has).
MAX_INPUT_VOXELS = 1 << 29
#: Voxels of the interpolated CT (memory: 4 bytes each for the CT, 1 for labels, more in the stages).
MAX_OUTPUT_VOXELS = 1 << 29
#: Voxels of the segmentation network's grid (the CT resampled to the model's spacing, 3 mm by default).
MAX_MODEL_GRID_VOXELS = 1 << 26
#: Bytes of memory a run may be estimated to need.
MAX_MEMORY_BYTES = 24 << 30
#: Bytes per output voxel held at once by the pipeline (CT float32 in and out, labels, masks, previews).
_BYTES_PER_OUTPUT_VOXEL = 14
#: Bytes per voxel of the model grid (input, 3 class probabilities, sliding-window weights, post-processing).
_BYTES_PER_MODEL_VOXEL = 48
ALLOW_HINT = "give --allow-large to run it anyway"


def allow_large_from_env() -> bool:
    return os.environ.get("SCULPTORGAN_ALLOW_LARGE", "").strip().lower() in ("1", "true", "yes")


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.1f} GB"


def check_header_size(path, voxels: int, data_bytes: int, allow_large: bool = False) -> None:
    """Refuse an input whose header promises more voxels than :data:`MAX_INPUT_VOXELS`."""
    if allow_large or allow_large_from_env():
        return
    if voxels > MAX_INPUT_VOXELS:
        raise InputError(f"{path}: the header promises {voxels:,} voxels ({_gib(data_bytes)} of data), more than the "
                         f"limit of {MAX_INPUT_VOXELS:,}; {ALLOW_HINT}")


@dataclass(frozen=True)
class WorkEstimate:
    """Voxels a run creates and the memory it is estimated to need."""

    output_voxels: int
    output_slices: int
    model_grid_voxels: int
    memory_bytes: int

    def line(self) -> str:
        return (f"{self.output_slices} slices, {self.output_voxels:,} output voxels, "
                f"{self.model_grid_voxels:,} voxels on the model grid, about {_gib(self.memory_bytes)} of memory")


def output_slices(nz: int, z_spacing: float, factor: int | None, target_spacing: float | None) -> int:
    """Slices after interpolation (the same grid rule as the interpolation stage: first to last slice)."""
    if factor:
        return (nz - 1) * int(factor) + 1
    if target_spacing:
        return int(math.floor((nz - 1) * z_spacing / float(target_spacing) + 1e-6)) + 1
    return nz


def estimate_work(shape_zyx, spacing_xyz, direction, options, model_spacing=(3.0, 3.0, 3.0)) -> WorkEstimate:
    """Estimate the work of ``options`` on a CT of ``shape_zyx`` / ``spacing_xyz`` (mm, x y z)."""
    nz, ny, nx = (int(v) for v in shape_zyx)
    steps = tuple(getattr(options, "steps", ()))
    nz_out = nz
    if "interpolate" in steps:
        nz_out = output_slices(nz, float(spacing_xyz[2]), getattr(options, "factor", None),
                               getattr(options, "target_spacing", None))
    out_voxels = nz_out * ny * nx
    grid = 0
    if "segment" in steps:
        axes = np.asarray(direction, float).reshape(3, 3) * np.asarray(spacing_xyz, float)
        extent = np.abs(axes) @ np.array([nx - 1, ny - 1, nz - 1], float)  # bounding box of the grid (mm)
        grid = int(np.prod(np.floor(extent / np.asarray(model_spacing, float)) + 1))
    memory = out_voxels * _BYTES_PER_OUTPUT_VOXEL + grid * _BYTES_PER_MODEL_VOXEL
    return WorkEstimate(out_voxels, nz_out, grid, memory)


def check_work(source, shape_zyx, spacing_xyz, direction, options, allow_large: bool = False,
               model_spacing=(3.0, 3.0, 3.0)) -> WorkEstimate:
    """Refuse a run beyond the limits with a one-line reason naming ``source``; returns the estimate."""
    estimate = estimate_work(shape_zyx, spacing_xyz, direction, options, model_spacing)
    if allow_large or allow_large_from_env():
        return estimate
    reasons = []
    if estimate.output_voxels > MAX_OUTPUT_VOXELS:
        reasons.append(f"the interpolated CT would have {estimate.output_voxels:,} voxels "
                       f"({estimate.output_slices} slices; limit {MAX_OUTPUT_VOXELS:,})")
    if estimate.model_grid_voxels > MAX_MODEL_GRID_VOXELS:
        reasons.append(f"its {tuple(round(float(s), 3) for s in spacing_xyz)} mm voxels span "
                       f"{estimate.model_grid_voxels:,} voxels on the segmentation model's "
                       f"{model_spacing[0]:g} mm grid (limit {MAX_MODEL_GRID_VOXELS:,})")
    if not reasons and estimate.memory_bytes > MAX_MEMORY_BYTES:
        reasons.append(f"it would need about {_gib(estimate.memory_bytes)} of memory (limit {_gib(MAX_MEMORY_BYTES)})")
    if reasons:
        raise InputError(f"{source}: too large to process: {'; '.join(reasons)}; {ALLOW_HINT}")
    return estimate
