import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Annotated, Optional

import qt
import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, Minimum, Maximum, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from SculptorGANModuleLib import paths

PAPER = ("P. Suman Prakash, P. Kiran Rao, E. Suresh Babu, S. Bhatia Khan, A. Almusharraf, M. Tabrez Quasim: "
         "Decoupled SculptorGAN Framework for 3D Reconstruction and Enhanced Segmentation of Kidney Tumors "
         "in CT Images. IEEE Access 12 (2024). doi:10.1109/ACCESS.2024.3389504")
DEVICES = {"auto": "auto", "GPU": "cuda", "CPU": "cpu"}  # GUI choice → library device name


#
# SculptorGAN
#


class SculptorGAN(ScriptedLoadableModule):
    """Module metadata (title, category, help and acknowledgement)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SculptorGAN")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["SculptorGAN developers"]
        self.parent.helpText = _("""
Kidney and kidney-tumor 3D models from a CT: fills in missing or thick slices (SculptorGAN slice
interpolation), segments the left and right kidney and the tumor, and builds smoothed 3D models with
measurements. Results are new nodes; the input volume is never modified. Correct the masks in the
Segment Editor, then update and export the models.
See the <a href="https://github.com/SculptorGAN/SlicerSculptorGAN#3d-slicer">module documentation</a>.
<br><b>Research software, not for clinical use.</b>
""")
        self.parent.acknowledgementText = _("""
