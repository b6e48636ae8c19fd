"""The module's Qt-free, Slicer-free helpers (also run on Python 3.9): the first-use installer, the
Advanced section built from the options schema, the sample-data registration.
"""
from __future__ import annotations

import json
import pathlib
import sys
import types

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SculptorGAN"))
from SculptorGANModuleLib import advanced, dependencies, paths  # noqa: E402


# ----------------------------------------------------------------------------- installer
def test_installer_lists_every_third_party_package_the_worker_imports():
    """What the segment path imports beyond Slicer's own packages must be in REQUIREMENTS (monai too)."""
    assert set(dependencies.REQUIREMENTS) >= {"torch", "scipy", "safetensors", "nrrd", "monai"}
    for name, spec in dependencies.REQUIREMENTS.items():
        assert dependencies.minimumVersion(spec), f"{spec}: give a minimum version"


def test_too_old_torch_counts_as_missing():
    versions = {"torch": "2.0.1+cu118", "scipy": "1.13.1", "safetensors": "0.4.5", "pynrrd": "1.1.3", "monai": "1.4.0"}
    requirements = {"json": "torch>=2.2", "os": "scipy>=1.10"}  # importable stand-ins
    assert dependencies.missingPackages(requirements, version=versions.get) == ["torch>=2.2"]
    assert dependencies.outdatedMessage(requirements, version=versions.get) == "torch 2.0.1+cu118 (needs >=2.2)"
    versions["torch"] = "2.13.0"
    assert dependencies.missingPackages(requirements, version=versions.get) == []
    assert dependencies.versionTuple("2.13.0+cpu") == (2, 13, 0) and dependencies.versionTuple("1.0rc1") == (1, 0)


def test_installer_pins_slicer_packages_and_an_installed_torch(monkeypatch):
    installed = {"numpy": "1.26.4", "scipy": "1.13.1", "torch": "2.4.1", "SimpleITK": None, "vtk": None}
    monkeypatch.setattr(dependencies, "distributionVersion", lambda name: installed.get(name))
    calls, torch_calls = [], []

    def pip(args):
        constraints = pathlib.Path(args[args.index("--constraint") + 1]).read_text()
        calls.append((list(args[:args.index("--constraint")]), constraints.split()))

    dependencies.installPackages(["monai>=1.3", "numpy>=2", "safetensors>=0.4"], pipInstall=pip,
                                 torchInstaller=torch_calls.append)
    (args, pins), = calls
    assert args == ["monai>=1.3", "safetensors>=0.4"] and not torch_calls  # never numpy (Slicer's)
    assert pins == ["numpy==1.26.4", "scipy==1.13.1", "torch==2.4.1"]  # monai cannot swap torch or scipy
    calls.clear()
    dependencies.installPackages(["torch>=2.2", "scipy>=1.10"], pipInstall=pip, torchInstaller=torch_calls.append)
    assert torch_calls == ["torch>=2.2"]  # torch through the PyTorch extension, with the minimum version
    (args, pins), = calls
    assert args == ["scipy>=1.10"] and pins == ["numpy==1.26.4", "torch==2.4.1"]  # scipy may be upgraded now


def test_torch_from_pip_without_the_pytorch_extension(monkeypatch):
    monkeypatch.setattr(dependencies, "pytorchExtensionInstaller", lambda: None)
    calls = []
    dependencies.installPackages(["torch>=2.2"], pipInstall=lambda args: calls.append(args))
    assert calls[0][0] == "torch>=2.2"


def test_pytorch_extension_gets_the_version_requirement(monkeypatch):
    seen = {}

    class Logic:
        def installTorch(self, askConfirmation=False, torchVersionRequirement=None):
            seen.update(ask=askConfirmation, requirement=torchVersionRequirement)

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=Logic))
    dependencies.pytorchExtensionInstaller()("torch>=2.2")
    assert seen == {"ask": False, "requirement": ">=2.2"}


