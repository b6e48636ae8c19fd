"""Helpers of the SculptorGAN Slicer module that need no Qt: paths, MRML conversion, the worker
client, exports and dependency checks. ``SculptorGAN.py`` keeps only the Slicer classes."""
