"""The thin Widget's behaviour, driven headless: fake widgets (one per name in the .ui), the real
Logic, worker subprocess and MRML scene. Covers Apply → Cancel → Apply, progress, results in the
parameter node, cancel leaving the scene alone, declined package installs, Update and Export.
Qt rendering, layouts and the Segment Editor hand-off can only be checked inside Slicer.
"""
from __future__ import annotations

import time
import types
import xml.etree.ElementTree as ET

import pytest

import slicer_env

slicer = slicer_env.require_slicer()


class FakeWidget:
    """Attribute bag standing in for a Qt widget (PythonQt style properties)."""

    def __init__(self, name):
        self.name, self.enabled, self.text, self.toolTip, self.value = name, True, "", "", 0
        self.visible, self.currentPath, self.directory, self.lines, self.connections = True, "", "", [], {}

    def connect(self, signal, slot):
        self.connections[signal] = slot

    def setVisible(self, visible):
        self.visible = visible

    def appendPlainText(self, text):
        self.lines.append(text)

    def clear(self):
        self.lines.clear()

    def setMRMLScene(self, scene):
        self.scene = scene

    def click(self):
        self.connections["clicked(bool)"]()

    def layout(self):  # the Advanced section's form layout (widgets built from the options schema)
        return self

    def addRow(self, label, widget):
        self.lines.append(label)


class FakeTimer:
    def __init__(self):
        self.active = False

    def start(self):
        self.active = True

    def stop(self):
        self.active = False


class FakeApp:
    def __init__(self, tmp):
        self.temporaryPath = str(tmp)
        self.cursor = 0

    def setOverrideCursor(self, cursor):
        self.cursor += 1

    def restoreOverrideCursor(self):
        self.cursor -= 1

    def processEvents(self):
        pass

    def testingEnabled(self):
        return True  # tryWithErrorDisplay: no dialog

    def applicationLogic(self):
        return types.SimpleNamespace(GetSelectionNode=lambda: types.SimpleNamespace(SetActiveTableID=lambda i: None),
                                     PropagateTableSelection=lambda: None)

    def layoutManager(self):
        view = types.SimpleNamespace(resetFocalPoint=lambda: None)
        return types.SimpleNamespace(threeDViewCount=1, threeDWidget=lambda i: types.SimpleNamespace(
            threeDView=lambda: view), setLayout=lambda layout: None)


@pytest.fixture
def widget(tmp_path, monkeypatch):
    scene = slicer_env.new_scene()
    module = slicer_env.import_module()
    from SculptorGANLib.synthetic.phantom import make_phantom
    from SculptorGANModuleLib import mrml

    calls = {"layers": [], "errors": [], "confirm": []}
    monkeypatch.setattr(slicer, "app", FakeApp(tmp_path), raising=False)
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **kw: calls["layers"].append(kw))
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: calls["errors"].append(text))
    ct, _ = make_phantom(shape=(24, 48, 48), spacing=(6.0, 6.0, 6.0), seed=3)
    node = mrml.volumeNodeFromCT(ct, "CT", scene)
    names = [w.get("name") for w in ET.parse(slicer_env.REPO / "Resources/UI/SculptorGAN.ui").getroot().iter("widget")]
    fake_ui = types.SimpleNamespace(**{n: FakeWidget(n) for n in names})
    loaded = []
    monkeypatch.setattr(slicer.util, "loadUI", lambda path: loaded.append(path) or FakeWidget("SculptorGAN"),
                        raising=False)
    monkeypatch.setattr(slicer.util, "childWidgetVariables", lambda ui_widget: fake_ui, raising=False)
    w = module.SculptorGANWidget()
    w.setup()  # the real setup: .ui path, signal connections, logic, parameter node
    assert loaded == [str(slicer_env.REPO / "Resources" / "UI" / "SculptorGAN.ui")]
    w._timer = FakeTimer()
    w.calls, w.scene, w.inputNode, w.module = calls, scene, node, module
    p = w._parameterNode
    p.device, p.factor, p.smoothing = "CPU", 2, 0.5
    p.advancedOptions = '{"interpolation_method": "linear"}'  # through the Advanced section; the GAN is tested elsewhere
    yield w
    if w._run is not None:
        w._run.job.close()


def drive(widget, timeout=90.0):
    """Call onTimer like the QTimer would until the run is over; returns the progress values seen."""
    seen, deadline = [], time.monotonic() + timeout
    while widget._run is not None:
        assert time.monotonic() < deadline, "run did not finish"
        widget.onTimer()
        seen.append(widget.ui.progressBar.value)
        time.sleep(0.05)
    assert not widget._timer.active
    return seen


def test_apply_runs_in_background_and_shows_results(widget):
    ui, p = widget.ui, widget._parameterNode
    assert p.inputVolume is widget.inputNode  # first volume preselected
    assert ui.applyButton.enabled and ui.applyButton.text == "Apply"
    assert not ui.exportButton.enabled  # nothing to export yet
    ui.applyButton.click()
    assert widget._run is not None and widget._timer.active
    assert ui.applyButton.text == "Cancel" and ui.applyButton.enabled and ui.progressBar.visible
    seen = drive(widget)
    assert seen == sorted(seen) and max(seen) > 0
    assert ui.applyButton.text == "Apply" and not ui.progressBar.visible
    assert ui.statusLabel.text.startswith("Done in"), ui.statusLabel.text
    assert p.outputVolume is not None and p.outputVolume.GetName() == "CT SculptorGAN"
    assert p.outputSegmentation is not None
    assert p.outputSegmentation.GetSegmentation().ContainsRepresentation("Closed surface")
    assert widget.calls["layers"][-1]["background"] is p.outputVolume
    assert ui.exportButton.enabled and ui.updateModelsButton.enabled and ui.show3DButton.enabled
    log = "\n".join(ui.logTextEdit.lines)
    assert "\nsegment: " in log and "\nsurfaces: " in log, log
    assert not widget.calls["errors"] and slicer.app.cursor == 0