# ----------------------------------------------------------------------------- Advanced section
def test_every_pipeline_option_is_reachable_from_the_panel():
    from SculptorGANLib.core.options import OPTIONS

    advanced_names = [s.name for s in advanced.advancedSpecs()]
    assert set(advanced_names) | set(advanced.BASIC) == {s.name for s in OPTIONS}
    assert not set(advanced_names) & set(advanced.BASIC)
    assert {"overlap", "enhance", "interpolation_model", "interpolation_method", "morph_mm",
            "postprocess"} <= set(advanced_names)
    for spec in advanced.advancedSpecs():
        assert advanced.widgetClass(spec).startswith("Q")
    adapt = {s.name: s for s in advanced.advancedSpecs()}["adapt"]  # issue 13's "Slicer checkbox"
    assert advanced.widgetClass(adapt) == "QCheckBox" and adapt.title == "Adapt to this scan"


class _Widget:
    """Attribute bag standing in for a PythonQt widget (properties as attributes)."""

    def __init__(self):
        self.items, self.connections, self.checked, self.text, self.currentText = [], {}, False, "", ""
        self.value, self.minimum, self.maximum, self.singleStep = 0, 0, 99, 1

    def addItem(self, text):
        self.items.append(text)
        self.currentText = self.currentText or text

    def connect(self, signal, slot):
        self.connections[signal] = slot


class _Form:
    def __init__(self):
        self.rows = []

    def addRow(self, label, widget):
        self.rows.append((label, widget))


def test_widgets_built_from_the_schema_round_trip_values():
    qt = types.SimpleNamespace(**{name: _Widget for name in set(advanced.WIDGETS.values())})
    changed = []
    form = _Form()
    widgets = advanced.buildWidgets(qt, form, lambda: changed.append(1))
    specs = {s.name: s for s in advanced.advancedSpecs()}
    assert set(widgets) == set(specs) and len(form.rows) == len(specs)
    assert all(w.toolTip == specs[n].help for n, w in widgets.items())
    defaults = {n: advanced.readWidget(specs[n], w) for n, w in widgets.items()}
    assert defaults == {n: s.default for n, s in specs.items()}
    assert advanced.encode(defaults) == ""
    widgets["overlap"].value = 0.5
    widgets["enhance"].checked = True
    widgets["interpolation_method"].currentText = "cubic"
    values = {n: advanced.readWidget(specs[n], w) for n, w in widgets.items()}
    text = advanced.encode(values)
    assert json.loads(text) == {"enhance": True, "interpolation_method": "cubic", "overlap": 0.5}
    assert advanced.decode(text) == json.loads(text)
    for name, widget in widgets.items():
        advanced.writeWidget(specs[name], widget, None)
    assert {n: advanced.readWidget(specs[n], w) for n, w in widgets.items()} == defaults
    assert advanced.decode("not json") == {} and advanced.decode('{"unknown": 1}') == {}


def test_advanced_values_become_pipeline_options():
    from SculptorGANLib.core.options import PipelineOptions

    options = PipelineOptions(**advanced.decode('{"overlap": 0.5, "enhance": true, "morph_mm": 1.5}'))
    assert (options.overlap, options.enhance, options.morph_mm) == (0.5, True, 1.5)


# ----------------------------------------------------------------------------- sample data
def test_phantom_is_registered_as_sample_data(monkeypatch):
    from SculptorGANModuleLib import sampledata

    registered = []
    fake = types.ModuleType("SampleData")
    fake.SampleDataLogic = types.SimpleNamespace(registerCustomSampleDataSource=lambda **kw: registered.append(kw))
    monkeypatch.setitem(sys.modules, "SampleData", fake)
    assert sampledata.registerSampleData()
    (kwargs,) = registered
    assert kwargs["sampleName"] == "SculptorGAN phantom" and kwargs["category"] == "SculptorGAN"
    assert pathlib.Path(kwargs["thumbnailFileName"]).is_file()
    # Slicer's SampleDataSource requires equally long lists (uris=None would fail its len() check)
    assert kwargs["uris"] == kwargs["fileNames"] == kwargs["nodeNames"] == []
    assert kwargs["customDownloader"] is sampledata.loadPhantom


def test_no_sample_data_module_is_not_an_error(monkeypatch):
    from SculptorGANModuleLib import sampledata

    monkeypatch.setitem(sys.modules, "SampleData", None)
    assert sampledata.registerSampleData() is False


def test_resources_are_found():
    assert pathlib.Path(paths.resourcePath("UI/SculptorGAN.ui")).is_file()
    assert pathlib.Path(paths.resourcePath("Icons/SculptorGAN.png")).is_file()