This module implements the method described in: {paper}
""").format(paper=PAPER)
        try:
            icon = paths.resourcePath("Icons/SculptorGAN.png")
            if os.path.isfile(icon):
                self.parent.icon = qt.QIcon(icon)
        except RuntimeError:
            pass


#
# SculptorGANParameterNode
#


@parameterNodeWrapper
class SculptorGANParameterNode:
    """What the panel shows; saved with the scene.

    inputVolume - the CT to process (never modified).
    interpolate / segment / makeModels - the steps to run.
    factor, targetSpacing - through-plane upsampling: factor K, or a spacing in mm (0 = use the factor).
    missingSlices - indices of slices that were not acquired (e.g. "12, 13"), synthesized when fillMissing.
    smoothing - 3D model smoothing 0–1 (Slicer's closed-surface smoothing factor).
    device - auto (GPU when present), GPU or CPU.
    modelCard - a user's segmentation model card (.json); empty = the shipped default.
       (modelCard and exportFolder are strings synced by hand with their path widgets, so that "no
       path" shows as an empty field rather than as ".")
    outputVolume, outputSegmentation - the last results (Update models / Export act on the segmentation).
    exportFolder, exportFormat, exportCoordinates - where and how Export models writes.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    interpolate: bool = True
    factor: Annotated[int, Minimum(1), Maximum(16)] = 2
    targetSpacing: Annotated[float, WithinRange(0.0, 20.0)] = 0.0
    fillMissing: bool = True
    missingSlices: str = ""
    segment: bool = True
    makeModels: bool = True
    smoothing: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    device: Annotated[str, Choice(["auto", "GPU", "CPU"])] = "auto"
    modelCard: str = ""
    outputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    exportFolder: str = ""
    exportFormat: Annotated[str, Choice(["STL", "OBJ"])] = "STL"
    exportCoordinates: Annotated[str, Choice(["LPS", "RAS"])] = "LPS"


#
# SculptorGANWidget
#


class SculptorGANWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: thin — every action is one Logic call."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None
        self._timer = None

    def resourcePath(self, filename):
        return paths.resourcePath(filename)  # Resources may sit one folder up (source tree, extension)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SculptorGAN.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = SculptorGANLogic()
        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.connect("timeout()", self.onTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.show3DButton.connect("clicked(bool)", self.onShow3DButton)
        self.ui.segmentEditorButton.connect("clicked(bool)", self.onSegmentEditorButton)
        self.ui.updateModelsButton.connect("clicked(bool)", self.onUpdateModelsButton)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        # Two path widgets are synced by hand (string parameters; see SculptorGANParameterNode).
        self.ui.modelCardPathLineEdit.connect("currentPathChanged(QString)", self.onModelCardChanged)
        self.ui.exportFolderButton.connect("directoryChanged(QString)", self.onExportFolderChanged)
        self.ui.progressBar.setVisible(False)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._run is not None:
            self._run.job.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._disconnectGui()
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def _disconnectGui(self) -> None:
        if self._parameterNode and self._parameterNodeGuiTag is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        if self._run is not None:  # its input is going away: stop it, nothing will be loaded
            self._run.job.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            volumes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            first = next((v for v in volumes if v.GetClassName() == "vtkMRMLScalarVolumeNode"), None)  # no labelmaps
            if first:
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode: Optional[SculptorGANParameterNode]) -> None:
        if self._parameterNode:
            self._disconnectGui()
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets in the .ui carry a "SlicerParameterName" property naming their parameter.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._updateButtons()

    def _updateButtons(self, caller=None, event=None) -> None:
        p = self._parameterNode
        running = self._run is not None
        anyStep = bool(p and (p.interpolate or p.segment))
        self.ui.applyButton.enabled = running or bool(p and p.inputVolume and anyStep)
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        self.ui.applyButton.toolTip = (_("Stop the running pipeline") if running else
                                       _("Run the checked steps") if self.ui.applyButton.enabled else
                                       _("Select a CT volume and at least one step"))
        hasSegmentation = bool(p and p.outputSegmentation)
        for button in (self.ui.show3DButton, self.ui.segmentEditorButton, self.ui.updateModelsButton,
                       self.ui.exportButton):
            button.enabled = hasSegmentation and not running
        self.ui.factorSpinBox.enabled = bool(p and p.interpolate and p.targetSpacing <= 0)
        if p:
            if self.ui.modelCardPathLineEdit.currentPath != p.modelCard:
                self.ui.modelCardPathLineEdit.currentPath = p.modelCard
            if p.exportFolder and self.ui.exportFolderButton.directory != p.exportFolder:
                self.ui.exportFolderButton.directory = p.exportFolder

    def onModelCardChanged(self, path: str) -> None:
        if self._parameterNode and self._parameterNode.modelCard != path:
            self._parameterNode.modelCard = path

    def onExportFolderChanged(self, folder: str) -> None:
        if self._parameterNode and self._parameterNode.exportFolder != folder:
            self._parameterNode.exportFolder = folder

    # --------------------------------------------------------------------------------- run
    def _log(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text)

    def _ensureDependencies(self) -> bool:
        from SculptorGANModuleLib import dependencies

        missing = dependencies.missingPackages()
        if not missing:
            return True
        if not slicer.util.confirmOkCancelDisplay(
                _("SculptorGAN needs these Python packages, which are not installed yet:\n\n{packages}\n\n"
                  "Install them now? This downloads them from the internet and may take several minutes. "
                  "(PyTorch is installed through the PyTorch extension when it is available.)").format(
                    packages="\n".join(missing)), windowTitle=_("Install Python packages")):
            self._log(_("Installation declined; the pipeline cannot run without: {packages}").format(
                packages=", ".join(missing)))
            return False
        try:
            with slicer.util.tryWithErrorDisplay(_("Installing Python packages failed."), waitCursor=True):
                self.ui.statusLabel.text = _("Installing Python packages…")
                slicer.app.processEvents()
                stillMissing = dependencies.installPackages(missing)
                if stillMissing:
                    raise RuntimeError(_("still missing after installation: {packages}").format(
                        packages=", ".join(stillMissing)))
        except Exception:  # already shown to the user
            self.ui.statusLabel.text = _("Python packages are missing.")
            return False
        self.ui.statusLabel.text = _("Python packages installed.")
        return True

    def onApplyButton(self) -> None:
        if self._run is not None:
            self._run.job.cancel()
            self.ui.applyButton.enabled = False
            self.ui.statusLabel.text = _("Cancelling…")
            return
        if not self._ensureDependencies():
            return
        try:
            with slicer.util.tryWithErrorDisplay(_("SculptorGAN could not start."), waitCursor=True):
                options = self.logic.optionsFromParameterNode(self._parameterNode)
                self.ui.logTextEdit.clear()
                self._run = self.logic.startProcessing(self._parameterNode.inputVolume, options)
        except Exception as error:  # already shown to the user
            logging.error("SculptorGAN could not start: %s", error)
            self.ui.statusLabel.text = _("Could not start: {error}").format(error=error)
            return
        self._log(_("Started: {steps} (device: {device})").format(steps=", ".join(options.steps),
                                                                  device=options.device))
        self.ui.progressBar.setVisible(True)
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = _("Starting…")
        self._timer.start()
        self._updateButtons()

    def onTimer(self) -> None:
        run = self._run
        if run is None:
            self._timer.stop()
            return
        for event in run.job.poll():
            kind = event.get("event")
            if kind == "progress":
                self.ui.progressBar.value = int(round(100 * float(event.get("fraction", 0))))
                if event.get("message"):
                    self.ui.statusLabel.text = event["message"]
            elif kind == "output" and event.get("line", "").strip():
                self._log(event["line"])
            elif kind == "error":
                self._log(_("Error: {message}").format(message=event.get("message", "")))
        if not run.job.finished:
            return
        self._timer.stop()
        try:
            result = self.logic.finishProcessing(run)
        except SculptorGANRunError as error:
            self.ui.statusLabel.text = error.userMessage()
            if error.kind != "cancelled":
                slicer.util.errorDisplay(error.userMessage(), windowTitle=_("SculptorGAN"))
        except Exception as error:  # loading results failed
            logging.exception("SculptorGAN: loading results failed")
            slicer.util.errorDisplay(_("Loading the results failed: {error}").format(error=error))
        else:
            if self._parameterNode is not None:
                self._showResult(result)
        finally:
            self._run = None
            self.ui.progressBar.setVisible(False)
            self._updateButtons()

    def _showResult(self, result) -> None:
        p = self._parameterNode
        if result.volumeNode is not None:
            p.outputVolume = result.volumeNode
        if result.segmentationNode is not None:
            p.outputSegmentation = result.segmentationNode
        background = result.volumeNode or p.inputVolume
        slicer.util.setSliceViewerLayers(background=background, fit=True)
        if result.segmentationNode is not None and result.segmentationNode.GetSegmentation().ContainsRepresentation(
                "Closed surface"):
            self.onShow3DButton()
        self.ui.statusLabel.text = _("Done in {seconds:.1f} s").format(seconds=result.seconds)
        self._log(result.summary())

    # --------------------------------------------------------------------------------- results
    def onShow3DButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Showing the 3D models failed."), waitCursor=True):
            segNode = self._parameterNode.outputSegmentation
            self.logic.showIn3D(segNode, self._parameterNode.smoothing)
            layoutManager = slicer.app.layoutManager()
            if layoutManager.threeDViewCount == 0:
                layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
            layoutManager.threeDWidget(0).threeDView().resetFocalPoint()

    def onSegmentEditorButton(self) -> None:
        p = self._parameterNode
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.SegmentEditorWidget.editor
        editor.setSegmentationNode(p.outputSegmentation)
        source = self.logic.referenceVolume(p.outputSegmentation) or p.outputVolume or p.inputVolume
        if hasattr(editor, "setSourceVolumeNode"):
            editor.setSourceVolumeNode(source)
        else:  # Slicer < 5.4
            editor.setMasterVolumeNode(source)

    def onUpdateModelsButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Updating the models failed."), waitCursor=True):
            p = self._parameterNode
            table = self.logic.updateModels(p.outputSegmentation, p.smoothing)
            self._log(_("Models and measurements updated ({table}).").format(table=table.GetName()))
            slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(table.GetID())
            slicer.app.applicationLogic().PropagateTableSelection()

    def onExportButton(self) -> None:
        p = self._parameterNode
        folder = p.exportFolder
        if not folder:
            folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Export models to folder"))
            if not folder:
                return
            p.exportFolder = folder
        with slicer.util.tryWithErrorDisplay(_("Exporting the models failed."), waitCursor=True):
            exported = self.logic.exportModels(p.outputSegmentation, folder, p.exportFormat, p.exportCoordinates)
            self._log(_("Exported {count} files to {folder}").format(count=len(exported.files), folder=folder))
            self.ui.statusLabel.text = _("Exported to {folder}").format(folder=folder)


#
# SculptorGANLogic
#


class SculptorGANRunError(Exception):
    """A pipeline run that did not produce results: ``kind`` as in the worker protocol."""

    MESSAGES = {
        "cancelled": lambda m: _("Cancelled. Nothing was added to the scene."),
        "no_gpu": lambda m: _("No usable GPU: {message}. Choose Device: auto or CPU.").format(message=m),
        "out_of_memory": lambda m: _("Out of memory ({message}). Try Device: CPU, a smaller factor or larger "
                                     "target spacing, or crop the CT first (Crop Volume module).").format(message=m),
        "missing_dependency": lambda m: _("A required Python package is missing ({message}). Click Apply again "
                                          "to install it.").format(message=m),
        "input": lambda m: _("The input cannot be processed: {message}").format(message=m),
    }

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind, self.message = kind, message

    def userMessage(self) -> str:
        make = self.MESSAGES.get(self.kind)
        return make(self.message) if make else _("Processing failed: {message}").format(message=self.message)


@dataclass
class SculptorGANOptions:
    """One run's settings (library names: device 'auto'/'cuda'/'cpu')."""

    steps: tuple = ("interpolate", "segment", "surfaces")
    factor: Optional[int] = None
    targetSpacing: Optional[float] = None
    fillMissing: bool = True
    missingSlices: tuple = ()
    device: str = "auto"
    model: str = ""
    smoothing: float = 0.5

    def workerArguments(self, inputPath: str, outputDir: str) -> list:
        args = ["--input", inputPath, "--output", outputDir, "--device", self.device,
                "--steps", ",".join(s for s in self.steps if s != "surfaces")]
        if self.factor is not None:
            args += ["--factor", str(self.factor)]
        if self.targetSpacing is not None:
            args += ["--target-spacing", repr(float(self.targetSpacing))]
        if not self.fillMissing:
            args.append("--no-fill-missing")
        if self.missingSlices:
            args += ["--missing", ",".join(str(i) for i in self.missingSlices)]
        if self.model:
            args += ["--model", self.model]
        return args

    def request(self) -> dict:
        return {"steps": [s for s in self.steps if s != "surfaces"], "factor": self.factor,
                "target_spacing": self.targetSpacing, "fill_missing": self.fillMissing,
                "device": self.device, "model": self.model}


@dataclass
class SculptorGANResult:
    """The nodes one run created (volumeNode is None when no interpolation was done)."""

    volumeNode: Optional[object] = None
    segmentationNode: Optional[object] = None
    tableNode: Optional[object] = None  # measurements (when 3D models were made)
    info: dict = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        lines = []
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
class SculptorGANBackgroundRun:
    """A worker started by :meth:`SculptorGANLogic.startProcessing` (poll ``job``; then ``finishProcessing``)."""

    job: object
    inputVolumeNode: object
    options: SculptorGANOptions
    tempDir: str
    started: float


class SculptorGANLogic(ScriptedLoadableModuleLogic):
    """Everything the panel does, callable from Slicer's Python console without the panel.

    The pipeline itself is SculptorGANLib's; this class converts MRML nodes to and from the library's
    volumes (exact geometry) and creates the result nodes.

    Example::

        logic = SculptorGAN.SculptorGANLogic()
        result = logic.process(getNode("CT"), factor=2, device="auto")
        result.volumeNode, result.segmentationNode
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        paths.ensureLibraryImportable()

    def getParameterNode(self):
        return SculptorGANParameterNode(super().getParameterNode())

    # --------------------------------------------------------------------------------- options
    @staticmethod
    def optionsFromParameterNode(p) -> SculptorGANOptions:
        steps = tuple(s for s, on in (("interpolate", p.interpolate), ("segment", p.segment),
                                      ("surfaces", p.segment and p.makeModels)) if on)
        if not steps:
            raise ValueError(_("Check at least one step."))
        spacing = float(p.targetSpacing) if p.targetSpacing > 0 else None
        missing = tuple(int(v) for v in p.missingSlices.replace(";", ",").replace(" ", ",").split(",") if v.strip())
        model = p.modelCard.strip()
        return SculptorGANOptions(
            steps=steps, factor=None if spacing else int(p.factor), targetSpacing=spacing,
            fillMissing=bool(p.fillMissing), missingSlices=missing if (p.fillMissing and p.interpolate) else (),
            device=DEVICES.get(p.device, "auto"), model=model, smoothing=float(p.smoothing))

    @staticmethod
    def _options(options=None, **kwargs) -> SculptorGANOptions:
        if options is None:
            options = SculptorGANOptions(**kwargs)
        elif kwargs:
            raise TypeError("give either options or keyword arguments")
        unknown = [s for s in options.steps if s not in ("interpolate", "segment", "surfaces")]
        if unknown or not options.steps:
            raise ValueError(f"steps must be some of interpolate, segment, surfaces; got {options.steps}")
        if "surfaces" in options.steps and "segment" not in options.steps:
            raise ValueError("the surfaces step needs the segment step")
        return options

    # --------------------------------------------------------------------------------- synchronous
    def process(self, inputVolumeNode, options: Optional[SculptorGANOptions] = None, progress=None, cancel=None,
                useWorker: bool = False, **kwargs) -> SculptorGANResult:
        """Run the pipeline on ``inputVolumeNode`` and return the created nodes (input untouched).

        Keyword arguments are :class:`SculptorGANOptions` fields (steps, factor, targetSpacing,
        fillMissing, missingSlices, device, model, smoothing). ``progress(fraction, message)`` and
        ``cancel() -> bool`` are optional callbacks. In-process by default; ``useWorker=True`` runs the
        same ``PythonSlicer`` subprocess as the panel and waits for it.
        """
        import time

        options = self._options(options, **kwargs)
        if useWorker:
            run = self.startProcessing(inputVolumeNode, options)

            def forward(event):
                if event.get("event") == "progress" and progress:
                    progress(float(event.get("fraction", 0)), event.get("message", ""))
                if cancel and cancel():
                    run.job.cancel()

            run.job.wait(onEvent=forward)
            return self.finishProcessing(run)
        from SculptorGANLib.slicer_worker import classify, run_request, with_missing_slices
        from SculptorGANModuleLib import mrml

        started = time.perf_counter()
        try:
            ct = mrml.ctVolumeFromNode(inputVolumeNode)
            if options.missingSlices:
                ct = with_missing_slices(ct, options.missingSlices)
            outputs = run_request(ct, options.request(), progress=progress, cancel=cancel)
        except Exception as exc:
            kind, message = classify(exc)
            raise SculptorGANRunError(kind, message) from exc
        result = self._createResultNodes(inputVolumeNode, outputs.ct if outputs.interpolated else None,
                                         outputs.structures, options, outputs.info)
        result.seconds = time.perf_counter() - started
        return result

    # --------------------------------------------------------------------------------- background
    def startProcessing(self, inputVolumeNode, options: Optional[SculptorGANOptions] = None, python=None,
                        extraArguments=(), **kwargs) -> SculptorGANBackgroundRun:
        """Write the input to a temporary file and start the worker; returns at once."""
        import time

        from SculptorGANLib.io.volumes import write_volume
        from SculptorGANModuleLib import mrml
        from SculptorGANModuleLib.worker import WorkerJob

        options = self._options(options, **kwargs)
        base = getattr(getattr(slicer, "app", None), "temporaryPath", None) or tempfile.gettempdir()
        tempDir = tempfile.mkdtemp(prefix="SculptorGAN-", dir=base)
        try:
            inputPath = os.path.join(tempDir, "input.nrrd")
            write_volume(mrml.ctVolumeFromNode(inputVolumeNode), inputPath, compress=False)
            outputDir = os.path.join(tempDir, "output")
            job = WorkerJob(options.workerArguments(inputPath, outputDir) + list(extraArguments), python=python)
        except Exception:
            shutil.rmtree(tempDir, ignore_errors=True)
            raise
        return SculptorGANBackgroundRun(job, inputVolumeNode, options, tempDir, time.perf_counter())

    def finishProcessing(self, run: SculptorGANBackgroundRun) -> SculptorGANResult:
        """Load a finished worker's outputs as nodes (raises :class:`SculptorGANRunError` if it failed)."""
        import time

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
            result = self._createResultNodes(run.inputVolumeNode, ct, structures, run.options, manifest.get("info", {}))
            result.seconds = time.perf_counter() - run.started
            return result
        finally:
            run.job.close()
            shutil.rmtree(run.tempDir, ignore_errors=True)

    # --------------------------------------------------------------------------------- nodes
    def _createResultNodes(self, inputVolumeNode, ct, structures, options, info) -> SculptorGANResult:
        import time

        from SculptorGANModuleLib import mrml

        scene = inputVolumeNode.GetScene()
        name = inputVolumeNode.GetName()
        result = SculptorGANResult(info=json.loads(json.dumps(info, default=str)))  # a copy
        if ct is not None:
            result.volumeNode = mrml.volumeNodeFromCT(ct, f"{name} SculptorGAN", scene, inputVolumeNode)
            mrml.placeInStudyOf(result.volumeNode, inputVolumeNode)
        if structures is not None:
            reference = result.volumeNode or inputVolumeNode
            segNode = mrml.segmentationNodeFromLabels(structures, reference, f"{name} SculptorGAN segmentation", scene)
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
        from SculptorGANModuleLib import mrml

        if segNode is None:
            raise ValueError(_("No segmentation selected."))
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
        from SculptorGANModuleLib import export

        reference = self.referenceVolume(segNode)
        if reference is None:
            raise ValueError(_("The segmentation has no reference volume."))
        table, measurements = export.measurementTable(segNode, reference,
                                                      segNode.GetNodeReference("SculptorGANMeasurements"))
        segNode.SetNodeReferenceID("SculptorGANMeasurements", table.GetID())
        return table, measurements

    def updateModels(self, segNode, smoothing: float = 0.5):
        """Rebuild the closed surfaces after edits and refresh the measurement table; returns the table node."""
        from SculptorGANModuleLib import mrml

        if segNode is None:
            raise ValueError(_("No segmentation selected."))
        mrml.updateClosedSurfaces(segNode, smoothing)
        self.showIn3D(segNode, smoothing)
        return self._updateMeasurements(segNode)[0]

    def exportModels(self, segNode, folder: str, fileFormat: str = "STL", coordinates: str = "LPS") -> SculptorGANExport:
        """Write the models (STL per segment or one OBJ; LPS or RAS) and ``measurements.csv`` to ``folder``."""
        from SculptorGANModuleLib import export

        if segNode is None:
            raise ValueError(_("No segmentation selected."))
        files = export.exportModels(segNode, folder, fileFormat, coordinates)
        table, measurements = self._updateMeasurements(segNode)
        csvPath = export.writeMeasurementsCSV(measurements, os.path.join(folder, "measurements.csv"))
        return SculptorGANExport(files + [csvPath], table, csvPath)


#
# SculptorGANTest
#


class SculptorGANTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (Reload and Test, or ctest with the generic tests): phantom CT → nodes → export."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SculptorGAN_phantom()

    def _phantomNode(self):
        from SculptorGANLib.synthetic.phantom import make_phantom
        from SculptorGANModuleLib import mrml

        paths.ensureLibraryImportable()
        ct, _labels = make_phantom(shape=(24, 48, 48), spacing=(6.0, 6.0, 6.0), seed=3)
        return mrml.volumeNodeFromCT(ct, "SculptorGAN phantom", slicer.mrmlScene)

    def test_SculptorGAN_phantom(self):
        import numpy as np

        from SculptorGANModuleLib import dependencies, mrml

        missing = dependencies.missingPackages()
        if missing:  # e.g. a build machine without PyTorch: say so instead of failing somewhere inside
            self.skipTest(f"Python packages not installed: {', '.join(missing)} (click Apply once to install)")
        self.delayDisplay("Starting the test")
        inputNode = self._phantomNode()
        before = np.array(slicer.util.arrayFromVolume(inputNode))
        logic = SculptorGANLogic()
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
        exported = logic.exportModels(result.segmentationNode, folder)
        self.assertTrue(os.path.isfile(exported.csvPath))
        self.assertTrue(any(f.lower().endswith(".stl") for f in exported.files))
        shutil.rmtree(folder, ignore_errors=True)
        self.delayDisplay("Test passed")
