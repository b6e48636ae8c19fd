"""Measurements of structures and evaluation metrics against references."""
