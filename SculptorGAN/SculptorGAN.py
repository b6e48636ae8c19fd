import logging
import os
from typing import Annotated, Optional

import qt
import vtk

import slicer
from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, Minimum, Maximum, parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from SculptorGANModuleLib import advanced, paths
from SculptorGANModuleLib.logic import (  # noqa: F401 — re-exported: the Logic's public names live here too
    SculptorGANBackgroundRun,
    SculptorGANExport,
    SculptorGANLogicBase,
    SculptorGANResult,
    SculptorGANRunError,
)
from SculptorGANModuleLib.selftest import SculptorGANTest  # noqa: F401 — Slicer finds <Module>Test here

PAPER = ("P. Suman Prakash, P. Kiran Rao, E. Suresh Babu, S. Bhatia Khan, A. Almusharraf, M. Tabrez Quasim: "
         "Decoupled SculptorGAN Framework for 3D Reconstruction and Enhanced Segmentation of Kidney Tumors "
         "in CT Images. IEEE Access 12 (2024). doi:10.1109/ACCESS.2024.3389504")
DEVICES = advanced.DEVICES  # GUI choice → library device name


#
# SculptorGAN
#


class SculptorGAN(ScriptedLoadableModule):
    """Module metadata (title, category, help and acknowledgement); registers the phantom as sample data."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SculptorGAN")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["SculptorGAN developers"]
        self.parent.helpText = _("""
Kidney and kidney-tumor 3D models from a CT: fills in missing or thick slices (SculptorGAN slice
interpolation), segments the left and right kidney and the tumor, and builds smoothed 3D models with
measurements. An optional ROI restricts the work to a box around the kidneys. Results are new nodes;
the input volume is never modified. Correct the masks in the Segment Editor, then update and export
the models. Try it on the phantom in the Sample Data module.
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
        app = getattr(slicer, "app", None)
        if app is not None and hasattr(app, "connect"):
            from SculptorGANModuleLib.sampledata import registerSampleData

            app.connect("startupCompleted()", registerSampleData)


#
# SculptorGANParameterNode
#


@parameterNodeWrapper
class SculptorGANParameterNode:
    """What the panel shows; saved with the scene.

    inputVolume - the CT to process (never modified). roi - optional box restricting the work.
    interpolate / segment / makeModels - the steps to run.
    factor, targetSpacing - through-plane upsampling: factor K, or a spacing in mm (0 = use the factor).
    missingSlices - indices of slices that were not acquired (e.g. "12, 13"), synthesized when fillMissing.
    smoothing - 3D model smoothing 0–1 (Slicer's closed-surface smoothing factor).
    device - auto (a CUDA GPU when present, else CPU), GPU or CPU.
    modelCard - a user's segmentation model card (.json); empty = the shipped default.
    advancedOptions - JSON of the Advanced section's non-default values (library option names).
       (modelCard, exportFolder and advancedOptions are synced by hand with their widgets.)
    outputVolume, outputSegmentation - the last results (Update models / Export act on the segmentation).
    exportFolder, exportFormat, exportCoordinates - where and how Export models writes.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    roi: vtkMRMLMarkupsROINode
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
    advancedOptions: str = ""
    outputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    exportFolder: str = ""
    exportFormat: Annotated[str, Choice(["STL", "OBJ"])] = "STL"
    exportCoordinates: Annotated[str, Choice(["LPS", "RAS"])] = "LPS"


#
# SculptorGANLogic
#


class SculptorGANLogic(SculptorGANLogicBase):
    """Everything the panel does (see :class:`SculptorGANModuleLib.logic.SculptorGANLogicBase`)."""

    def getParameterNode(self):
        return SculptorGANParameterNode(super().getParameterNode())


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
        self._advancedWidgets = {}
        self._syncingAdvanced = False

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
        # Path widgets and the Advanced section are synced by hand (see SculptorGANParameterNode).
        self.ui.modelCardPathLineEdit.connect("currentPathChanged(QString)", self.onModelCardChanged)
        self.ui.exportFolderButton.connect("directoryChanged(QString)", self.onExportFolderChanged)
        self._advancedWidgets = advanced.buildWidgets(qt, self.ui.advancedOptionsWidget.layout(),
                                                      self.onAdvancedChanged)
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
            self._showAdvanced(advanced.decode(p.advancedOptions))

    def _showAdvanced(self, values: dict) -> None:
        self._syncingAdvanced = True
        try:
            for spec in advanced.advancedSpecs():
                widget = self._advancedWidgets.get(spec.name)
                if widget is not None and advanced.readWidget(spec, widget) != values.get(spec.name, spec.default):
                    advanced.writeWidget(spec, widget, values.get(spec.name))
        finally:
            self._syncingAdvanced = False

    def onAdvancedChanged(self) -> None:
        if self._syncingAdvanced or not self._parameterNode:
            return
        values = {spec.name: advanced.readWidget(spec, self._advancedWidgets[spec.name])
                  for spec in advanced.advancedSpecs() if spec.name in self._advancedWidgets}
        text = advanced.encode(values)
        if self._parameterNode.advancedOptions != text:
            self._parameterNode.advancedOptions = text

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
        outdated = dependencies.outdatedMessage()
        if not slicer.util.confirmOkCancelDisplay(
                _("SculptorGAN needs these Python packages, which are not installed yet{outdated}:\n\n{packages}\n\n"
                  "Install them now? This downloads them from the internet and may take several minutes. "
                  "(PyTorch is installed through the PyTorch extension when it is available.)").format(
                    packages="\n".join(missing), outdated=f" or too old ({outdated})" if outdated else ""),
                windowTitle=_("Install Python packages")):
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
                self._run = self.logic.startProcessing(self._parameterNode.inputVolume, options,
                                                       roi=self._parameterNode.roi)
        except Exception as error:  # already shown to the user
            logging.error("SculptorGAN could not start: %s", error)
            self.ui.statusLabel.text = _("Could not start: {error}").format(error=error)
            return
        self._log(_("Started: {steps} (device: {device})").format(steps=", ".join(options.steps),
                                                                  device=options.device))
        if self._run.frame.note:
            self._log(_("Note: {note}").format(note=self._run.frame.note))
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
        except Exception as error:  # loading results failed (and added nothing)
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
        editor.setSourceVolumeNode(self.logic.referenceVolume(p.outputSegmentation) or p.outputVolume or
                                   p.inputVolume)

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
