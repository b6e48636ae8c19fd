"""The module's Logic: everything the panel does, callable from Slicer's Python console.

The pipeline is SculptorGANLib's; this class turns MRML nodes into the library's volumes (exact
geometry, in the frame of the CT's parent transform), runs the pipeline in process or in the
``PythonSlicer`` worker, and makes the result nodes — all of them or none.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic

from . import paths

#: Older keyword names of :meth:`SculptorGANLogicBase.process` → PipelineOptions field names.
ALIASES = {"model": "segmentation_model", "missingSlices": "missing_slices", "targetSpacing": "target_spacing",
           "fillMissing": "fill_missing"}


def _snake(name: str) -> str:
    return ALIASES.get(name) or re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


class SculptorGANRunError(Exception):
    """A pipeline run that did not produce results: ``kind`` as in the worker protocol."""

    MESSAGES = {
        "cancelled": "Cancelled. Nothing was added to the scene.",
        "no_gpu": "No usable GPU: {message}. Choose Device: auto or CPU.",
        "out_of_memory": "Out of memory ({message}). Try Device: CPU, a smaller factor or larger target spacing, "
                         "or a ROI around the kidneys.",
        "missing_dependency": "A required Python package is missing ({message}). Click Apply again to install it.",
        "input": "The input cannot be processed: {message}",
    }

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind, self.message = kind, message

    def userMessage(self) -> str:
        template = self.MESSAGES.get(self.kind, "Processing failed: {message}")
        return template.format(message=self.message)


def pipelineOptions(options=None, **kwargs):
    """The library's PipelineOptions (the one schema) from an instance or keyword arguments: schema
    names or their camelCase forms (``targetSpacing``, ``missingSlices``; ``model`` = segmentation
    model). ``steps`` may include ``surfaces``: then Slicer builds the closed surfaces."""
    from SculptorGANLib.core.errors import SculptorGANError
    from SculptorGANLib.core.options import PipelineOptions

    if options is not None:
        if kwargs:
            raise TypeError("give either options or keyword arguments")
        return options
    try:
        return PipelineOptions(**{_snake(k): v for k, v in kwargs.items()})
    except SculptorGANError as error:
        raise ValueError(str(error)) from None


def workerOptions(options, roi: Optional[dict] = None):
    """``options`` for the worker: its steps (no surfaces: Slicer makes those) and ``roi`` (a ROI dict in
    the CT's frame; None keeps ``options.roi``, e.g. a box typed in the Python console)."""
    from dataclasses import replace

    steps = tuple(s for s in options.steps if s != "surfaces")
    if not steps:
        raise ValueError("Check the interpolate or the segment step.")
    if "surfaces" in options.steps and "segment" not in options.steps:
        raise ValueError("the surfaces step needs the segment step")
    return replace(options, steps=steps, roi=roi if roi is not None else options.roi)


@dataclass
class SculptorGANResult:
    """The nodes one run created (volumeNode is None when no new volume was needed)."""

    volumeNode: Optional[object] = None
    segmentationNode: Optional[object] = None
    tableNode: Optional[object] = None  # measurements (when 3D models were made)
    info: dict = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"note: {note}" for note in self.info.get("notes", [])]
        for step, info in self.info.get("methods", {}).items():
            seconds = self.info.get("timings_s", {}).get(step)
            lines.append(f"{step}: {info.get('method', '')}" + (f" ({seconds:.1f} s)" if seconds else ""))
            lines += [f"  note: {note}" for note in info.get("notes", [])]
        return "\n".join(lines)


@dataclass
class SculptorGANExport:
    files: list
    tableNode: object
    csvPath: str


@dataclass
class InputFrame:
    """Where the processed CT lives: under ``transformNodeID`` (None: world) and, when its non-linear
    transform had to be taken out first, ``note`` says how (results are then in world coordinates)."""

    transformNodeID: Optional[str]
    note: str = ""


