"""CT-like Hounsfield units for a tissue layout, with domain randomization.

A contrast phase is drawn at random (non-contrast, arterial/corticomedullary, nephrographic/portal,
excretory) and each tissue gets a mean HU from a plausible range for that phase; sometimes every
tissue instead gets a fully random intensity (SynthSeg-style). Then per-tissue texture, a smooth bias
field, partial-volume blur (thicker along z to mimic slice thickness), noise and clipping are applied.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .layout import N_TISSUES, TISSUES, smooth_noise

PHASES = ("noncontrast", "arterial", "nephrographic", "excretory")
# (low, high) mean HU per tissue and phase: noncontrast, arterial, nephrographic, excretory
_RANGES: dict[str, tuple] = {
    "air": ((-1000, -990),) * 4,
    "subcut_fat": ((-120, -80),) * 4,
    "muscle_wall": ((35, 60), (40, 65), (45, 75), (45, 70)),
    "visceral_fat": ((-115, -75),) * 4,
    "perirenal_fat": ((-115, -60),) * 4,
    "cortex": ((25, 45), (140, 300), (130, 220), (120, 200)),
    "medulla": ((22, 42), (40, 110), (120, 210), (110, 190)),
    "tumor": ((20, 50), (40, 220), (40, 150), (40, 130)),
    "necrosis": ((0, 30), (0, 40), (0, 40), (0, 40)),
    "sinus_fat": ((-110, -40),) * 4,
    "urine": ((0, 20), (0, 20), (0, 30), (300, 1200)),
    "renal_vessel": ((30, 50), (200, 400), (130, 200), (120, 180)),
    "liver": ((40, 70), (55, 90), (90, 140), (80, 130)),
    "spleen": ((35, 55), (80, 160), (100, 140), (90, 130)),
    "bowel_wall": ((25, 50), (50, 120), (60, 120), (50, 110)),
    "bowel_fluid": ((-5, 25),) * 4,
    "gas": ((-1000, -700),) * 4,
    "oral_contrast": ((150, 700),) * 4,
    "cancellous": ((120, 300),) * 4,
    "cortical_bone": ((450, 1200),) * 4,
    "canal": ((5, 40),) * 4,
    "muscle": ((35, 60), (40, 65), (45, 75), (45, 70)),
    "aorta": ((30, 55), (200, 450), (130, 200), (120, 180)),
    "ivc": ((30, 50), (40, 120), (120, 190), (110, 170)),
    "lung": ((-900, -750),) * 4,
    "gallbladder": ((-5, 25),) * 4,
    "pancreas": ((30, 50), (80, 150), (80, 130), (70, 120)),
    "distractor": ((-50, 300),) * 4,
    "disc": ((60, 110),) * 4,
    "stomach_content": ((-50, 60),) * 4,
}
assert set(_RANGES) == set(TISSUES)
_PHASE_P = (0.35, 0.2, 0.3, 0.15)
_NO_RANDOMIZE = {"air", "gas", "lung"}


def tissue_means(rng: np.random.Generator, phase: str | None = None, random_prob: float = 0.15) -> tuple[np.ndarray, str]:
    """Mean HU per tissue class and the phase name ('random' for SynthSeg-style intensities)."""
    means = np.zeros(N_TISSUES, dtype=np.float32)
    if phase is None and rng.random() < random_prob:
        for i, name in enumerate(TISSUES):
            lo, hi = _RANGES[name][0]
            means[i] = rng.uniform(lo, hi) if name in _NO_RANDOMIZE else rng.uniform(-150, 400)
        return means, "random"
    if phase is None:
        phase = PHASES[rng.choice(4, p=_PHASE_P)]
    k = PHASES.index(phase)
    for i, name in enumerate(TISSUES):
        lo, hi = _RANGES[name][k]
        means[i] = rng.uniform(lo, hi)
    if phase == "arterial" and rng.random() < 0.5:  # corticomedullary differentiation varies a lot
        means[TISSUES.index("medulla")] = means[TISSUES.index("cortex")] * rng.uniform(0.3, 0.9)
    return means, phase


def render(layout: np.ndarray, rng: np.random.Generator, phase: str | None = None, spacing=(3.0, 3.0, 3.0),
           random_prob: float = 0.15) -> tuple[np.ndarray, dict]:
    """Hounsfield units (float32) for ``layout`` and a dict describing what was drawn."""
    means, phase = tissue_means(rng, phase, random_prob)
    hu = means[layout]
    shape = layout.shape
    # per-tissue texture: two shared noise fields scaled by per-tissue amplitudes
    amp_fine = rng.uniform(0, 18, N_TISSUES).astype(np.float32)
    amp_coarse = rng.uniform(0, 20, N_TISSUES).astype(np.float32)
    hu += amp_fine[layout] * smooth_noise(shape, rng, rng.uniform(1.0, 2.0))
    hu += amp_coarse[layout] * smooth_noise(shape, rng, rng.uniform(3.0, 8.0))
    # bias field
    hu += rng.uniform(0, 25) * smooth_noise(shape, rng, 30)
    # blur (partial volume; more along z for thick slices)
    sigma_xy = rng.uniform(0.2, 1.0)
    sigma_z = sigma_xy * rng.uniform(1.0, 2.5) if rng.random() < 0.5 else sigma_xy
    hu = ndimage.gaussian_filter(hu, (sigma_z, sigma_xy, sigma_xy))
    noise = rng.uniform(3, 35)
    hu += rng.normal(0, noise, shape).astype(np.float32)
    np.clip(hu, -1024, 3071, out=hu)
    return hu, {"phase": phase, "noise_hu": noise, "blur": (sigma_z, sigma_xy)}
