"""The phantom as Slicer sample data: a button in the Sample Data module that makes it locally.

Registered through ``SampleData.SampleDataLogic.registerCustomSampleDataSource`` (Slicer 5.8 and 5.10
have the same signature) with a ``customDownloader``: the Sample Data module calls it with the
source when the button is clicked, so nothing is downloaded — the library draws the phantom.
"""
from __future__ import annotations

import logging

from . import paths

CATEGORY = "SculptorGAN"
SAMPLE_NAME = "SculptorGAN phantom"
THUMBNAIL = "Icons/SculptorGANPhantom.png"


def loadPhantom(source=None):
    """Make the phantom CT node (the ``customDownloader``; ``source`` is the SampleDataSource)."""
    import slicer

    from .logic import SculptorGANLogicBase

    node = SculptorGANLogicBase().loadPhantom(SAMPLE_NAME)
    if hasattr(slicer.util, "setSliceViewerLayers") and getattr(slicer, "app", None) is not None:
        slicer.util.setSliceViewerLayers(background=node, fit=True)
    return node


def registerSampleData() -> bool:
    """Add the phantom to the Sample Data module; False (logged) when that module is not there."""
    try:
        import SampleData
    except ImportError:
        logging.info("SculptorGAN: no SampleData module; the phantom is not registered as sample data")
        return False
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category=CATEGORY, sampleName=SAMPLE_NAME, thumbnailFileName=paths.resourcePath(THUMBNAIL),
        uris=[], fileNames=[], nodeNames=[], customDownloader=loadPhantom)  # lists: nothing to download
    return True