@dataclass
class SculptorGANBackgroundRun:
    """A worker started by :meth:`SculptorGANLogicBase.startProcessing` (poll ``job``; then ``finishProcessing``)."""

    job: object
    inputVolumeNode: object
    options: Any  # PipelineOptions
    tempDir: str
    started: float
    frame: InputFrame = field(default_factory=lambda: InputFrame(None))


class SculptorGANLogicBase(ScriptedLoadableModuleLogic):
    """Example (Slicer's Python console)::

        logic = SculptorGAN.SculptorGANLogic()
        result = logic.process(getNode("CT"), factor=2, device="auto", roi=getNode("R"))
        result.volumeNode, result.segmentationNode
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        paths.ensureLibraryImportable()

    # --------------------------------------------------------------------------------- options
    @staticmethod
    def optionsFromParameterNode(p):
        """PipelineOptions of the panel: its step check boxes and fields, plus the Advanced section."""
        from . import advanced

        steps = tuple(s for s, on in (("interpolate", p.interpolate), ("segment", p.segment),
                                      ("surfaces", p.segment and p.makeModels)) if on)
        if not steps:
            raise ValueError("Check at least one step.")
        spacing = float(p.targetSpacing) if p.targetSpacing > 0 else None
        missing = tuple(int(v) for v in p.missingSlices.replace(";", ",").replace(" ", ",").split(",") if v.strip())
        values = dict(advanced.decode(p.advancedOptions))
        values.update(steps=steps, factor=None if spacing else int(p.factor), target_spacing=spacing,
                      fill_missing=bool(p.fillMissing), missing_slices=missing if p.interpolate else (),
                      device=advanced.DEVICES.get(p.device, "auto"), segmentation_model=p.modelCard.strip() or None,
                      smoothing=float(p.smoothing))
        return pipelineOptions(**values)

    def _prepare(self, inputVolumeNode, options, roi=None):
        """(CT in its frame, frame, worker PipelineOptions) for a run on ``inputVolumeNode``."""
        from . import mrml

        if inputVolumeNode is None or inputVolumeNode.GetScene() is None:
            raise ValueError("Select an input volume that is in the scene.")
        ct, transformNodeID, note = mrml.inputCT(inputVolumeNode)
        frame = InputFrame(transformNodeID, note)
        box = None
        if roi is not None:
            frameNode = inputVolumeNode.GetScene().GetNodeByID(transformNodeID) if transformNodeID else None
            box = mrml.roiInFrame(roi, frameNode)
        return ct, frame, workerOptions(options, box)

    # --------------------------------------------------------------------------------- synchronous
    def process(self, inputVolumeNode, options=None, roi=None, progress=None, cancel=None,
                useWorker: bool = False, **kwargs) -> SculptorGANResult:
        """Run the pipeline on ``inputVolumeNode`` and return the created nodes (input untouched).

        ``options``: a PipelineOptions, or keyword arguments by schema name (steps, factor,
        target_spacing, missing_slices, overlap, …; camelCase works too). ``roi``: an optional markups
        ROI node. ``progress(fraction, message)`` and ``cancel() -> bool`` are optional callbacks.
        In-process by default; ``useWorker=True`` runs the same ``PythonSlicer`` subprocess as the panel.
        """
        options = pipelineOptions(options, **kwargs)
        if useWorker:
            run = self.startProcessing(inputVolumeNode, options, roi=roi)

            def forward(event):
                if event.get("event") == "progress" and progress:
                    progress(float(event.get("fraction", 0)), event.get("message", ""))
                if cancel and cancel():
                    run.job.cancel()

            run.job.wait(onEvent=forward)
            return self.finishProcessing(run)
        from SculptorGANLib.slicer_worker import classify, run_request

        started = time.perf_counter()
        try:
            ct, frame, request = self._prepare(inputVolumeNode, options, roi)
            outputs = run_request(ct, request, progress=progress, cancel=cancel)
        except ValueError:
            raise
        except Exception as exc:
            kind, message = classify(exc)
            raise SculptorGANRunError(kind, message) from exc
        result = self._createResultNodes(inputVolumeNode, ct, frame, outputs.ct if outputs.interpolated else None,
                                         outputs.structures, options, outputs.info)
        result.seconds = time.perf_counter() - started
        return result

    # --------------------------------------------------------------------------------- background
    def startProcessing(self, inputVolumeNode, options=None, roi=None, python=None, extraArguments=(),
                        **kwargs) -> SculptorGANBackgroundRun:
        """Write the input and the options document to a temporary folder and start the worker; returns at once."""
        from SculptorGANLib.io.volumes import write_volume

        from .worker import WorkerJob

        options = pipelineOptions(options, **kwargs)
        base = getattr(getattr(slicer, "app", None), "temporaryPath", None) or tempfile.gettempdir()
        tempDir = tempfile.mkdtemp(prefix="SculptorGAN-", dir=base)
        try:
            ct, frame, request = self._prepare(inputVolumeNode, options, roi)
            inputPath = os.path.join(tempDir, "input.nrrd")
            write_volume(ct, inputPath, compress=False)
            optionsPath = os.path.join(tempDir, "options.json")
            with open(optionsPath, "w", encoding="utf-8") as f:
                json.dump(request.to_json(), f, indent=1)
            arguments = ["--input", inputPath, "--output", os.path.join(tempDir, "output"),
                         "--options", "@" + optionsPath, *extraArguments]
            job = WorkerJob(arguments, python=python)
        except Exception:
            shutil.rmtree(tempDir, ignore_errors=True)
            raise
        return SculptorGANBackgroundRun(job, inputVolumeNode, options, tempDir, time.perf_counter(), frame)

    def finishProcessing(self, run: SculptorGANBackgroundRun) -> SculptorGANResult:
        """Load a finished worker's outputs as nodes (raises :class:`SculptorGANRunError` if it failed)."""
        from SculptorGANLib.io.volumes import read_ct
        from SculptorGANLib.slicer_worker import EXIT_CODES, MANIFEST, read_outputs

        try:
            run.job.wait()
            outputDir = os.path.join(run.tempDir, "output")
            code = run.job.returncode
            if code != 0 or not os.path.isfile(os.path.join(outputDir, MANIFEST)):
                last = run.job.lastEvent or {}
                kinds = {v: k for k, v in EXIT_CODES.items()}
                kind = last.get("kind") or kinds.get(code, "cancelled" if run.job.cancelRequestedAt else "error")
                message = last.get("message") or f"the worker stopped with exit code {code}"
                raise SculptorGANRunError(kind, message)
            if run.inputVolumeNode.GetScene() is None:  # the scene was closed while the worker ran
                raise SculptorGANRunError("cancelled", "the input volume was removed from the scene")
            manifest, ct, structures = read_outputs(outputDir)
            inputCT = read_ct(os.path.join(run.tempDir, "input.nrrd")) if run.frame.note and ct is None else None
            result = self._createResultNodes(run.inputVolumeNode, inputCT, run.frame, ct, structures, run.options,
                                             manifest.get("info", {}))
            result.seconds = time.perf_counter() - run.started
            return result
        finally:
            run.job.close()
            shutil.rmtree(run.tempDir, ignore_errors=True)

    # --------------------------------------------------------------------------------- nodes
    def _createResultNodes(self, inputVolumeNode, inputCT, frame: InputFrame, ct, structures, options,
                           info) -> SculptorGANResult:
        """All result nodes, or none: anything added is removed again when a step fails."""
        from . import mrml

        scene = inputVolumeNode.GetScene()
        name = inputVolumeNode.GetName()
        result = SculptorGANResult(info=json.loads(json.dumps(info, default=str)))  # a copy
        if frame.note:
            result.info.setdefault("notes", []).append(frame.note)
            if ct is None and structures is not None:  # segments need a reference grid in world coordinates
                ct = inputCT
        with mrml.NewNodesRemovedOnError(scene):
            if ct is not None:
                suffix = " SculptorGAN" if not frame.note or "interpolate" in result.info.get("methods", {}) else \
                    " SculptorGAN (world)"
                result.volumeNode = mrml.volumeNodeFromCT(ct, name + suffix, scene, inputVolumeNode,
                                                          transformNodeID=frame.transformNodeID)
                mrml.placeInStudyOf(result.volumeNode, inputVolumeNode)
            if structures is not None:
                reference = result.volumeNode or inputVolumeNode
                segNode = mrml.segmentationNodeFromLabels(structures, reference, f"{name} SculptorGAN segmentation",
                                                          scene)
                mrml.placeInStudyOf(segNode, inputVolumeNode)
                if "surfaces" in options.steps:
                    started = time.perf_counter()
                    mrml.updateClosedSurfaces(segNode, options.smoothing)
                    self.showIn3D(segNode, options.smoothing)
                    result.info.setdefault("methods", {})["surfaces"] = {
                        "method": f"Slicer closed-surface representation (smoothing {options.smoothing:g})"}
                    result.info.setdefault("timings_s", {})["surfaces"] = round(time.perf_counter() - started, 3)
                    try:
                        result.tableNode = self._updateMeasurements(segNode)[0]
                    except Exception as error:  # the models are there; the table can be made with Update models
                        logging.warning("SculptorGAN: measurements failed: %s", error)
                result.segmentationNode = segNode
        return result

    @staticmethod
    def referenceVolume(segNode):
        if segNode is None:
            return None
        return segNode.GetNodeReference(segNode.GetReferenceImageGeometryReferenceRole())

    def showIn3D(self, segNode, smoothing: Optional[float] = None) -> None:
        """Closed surfaces built (if missing) and shown in the 3D view."""
        from . import mrml

        if segNode is None:
            raise ValueError("No segmentation selected.")
        if not segNode.GetSegmentation().ContainsRepresentation("Closed surface"):
            mrml.updateClosedSurfaces(segNode, 0.5 if smoothing is None else smoothing)
        if segNode.GetDisplayNode() is None:
            segNode.CreateDefaultDisplayNodes()
        display = segNode.GetDisplayNode()
        display.SetVisibility(True)
        display.SetVisibility3D(True)
        display.SetPreferredDisplayRepresentationName3D("Closed surface")

    def _updateMeasurements(self, segNode):
        """Create or refresh the segmentation's measurement table node; returns (table, measurements)."""
        from . import export

        reference = self.referenceVolume(segNode)
        if reference is None:
            raise ValueError("The segmentation has no reference volume.")
        table, measurements = export.measurementTable(segNode, reference,
                                                      segNode.GetNodeReference("SculptorGANMeasurements"))
        segNode.SetNodeReferenceID("SculptorGANMeasurements", table.GetID())
        return table, measurements

    def updateModels(self, segNode, smoothing: float = 0.5):
        """Rebuild the closed surfaces after edits and refresh the measurement table; returns the table node."""
        from . import mrml

        if segNode is None:
            raise ValueError("No segmentation selected.")
        mrml.updateClosedSurfaces(segNode, smoothing)
        self.showIn3D(segNode, smoothing)
        return self._updateMeasurements(segNode)[0]

    def exportModels(self, segNode, folder: str, fileFormat: str = "STL", coordinates: str = "LPS") -> SculptorGANExport:
        """Write the models (STL per segment or one OBJ; LPS or RAS) and ``measurements.csv`` to ``folder``."""
        from . import export

        if segNode is None:
            raise ValueError("No segmentation selected.")
        files = export.exportModels(segNode, folder, fileFormat, coordinates)
        table, measurements = self._updateMeasurements(segNode)
        csvPath = export.writeMeasurementsCSV(measurements, os.path.join(folder, "measurements.csv"))
        return SculptorGANExport(files + [csvPath], table, csvPath)

    def loadPhantom(self, name: str = "SculptorGAN phantom", seed: int = 0):
        """The library's synthetic abdominal CT (kidneys, one tumor) as a new volume node."""
        from SculptorGANLib.synthetic.phantom import make_phantom

        from . import mrml

        ct, _labels = make_phantom(seed=seed)
        return mrml.volumeNodeFromCT(ct, name, slicer.mrmlScene)