def test_cancel_from_the_apply_button(widget, monkeypatch):
    ui, logic = widget.ui, widget.logic
    slow = logic.startProcessing
    monkeypatch.setattr(logic, "startProcessing",
                        lambda node, options, roi=None: slow(node, options, roi=roi,
                                                             extraArguments=["--test-delay", "60"]))
    nodes = widget.scene.GetNumberOfNodes()
    ui.applyButton.click()
    assert ui.applyButton.text == "Cancel"
    ui.applyButton.click()  # the same button now cancels
    assert ui.statusLabel.text == "Cancelling…" and not ui.applyButton.enabled
    drive(widget, timeout=30)
    assert ui.statusLabel.text.startswith("Cancelled"), ui.statusLabel.text
    assert not widget.calls["errors"]  # a cancel is not an error dialog
    assert widget.scene.GetNumberOfNodes() == nodes
    assert ui.applyButton.text == "Apply" and ui.applyButton.enabled


def test_advanced_section_and_roi_reach_the_worker(widget, monkeypatch):
    """Every Advanced widget comes from the options schema; its values and the ROI go into the one
    options document the worker reads."""
    import json

    from SculptorGANModuleLib import advanced

    ui, p, logic = widget.ui, widget._parameterNode, widget.logic
    assert set(widget._advancedWidgets) == {s.name for s in advanced.advancedSpecs()}
    assert len(ui.advancedOptionsWidget.lines) == len(widget._advancedWidgets)  # one labelled row each
    assert widget._advancedWidgets["interpolation_method"].currentText == "linear"  # the fixture's, shown
    widget._advancedWidgets["overlap"].value = 0.5
    widget.onAdvancedChanged()
    assert json.loads(p.advancedOptions) == {"interpolation_method": "linear", "overlap": 0.5}
    p.advancedOptions = '{"overlap": 0.5, "postprocess": false}'
    widget._updateButtons()  # parameter node → widgets
    assert widget._advancedWidgets["postprocess"].checked is False
    roi = widget.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "Kidneys")
    roi.SetCenter(0.0, 0.0, 0.0)
    roi.SetSize(400.0, 400.0, 400.0)
    p.roi, p.interpolate = roi, False
    documents = []
    start = logic.startProcessing

    def spy(*args, **kwargs):
        run = start(*args, **kwargs)
        with open(f"{run.tempDir}/options.json", encoding="utf-8") as f:
            documents.append(json.load(f))
        return run

    monkeypatch.setattr(logic, "startProcessing", spy)
    ui.applyButton.click()
    drive(widget)
    (document,) = documents
    assert document["overlap"] == 0.5 and document["postprocess"] is False and document["steps"] == ["segment"]
    assert document["roi"]["coordinateSystem"] == "LPS" and document["roi"]["size"] == pytest.approx([400] * 3)
    assert "roi: cropped to the ROI" in "\n".join(ui.logTextEdit.lines)
    assert p.outputSegmentation is not None and not widget.calls["errors"]


def test_declined_install_does_not_start(widget, monkeypatch):
    from SculptorGANModuleLib import dependencies

    monkeypatch.setattr(dependencies, "missingPackages", lambda requirements=None: ["safetensors>=0.4"])
    asked = []
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, **kw: asked.append(text) or False)
    widget.ui.applyButton.click()
    assert asked and "safetensors" in asked[0]
    assert widget._run is None and "declined" in widget.ui.logTextEdit.lines[-1]


def test_worker_failure_is_shown(widget):
    widget._parameterNode.missingSlices = "0"  # the first slice cannot be "missing"
    widget.ui.applyButton.click()
    drive(widget)
    assert widget.calls["errors"] and "inner slices" in widget.calls["errors"][-1]
    assert widget.ui.statusLabel.text.startswith("The input cannot be processed")


def test_update_and_export_buttons(widget, tmp_path):
    ui, p = widget.ui, widget._parameterNode
    p.interpolate = False
    ui.applyButton.click()
    drive(widget)
    assert p.outputVolume is None and p.outputSegmentation is not None  # no interpolation: no new volume
    ui.updateModelsButton.click()
    assert "Models and measurements updated" in ui.logTextEdit.lines[-1]
    p.exportFolder, p.exportFormat, p.exportCoordinates = str(tmp_path / "models"), "STL", "RAS"
    ui.exportButton.click()
    files = sorted(f.name for f in (tmp_path / "models").iterdir())
    assert "measurements.csv" in files and any(f.endswith(".stl") for f in files)
    assert ui.statusLabel.text == f"Exported to {tmp_path / 'models'}"
    ui.show3DButton.click()
    assert p.outputSegmentation.GetDisplayNode().GetVisibility3D()
    # the hand-synced path widgets follow the parameter node
    widget._updateButtons()
    assert ui.exportFolderButton.directory == str(tmp_path / "models")
    widget.onModelCardChanged("/some/card.json")
    assert p.modelCard == "/some/card.json"
