"""The module's self-test (Slicer's "Reload and Test", ctest with the generic tests): phantom CT →
worker → nodes → export. Without the Python packages the pipeline needs it is *skipped* — with a
message, not an error dialog: Slicer's runTest() is called outside unittest, where a SkipTest
exception would reach ``tryWithErrorDisplay`` as a failure.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

from . import dependencies, paths


class SculptorGANTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer and on slicer-core."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def missing(self) -> list:
        return dependencies.missingPackages()

    def runTest(self):
        missing = self.missing()
        if missing:  # e.g. a build machine without PyTorch: say so and stop, no error dialog
            message = f"SculptorGAN self-test skipped: Python packages not installed: {', '.join(missing)}"
            logging.warning(message)
            self.delayDisplay(message)
            return
        self.setUp()
        self.test_SculptorGAN_phantom()

    def _phantomNode(self):
        from SculptorGANLib.synthetic.phantom import make_phantom

        from . import mrml

        paths.ensureLibraryImportable()
        ct, _labels = make_phantom(shape=(24, 48, 48), spacing=(6.0, 6.0, 6.0), seed=3)
        return mrml.volumeNodeFromCT(ct, "SculptorGAN phantom", slicer.mrmlScene)

    def test_SculptorGAN_phantom(self):
        import numpy as np

        from . import mrml
        from .logic import SculptorGANLogicBase

        missing = self.missing()
        if missing:
            self.skipTest(f"Python packages not installed: {', '.join(missing)} (click Apply once to install)")
        self.delayDisplay("Starting the test")
        inputNode = self._phantomNode()
        before = np.array(slicer.util.arrayFromVolume(inputNode))
        logic = SculptorGANLogicBase()
        result = logic.process(inputNode, steps=("interpolate", "segment", "surfaces"), factor=2, device="cpu",
                               useWorker=True)
        self.assertIsNotNone(result.volumeNode)
        self.assertEqual(slicer.util.arrayFromVolume(result.volumeNode).shape[0], 2 * before.shape[0] - 1)
        names = [result.segmentationNode.GetSegmentation().GetSegment(s).GetName()
                 for s in mrml.segmentIds(result.segmentationNode)]
        self.assertEqual(names[:3], ["Kidney left", "Kidney right", "Tumor"])
        self.assertTrue(result.segmentationNode.GetSegmentation().ContainsRepresentation("Closed surface"))
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(inputNode), before)
        folder = tempfile.mkdtemp(prefix="SculptorGANTest-")
        try:
            exported = logic.exportModels(result.segmentationNode, folder)
            self.assertTrue(os.path.isfile(exported.csvPath))
            self.assertTrue(any(f.lower().endswith(".stl") for f in exported.files))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self.delayDisplay("Test passed")
