"""Synthetic CT around real kidney/tumor labelmaps (domain randomization, SynthSeg-style).

``make_layout(labels)`` draws a randomized abdomen (tissue classes) around the given kidneys and
tumor; ``render(layout, rng)`` turns it into CT-like HU. ``prepare`` caches layouts for training.
"""
from .intensity import PHASES, render, tissue_means
from .layout import N_TISSUES, TISSUES, make_layout, smooth_noise

__all__ = ["PHASES", "render", "tissue_means", "N_TISSUES", "TISSUES", "make_layout", "smooth_noise"]
