"""The Slicer extension's packaging and panel wiring, checked without Slicer.

* CMake lists every SculptorGANLib file, every module helper and every runtime resource (and nothing
  that does not exist); the Extensions Index entry agrees with the CMake metadata.
* A configure/build/install of the extension against a stand-in ``SlicerConfig.cmake`` whose
  ``slicerMacroBuildScriptedModule`` copies files the way Slicer's macro and CTK's
  ``ctkMacroCompilePythonScript`` do (destination = qt-scripted-modules/<path as listed>; install of
  qt-scripted-modules/ only) — then the installed module must find its library and resources.
* The ``.ui`` has every widget the Widget code uses; every ``SlicerParameterName`` names a parameter
  of ``SculptorGANParameterNode`` and sits on a widget class Slicer's parameterNodeWrapper can connect
  to that parameter's type; the parameter node round-trips through a real vtkMRMLScriptedModuleNode.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import typing
import xml.etree.ElementTree as ET

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "SculptorGAN"
UI_FILE = REPO / "Resources" / "UI" / "SculptorGAN.ui"
RUNTIME_RESOURCE_DIRS = ("Icons", "UI", "Models")
#: Parameters the Widget syncs by hand with a path widget (so an empty path shows empty, not ".") and the
#: Advanced section (widgets built from the options schema into advancedOptionsWidget, one JSON parameter).
MANUALLY_SYNCED = {"modelCard": "modelCardPathLineEdit", "exportFolder": "exportFolderButton",
                   "advancedOptions": "advancedOptionsWidget"}


def _cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"set({variable} ...) not found"
    return [t for t in match.group(1).split() if not t.startswith("#")]


def _repo_files(folder: str) -> list[str]:
    root = REPO / folder
    return sorted(str(p.relative_to(REPO)).replace(os.sep, "/") for p in root.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo"))


# ----------------------------------------------------------------------------- CMake lists
def test_cmake_lists_every_file():
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    scripts = _cmake_list(text, "MODULE_PYTHON_SCRIPTS") + _cmake_list(text, "SCULPTORGANLIB_PYTHON_SCRIPTS")
    resources = _cmake_list(text, "MODULE_PYTHON_RESOURCES")
    listed = {os.path.normpath(str(MODULE_DIR / f.replace("${MODULE_NAME}", "SculptorGAN"))) for f in scripts + resources}
    expected = set(_repo_files("SculptorGANLib"))
    expected |= {f for f in _repo_files("SculptorGAN") if f.endswith(".py")}
    expected |= {f for d in RUNTIME_RESOURCE_DIRS if (REPO / "Resources" / d).is_dir()
                 for f in _repo_files(f"Resources/{d}")}
    expected = {os.path.normpath(str(REPO / f)) for f in expected}
    missing = sorted(os.path.relpath(f, MODULE_DIR).replace(os.sep, "/") for f in expected - listed)
    stale = sorted(os.path.relpath(f, MODULE_DIR).replace(os.sep, "/") for f in listed - expected)
    assert not missing, ("SculptorGAN/CMakeLists.txt does not list these files; run "
                         "`python Testing/slicer_env.py --update-cmake` (or add them by hand: .py → "
                         "SCULPTORGANLIB_PYTHON_SCRIPTS / MODULE_PYTHON_SCRIPTS, other files → "
                         "MODULE_PYTHON_RESOURCES):\n  " + "\n  ".join(missing))
    assert not stale, "SculptorGAN/CMakeLists.txt lists files that do not exist:\n  " + "\n  ".join(stale)
    scripts_py = [s for s in scripts if not s.endswith(".py")]
    assert not scripts_py, f"only .py files belong in SCRIPTS: {scripts_py}"
    assert "WITH_GENERIC_TESTS" in text and "slicerMacroBuildScriptedModule(" in text
    code = "\n".join(line.split("#")[0] for line in text.splitlines())
    assert "file(GLOB" not in code.replace(" ", "")


def test_top_level_cmake_and_index_entry_agree():
    text = (REPO / "CMakeLists.txt").read_text()
    meta = dict(re.findall(r'set\((EXTENSION_\w+)\s+"([^"]*)"\)', text))
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert meta.get(key), key
    assert "PyTorch" in meta["EXTENSION_DEPENDS"].split(";")
    assert re.search(r"project\(SculptorGAN\)", text) and "add_subdirectory(SculptorGAN)" in text
    assert "${Slicer_EXTENSION_GENERATE_CONFIG}" in text and "${Slicer_EXTENSION_CPACK}" in text
    entry = json.loads((REPO / "Resources" / "SculptorGAN.json").read_text())
    assert entry["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
                                       "slicer-extension-catalog-entry-schema-")
    assert entry["category"] == meta["EXTENSION_CATEGORY"]
    assert entry["build_dependencies"] == meta["EXTENSION_DEPENDS"].split(";")
    assert entry["scm_url"] and entry["build_subdirectory"] == "."


# ----------------------------------------------------------------------------- build/install layout
STUB_SLICER_CONFIG = r"""
set(Slicer_FOUND TRUE)
set(Slicer_USE_FILE "${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "${CMAKE_CURRENT_LIST_DIR}/Empty.cmake")
set(Slicer_EXTENSION_CPACK "${CMAKE_CURRENT_LIST_DIR}/Empty.cmake")
"""
# A stand-in for Slicer's macro: same existence check, then CTK's rules — a script or resource listed
# as <path> is copied to <DESTINATION_DIR>/<path> and only DESTINATION_DIR/ is installed.
STUB_USE_SLICER = r"""
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "lib/Slicer-5.13/qt-scripted-modules")
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "lib/Slicer-5.13/qt-scripted-modules")
macro(slicer_add_python_unittest)
endmacro()
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY_SLICER "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_SLICER_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "Unknown keywords: ${MY_SLICER_UNPARSED_ARGUMENTS}")
  endif()
  foreach(value ${MY_SLICER_SCRIPTS} ${MY_SLICER_RESOURCES})
    if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${value} AND NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${value}.py)
      message(FATAL_ERROR "slicerMacroBuildScriptedModule given nonexistent file '${value}'")
    endif()
  endforeach()
  set(_dest "${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}")
  get_filename_component(_dest ${_dest} REALPATH)
  set(_outputs)
  foreach(file ${MY_SLICER_SCRIPTS} ${MY_SLICER_RESOURCES})
    add_custom_command(OUTPUT ${_dest}/${file} DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/${file}
      COMMAND ${CMAKE_COMMAND} -E copy ${CMAKE_CURRENT_SOURCE_DIR}/${file} ${_dest}/${file})
    list(APPEND _outputs ${_dest}/${file})
  endforeach()
  add_custom_target(Copy${MY_SLICER_NAME}PythonFiles ALL DEPENDS ${_outputs})
  install(DIRECTORY "${_dest}/" DESTINATION "${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}"
          COMPONENT RuntimeLibraries USE_SOURCE_PERMISSIONS)
