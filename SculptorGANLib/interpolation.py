"""Phase I stage: through-plane upsampling and missing-slice filling.

Classical baselines (linear, cubic B-spline along z) live here; the learned SculptorGAN method plugs
in through :func:`interpolate` with ``method='gan'`` once its weights are available.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.interpolate import make_interp_spline

from .volume import CTVolume

CLASSICAL_METHODS = ("linear", "cubic")


@dataclass
class InterpolationPlan:
    """Where the output slices go, in units of the input slice index."""

    known: np.ndarray      # input z indices that hold acquired slices
    targets: np.ndarray    # output slice positions in input-index units
    out_spacing: float     # output through-plane spacing (mm)


def plan_grid(ct: CTVolume, factor: int | None = None, target_spacing: float | None = None,
              fill_missing: bool = True) -> InterpolationPlan:
    """Output grid for upsampling by ``factor`` or to ``target_spacing`` mm (first slice kept in place)."""
    nz = ct.shape[0]
    dz = ct.geometry.spacing[2]
    missing = set(ct.missing_slices) if fill_missing else set()
    known = np.array([i for i in range(nz) if i not in missing])
    if factor is not None and target_spacing is not None:
        raise ValueError("give either factor or target_spacing, not both")
    if target_spacing is not None:
        if target_spacing <= 0:
            raise ValueError("target spacing must be positive")
        step = target_spacing / dz
    else:
        factor = int(factor or 1)
        if factor < 1:
            raise ValueError("factor must be >= 1")
        step = 1.0 / factor
    count = int(np.floor((nz - 1) / step + 1e-6)) + 1
    return InterpolationPlan(known, np.arange(count) * step, step * dz)


def classical_slices(ct: CTVolume, plan: InterpolationPlan, method: str = "cubic") -> np.ndarray:
    """Slices at ``plan.targets`` from the acquired slices by linear or cubic B-spline interpolation."""
    if method not in CLASSICAL_METHODS:
        raise ValueError(f"unknown classical method {method!r}; choose from {CLASSICAL_METHODS}")
    known = plan.known
    degree = 1 if method == "linear" or len(known) < 4 else 3
    spline = make_interp_spline(known.astype(float), ct.array[known], k=degree, axis=0)
    out = spline(np.clip(plan.targets, known[0], known[-1])).astype(np.float32)
    exact = np.isclose(plan.targets, np.round(plan.targets)) & np.isin(np.round(plan.targets), known)
    out[exact] = ct.array[np.round(plan.targets[exact]).astype(int)]  # acquired slices stay untouched
    return out


def interpolate(ct: CTVolume, factor: int | None = None, target_spacing: float | None = None,
                fill_missing: bool = True, method: str = "cubic") -> tuple[CTVolume, dict]:
    """Upsample ``ct`` through-plane and fill its missing slices.

    Returns the new volume (slice i at z0 + i·spacing along the slice normal) and a dict describing
    what ran (method, input/output spacing and slice counts).
    """
    plan = plan_grid(ct, factor, target_spacing, fill_missing)
    slices = classical_slices(ct, plan, method)
    geometry = ct.geometry.with_z_spacing(plan.out_spacing)
    out = CTVolume(slices, geometry, name=f"{ct.name}_interpolated")
    info = {
        "method": method,
        "input_slices": ct.shape[0],
        "output_slices": out.shape[0],
        "input_spacing_mm": ct.geometry.spacing[2],
        "output_spacing_mm": plan.out_spacing,
        "filled_missing": sorted(int(i) for i in ct.missing_slices) if fill_missing else [],
    }
    return out, info
