"""Segment terminology on every supported Slicer: ``vtkSegment.SetTerminology`` exists only from
Slicer 5.10; 5.8 stores the same string in the tag ``vtkSegment.GetTerminologyEntryTagName()``
("TerminologyEntry", Libs/vtkSegmentationCore/vtkSegment.cxx at v5.8.0). The entries must name
codes that exist in the lists Slicer ships (Modules/Loadable/Terminologies/Resources)."""
from __future__ import annotations

import pytest

import slicer_env

slicer = slicer_env.require_slicer()


class Slicer58Segment:
    """A real vtkSegment seen through Slicer 5.8's API: tags, but no (Set|Get)Terminology."""

    def __init__(self, segment):
        self._segment = segment
        self.SetTag, self.GetTag = segment.SetTag, segment.GetTag
        self.GetTerminologyEntryTagName = segment.GetTerminologyEntryTagName


@pytest.fixture(scope="module")
def mrml():
    slicer_env.new_scene()
    slicer_env.import_module()
    from SculptorGANModuleLib import mrml

    return mrml


def test_58_path_writes_the_terminology_tag(mrml):
    from SculptorGANLib.io.segfile import TERMINOLOGY

    segment = slicer.vtkSegment()
    old = Slicer58Segment(segment)
    assert not hasattr(old, "SetTerminology")
    assert segment.GetTerminologyEntryTagName() == "TerminologyEntry"
    mrml.setSegmentTerminology(old, TERMINOLOGY["kidney_left"])
    assert segment.GetTerminology() == TERMINOLOGY["kidney_left"]  # what 5.10's getter reads: the same tag
    assert mrml.segmentTerminology(old) == TERMINOLOGY["kidney_left"]


def test_510_path_and_both_paths_agree(mrml):
    from SculptorGANLib.io.segfile import TERMINOLOGY

    new, old = slicer.vtkSegment(), slicer.vtkSegment()
    mrml.setSegmentTerminology(new, TERMINOLOGY["tumor"])
    mrml.setSegmentTerminology(Slicer58Segment(old), TERMINOLOGY["tumor"])
    assert new.GetTerminology() == old.GetTerminology() == TERMINOLOGY["tumor"]


def test_kidney_entries_are_in_the_general_anatomy_list():
    from SculptorGANLib.io.segfile import TERMINOLOGY

    for side, code in (("kidney_left", "SCT^7771000^Left"), ("kidney_right", "SCT^24028007^Right")):
        fields = TERMINOLOGY[side].split("~")
        assert fields[0] == "Segmentation category and type - 3D Slicer General Anatomy list"
        assert fields[1:4] == ["SCT^123037004^Anatomical Structure", "SCT^64033007^Kidney", code]


def test_tumor_terminology_is_in_the_dicom_master_list():
    from SculptorGANLib.io.segfile import TERMINOLOGY

    assert TERMINOLOGY["tumor"] == (
        "Segmentation category and type - DICOM master list~SCT^49755003^Morphologically Altered Structure~"
        "SCT^108369006^Neoplasm~^^~Anatomic codes - DICOM master list~SCT^64033007^Kidney~^^")