endmacro()
"""


@pytest.fixture(scope="module")
def installed_extension(tmp_path_factory):
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    base = tmp_path_factory.mktemp("cmake")
    stub, build, prefix = base / "SlicerStub", base / "build", base / "install"
    stub.mkdir()
    (stub / "SlicerConfig.cmake").write_text(STUB_SLICER_CONFIG)
    (stub / "UseSlicer.cmake").write_text(STUB_USE_SLICER)
    (stub / "Empty.cmake").write_text("")
    def run(*args):
        proc = subprocess.run([cmake, *map(str, args)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    run("-S", REPO, "-B", build, f"-DSlicer_DIR={stub}", f"-DCMAKE_INSTALL_PREFIX={prefix}")
    run("--build", build)
    run("--install", build)
    return build, prefix


def test_build_and_install_trees_have_module_library_and_resources(installed_extension):
    for tree in installed_extension:
        lib = tree / "lib" / "Slicer-5.13"
        assert (lib / "qt-scripted-modules" / "SculptorGAN.py").is_file()
        assert (lib / "qt-scripted-modules" / "SculptorGANModuleLib" / "paths.py").is_file()
        assert (lib / "SculptorGANLib" / "slicer_worker.py").is_file()
        assert (lib / "SculptorGANLib" / "nn" / "__init__.py").is_file()
        assert (lib / "Resources" / "UI" / "SculptorGAN.ui").is_file()
        assert (lib / "Resources" / "Icons" / "SculptorGAN.png").is_file()
        lib_files = {p.name for p in (lib / "SculptorGANLib").glob("*.py")}
        assert lib_files == {p.name for p in (REPO / "SculptorGANLib").glob("*.py")}


@pytest.mark.parametrize("layout", ["source", "install"])
def test_module_finds_library_and_resources(layout, installed_extension):
    """paths.py, run from the module's own folder, finds the library, the .ui and the models folder."""
    module_dir = MODULE_DIR if layout == "source" else installed_extension[1] / "lib/Slicer-5.13/qt-scripted-modules"
    code = ("import sys, os; sys.path.insert(0, sys.argv[1]); from SculptorGANModuleLib import paths; "
            "root = paths.ensureLibraryImportable(); import SculptorGANLib, SculptorGANLib.nn.cards as m; "
            "print(root); print(paths.resourcePath('UI/SculptorGAN.ui')); print(SculptorGANLib.__file__); "
            "print(m.MODELS_DIR)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code, str(module_dir)], capture_output=True, text=True,
                          cwd="/", env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    root, ui, lib, models = proc.stdout.split()
    expected_root = module_dir.parent.resolve()
    assert pathlib.Path(root).resolve() == expected_root
    assert pathlib.Path(ui).resolve() == expected_root / "Resources" / "UI" / "SculptorGAN.ui"
    assert pathlib.Path(lib).resolve().parent == expected_root / "SculptorGANLib"
    assert pathlib.Path(models).resolve() == expected_root / "Resources" / "Models"


# ----------------------------------------------------------------------------- .ui and parameters
def _ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI_FILE).getroot().iter("widget")}


