"""Reading and writing: CT volumes and labelmaps (NIfTI, NRRD, MHA, DICOM), ``.seg.nrrd``, all-or-nothing outputs."""
from .volumes import read_ct, read_labels, write_volume

__all__ = ["read_ct", "read_labels", "write_volume"]
