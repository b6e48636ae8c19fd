"""Stable import path of the built-in phantom (external check scripts use it); it lives in :mod:`.synthetic.phantom`."""
from .synthetic.phantom import make_phantom

__all__ = ["make_phantom"]