def _parameter_name(widget: ET.Element) -> str | None:
    for prop in widget.findall("property"):
        if prop.get("name") == "SlicerParameterName":
            return prop.find("string").text
    return None


def test_ui_has_every_widget_the_code_uses():
    source = (MODULE_DIR / "SculptorGAN.py").read_text()
    used = set(re.findall(r"self\.ui\.(\w+)", source))
    widgets = _ui_widgets()
    assert used, "the Widget code should reference .ui widgets"
    assert not used - set(widgets), f"missing in SculptorGAN.ui: {sorted(used - set(widgets))}"
    root = ET.parse(UI_FILE).getroot()
    declared = {c.find("class").text for c in root.iter("customwidget")}
    classes = {w.get("class") for w in widgets.values()}
    assert {c for c in classes if not c.startswith("Q")} <= declared
    scene_receivers = {c.find("receiver").text for c in root.iter("connection")
                       if c.find("signal").text == "mrmlSceneChanged(vtkMRMLScene*)"}
    combos = {n for n, w in widgets.items() if w.get("class") == "qMRMLNodeComboBox"}
    assert combos and combos <= scene_receivers, f"node selectors without a scene: {combos - scene_receivers}"


@pytest.fixture(scope="module")
def module():
    import slicer_env

    slicer_env.require_slicer()
    slicer_env.new_scene()
    return slicer_env.import_module()


def _widget_can_show(widget_class: str, annotation) -> bool:
    """The pairs Slicer's parameterNodeWrapper GUI connectors accept (guiConnectors.py)."""
    import slicer

    base, extras = annotation, []
    if typing.get_origin(annotation) is typing.Annotated:
        base, *extras = typing.get_args(annotation)
    has_choice = any(type(e).__name__ == "Choice" for e in extras)
    if isinstance(base, type) and issubclass(base, slicer.vtkMRMLNode):
        return widget_class in ("qMRMLNodeComboBox", "qMRMLSubjectHierarchyTreeView")
    if base is bool:
        return widget_class in ("QCheckBox", "QPushButton")
    if base is int:
        return widget_class in ("QSpinBox", "QSlider") or (widget_class == "QComboBox" and has_choice)
    if base is float:
        bounded = any(type(e).__name__ in ("WithinRange",) for e in extras) or {
            "Minimum", "Maximum"} <= {type(e).__name__ for e in extras}
        return widget_class == "QDoubleSpinBox" or (widget_class == "ctkSliderWidget" and bounded) or (
            widget_class == "QComboBox" and has_choice)
    if base is str:
        return widget_class in ("QLineEdit", "QTextEdit") or (widget_class == "QComboBox" and has_choice)
    if base in (pathlib.Path, pathlib.PurePath):
        return widget_class in ("ctkPathLineEdit", "ctkDirectoryButton")
    return False


