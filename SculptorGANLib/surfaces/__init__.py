"""Labelmap to closed, smoothed surface models, and mesh export (STL/OBJ/PLY/VTP)."""
