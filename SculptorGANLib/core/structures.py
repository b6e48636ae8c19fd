"""The structures we segment, in ONE encoding: names, labelmap values, segment values, colours, terminology.

* labelmap (``segmentation.nii.gz``, :class:`~.volume.LabelVolume` in memory): 0 background,
  :data:`KIDNEY` = 1 (both kidneys), :data:`TUMOR` = 2;
* per-structure maps (``segmentation.seg.nrrd``, the Slicer worker's ``structures.nrrd``, the crops of
  :mod:`.anatomy`): each :class:`Structure` has a fixed ``value`` (Kidney left 1, Kidney right 2, Tumor 3),
  whichever structures were found; a ``.seg.nrrd`` is read back by segment name and terminology, never
  by value (see :mod:`SculptorGANLib.io.segfile`);
* colours: ``color`` is Slicer's anatomical colour (model files, ``.seg.nrrd``; the same for both kidneys),
  ``preview_color`` a distinct one per structure for the preview and its 3D view (the right kidney blue).
"""
from __future__ import annotations

from dataclasses import dataclass

from .volume import BACKGROUND, KIDNEY, LABEL_NAMES, STRUCTURE_COLORS, TUMOR

_ANATOMY = "Segmentation category and type - 3D Slicer General Anatomy list"
_DICOM_MASTER = "Segmentation category and type - DICOM master list"  # has Neoplasm (General Anatomy has not)
_MODIFIERS = "Anatomic codes - DICOM master list"
_KIDNEY_TYPE = "SCT^123037004^Anatomical Structure~SCT^64033007^Kidney"


@dataclass(frozen=True)
class Structure:
    """One structure: how it is named, which labelmap value it is part of, its own value, colours, terminology."""

    name: str
    title: str
    label: int
    value: int
    color: tuple[float, float, float]
    preview_color: tuple[float, float, float]
    terminology: str


STRUCTURES: tuple[Structure, ...] = (
    Structure("kidney_left", "Kidney left", KIDNEY, 1, STRUCTURE_COLORS["kidney_left"], STRUCTURE_COLORS["kidney_left"],
              f"{_ANATOMY}~{_KIDNEY_TYPE}~SCT^7771000^Left~{_MODIFIERS}~^^~^^"),
    Structure("kidney_right", "Kidney right", KIDNEY, 2, STRUCTURE_COLORS["kidney_right"], (0.255, 0.565, 0.957),
              f"{_ANATOMY}~{_KIDNEY_TYPE}~SCT^24028007^Right~{_MODIFIERS}~^^~^^"),
    Structure("tumor", "Tumor", TUMOR, 3, STRUCTURE_COLORS["tumor"], STRUCTURE_COLORS["tumor"],
              f"{_DICOM_MASTER}~SCT^49755003^Morphologically Altered Structure~SCT^108369006^Neoplasm~^^"
              f"~{_MODIFIERS}~SCT^64033007^Kidney~^^"),
)
#: The structure of each name (kidney_left, kidney_right, tumor).
BY_NAME: dict[str, Structure] = {s.name: s for s in STRUCTURES}
#: A labelmap's kidney label as one structure (before the left/right split), for files that have no sides.
KIDNEY_BOTH = Structure("kidney", "Kidney", KIDNEY, KIDNEY, STRUCTURE_COLORS["kidney"], STRUCTURE_COLORS["kidney"],
                        f"{_ANATOMY}~{_KIDNEY_TYPE}~^^~{_MODIFIERS}~^^~^^")
#: Preview colours (distinct per structure).
PREVIEW_COLORS: dict[str, tuple[float, float, float]] = {
    KIDNEY_BOTH.name: KIDNEY_BOTH.preview_color, **{s.name: s.preview_color for s in STRUCTURES}}
#: Slicer terminology entries by structure name.
TERMINOLOGY: dict[str, str] = {KIDNEY_BOTH.name: KIDNEY_BOTH.terminology, **{s.name: s.terminology for s in STRUCTURES}}


def structure_value(name: str, position: int) -> int:
    """The fixed per-structure value of ``name``; names we do not know follow after ours (4, 5, ...)."""
    known = BY_NAME.get(name)
    return known.value if known else len(STRUCTURES) + 1 + position


__all__ = ["BACKGROUND", "BY_NAME", "KIDNEY", "KIDNEY_BOTH", "LABEL_NAMES", "PREVIEW_COLORS", "STRUCTURES",
           "STRUCTURE_COLORS", "Structure", "TERMINOLOGY", "TUMOR", "structure_value"]