def test_every_parameter_has_a_compatible_widget(module):
    hints = typing.get_type_hints(module.SculptorGANParameterNode, include_extras=True)
    bound = {}
    for name, widget in _ui_widgets().items():
        parameter = _parameter_name(widget)
        if parameter is not None:
            assert parameter not in bound, f"two widgets for {parameter}"
            bound[parameter] = widget
    source = (MODULE_DIR / "SculptorGAN.py").read_text()
    for parameter, widget_name in MANUALLY_SYNCED.items():  # str parameters kept in sync by the Widget code
        assert widget_name in _ui_widgets() and parameter not in bound
        assert f"self.ui.{widget_name}." in source and f"self._parameterNode.{parameter} = " in source
        assert typing.get_args(hints[parameter])[:1] in ((), (str,)) and hints[parameter] in (str,)
        bound[parameter] = _ui_widgets()[widget_name]
    assert set(bound) == set(hints), (f"parameters without widget: {set(hints) - set(bound)}; "
                                      f"widgets naming no parameter: {set(bound) - set(hints)}")
    for parameter, widget in bound.items():
        if parameter not in MANUALLY_SYNCED:
            assert _widget_can_show(widget.get("class"), hints[parameter]), (parameter, widget.get("class"))


def test_parameter_node_round_trip(module):
    import slicer

    from SculptorGANModuleLib import mrml
    from SculptorGANLib.core.volume import CTVolume
    import numpy as np

    scene = slicer.mrmlScene
    volume = mrml.volumeNodeFromCT(CTVolume(np.zeros((3, 4, 5), np.float32)), "v", scene)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "s")
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "r")
    logic = module.SculptorGANLogic()
    p = logic.getParameterNode()
    assert (p.interpolate, p.factor, p.targetSpacing, p.smoothing, p.device) == (True, 2, 0.0, 0.5, "auto")
    assert p.roi is None and p.advancedOptions == ""
    values = dict(inputVolume=volume, roi=roi, interpolate=False, factor=3, targetSpacing=1.25, fillMissing=False,
                  missingSlices="4, 5", segment=True, makeModels=False, smoothing=0.2, device="CPU",
                  modelCard="/models/card.json", advancedOptions='{"overlap": 0.5}', outputVolume=volume,
                  outputSegmentation=seg, exportFolder="/tmp/out", exportFormat="OBJ", exportCoordinates="RAS")
    for key, value in values.items():
        setattr(p, key, value)
    again = logic.getParameterNode()  # a new wrapper over the same scripted-module node
    assert {k: getattr(again, k) for k in values} == values
    raw = again.parameterNode
    assert raw.GetParameter("interpolate") == "False" and raw.GetParameter("factor") == "3"
    assert raw.GetNodeReference("inputVolume") is volume and raw.GetNodeReference("roi") is roi


def test_options_from_parameter_node(module):
    """The panel's values become the library's PipelineOptions (the one schema), Advanced values included."""
    from SculptorGANLib.core.options import PipelineOptions

    p = module.SculptorGANLogic().getParameterNode()
    p.interpolate, p.segment, p.makeModels = True, True, True
    p.factor, p.targetSpacing, p.device, p.missingSlices, p.fillMissing = 3, 0.0, "GPU", "7, 8;9", True
    p.modelCard, p.advancedOptions = "", '{"overlap": 0.5, "enhance": true}'
    options = module.SculptorGANLogic.optionsFromParameterNode(p)
    assert isinstance(options, PipelineOptions)
    assert options.steps == ("interpolate", "segment", "surfaces")
    assert (options.factor, options.target_spacing, options.device) == (3, None, "cuda")
    assert options.missing_slices == (7, 8, 9) and options.segmentation_model is None
    assert (options.overlap, options.enhance) == (0.5, True)
    p.targetSpacing, p.makeModels, p.interpolate, p.device = 1.5, False, False, "CPU"
    p.modelCard, p.advancedOptions = "/m/card.json", ""
    options = module.SculptorGANLogic.optionsFromParameterNode(p)
    assert options.steps == ("segment",) and options.target_spacing == 1.5 and options.factor is None
    assert options.device == "cpu" and options.segmentation_model == "/m/card.json" and options.missing_slices == ()
    from SculptorGANModuleLib.logic import workerOptions

    request = workerOptions(options).to_json()
    assert PipelineOptions.from_json(request) == workerOptions(options)  # what the worker reads back
    p.advancedOptions = '{"overlap": 5}'
    with pytest.raises(ValueError, match="overlap"):
        module.SculptorGANLogic.optionsFromParameterNode(p)
    p.advancedOptions, p.segment = "", False
    with pytest.raises(ValueError):
        module.SculptorGANLogic.optionsFromParameterNode(p)


def test_module_metadata(module):
    class Parent:
        pass

    parent = Parent()
    module.SculptorGAN(parent)
    assert parent.title == "SculptorGAN" and parent.categories == ["Segmentation"]
    assert "10.1109/ACCESS.2024.3389504" in parent.acknowledgementText
    assert "Segment Editor" in parent.helpText


def test_module_loads_without_torch_or_heavy_packages():
    """Slicer must be able to load the module before torch & co. are installed (to offer installing them)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import slicer_env; slicer_env.new_scene(); "
            "slicer_env.import_module(); "
            "print(sorted(m for m in ('torch', 'scipy', 'safetensors', 'nrrd', 'monai') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code, str(REPO / "Testing")], capture_output=True, text=True,
                          timeout=120, cwd=str(REPO))
    if "slicer-core is not installed" in proc.stdout + proc.stderr:
        pytest.skip("slicer-core is not installed")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_dependency_installer_never_touches_slicer_packages(module, tmp_path):
    from SculptorGANModuleLib import dependencies

    calls, torch_calls = [], []

    def pip(args):
        calls.append(list(args))
        constraints = pathlib.Path(args[args.index("--constraint") + 1]).read_text()
        calls.append(constraints)

    missing = ["torch>=2.2", "numpy>=2", "SimpleITK", "safetensors>=0.4"]
    dependencies.installPackages(missing, pipInstall=pip, torchInstaller=torch_calls.append)
    assert torch_calls == ["torch>=2.2"]  # torch through the PyTorch extension, not pip
    args, constraints = calls
    assert args[:1] == ["safetensors>=0.4"] and not any(a.lower().startswith(("numpy", "simpleitk", "torch"))
                                                          for a in args)
    import numpy

    assert f"numpy=={numpy.__version__}" in constraints
    calls.clear()
    assert dependencies.pytorchExtensionInstaller() is None  # no PyTorch extension here → torch via pip
    dependencies.installPackages(["torch>=2.2"], pipInstall=pip)
    assert calls[0][0] == "torch>=2.2"


# ----------------------------------------------------------------------------- Extensions Index
def test_license_file_and_index_urls_point_to_real_files():
    """The Extensions Index needs a LICENSE and an icon/screenshot that exist at the URLs given."""
    license_text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in license_text and "Version 2.0" in license_text
    assert 'license = "Apache-2.0"' in (REPO / "pyproject.toml").read_text()
    text = (REPO / "CMakeLists.txt").read_text()
    meta = dict(re.findall(r'set\((EXTENSION_\w+)\s+"([^"]*)"\)', text))
    prefix = "https://raw.githubusercontent.com/SculptorGAN/SlicerSculptorGAN/main/"
    urls = [meta["EXTENSION_ICONURL"], *meta["EXTENSION_SCREENSHOTURLS"].split()]
    for url in urls:
        assert url.startswith(prefix), url
        path = REPO / url[len(prefix):]
        assert path.is_file() and path.suffix == ".png", f"{url}: no such file in the repository"
