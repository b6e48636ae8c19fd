"""Headless Slicer for pytest: a real MRML scene from the ``slicer-core`` package, plus minimal
stand-ins for the Qt-only parts that ``SculptorGAN/SculptorGAN.py`` imports.

``slicer-core`` has MRML, the module logics and ``slicer.util`` but not ``qt``, ``ctk``,
``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper`` or ``slicer.i18n``
(see ../shared/notes/slicer-core.md). The stand-ins below provide just enough of those to import the
module file and to run its Logic; nothing of the Widget runs here. The parameter-node stand-in
stores values the way Slicer's serializers do (bool as "True"/"False", numbers and paths with str(),
nodes as node references named after the parameter), so a round trip through it exercises the
module's parameter declarations on a real ``vtkMRMLScriptedModuleNode``.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import sys
import types
import typing
import unittest

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "SculptorGAN"
os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


def require_slicer():
    """``import slicer`` (slicer-core) or skip the calling test module with the reason."""
    try:
        import slicer  # noqa: F401
        import slicer.util  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"slicer-core is not installed ({exc}); pip install slicer-core==5.13.31053.0",
                    allow_module_level=True)
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("the importable 'slicer' is not slicer-core (no vtkMRMLScene)", allow_module_level=True)
    return slicer


# ----------------------------------------------------------------------------- scene
class _ModuleLogics(types.SimpleNamespace):
    """Stands in for ``slicer.modules``: ``slicer.modules.<name>.logic()``."""


def new_scene():
    """A fresh MRML scene with the logics a Slicer session would have registered; sets slicer.mrmlScene."""
    slicer = require_slicer()
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    colors = slicer.vtkSlicerColorLogic()
    colors.SetMRMLApplicationLogic(app_logic)
    colors.SetMRMLScene(scene)
    app_logic.SetModuleLogic("Colors", colors)
    segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations.SetMRMLApplicationLogic(app_logic)
    segmentations.SetMRMLScene(scene)
    volumes = slicer.vtkSlicerVolumesLogic()
    volumes.SetMRMLApplicationLogic(app_logic)
    volumes.SetMRMLScene(scene)
    slicer.modules = _ModuleLogics(
        segmentations=types.SimpleNamespace(logic=lambda: segmentations),
        volumes=types.SimpleNamespace(logic=lambda: volumes),
    )
    scene._sculptorgan_keepalive = (app_logic, colors, segmentations, volumes)  # logics live as long as the scene
    return scene


# ----------------------------------------------------------------------------- Qt-only stand-ins
class _Anything:
    """Accepts any construction/call/attribute (for qt/ctk classes referenced but not used headless)."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Anything()

    def __getattr__(self, name):
        return _Anything()


def _fake_qt_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)

    def __getattr__(attr):  # qt.QIcon, qt.QTimer, ctk.ctkSliderWidget, ... (but no __file__ & co.)
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Anything()

    module.__getattr__ = __getattr__
    module.__sculptorgan_standin__ = True
    return module


@dataclasses.dataclass
class Default:
    value: typing.Any


@dataclasses.dataclass
class Choice:
    choices: typing.Sequence


@dataclasses.dataclass
class WithinRange:
    minimum: float
    maximum: float


@dataclasses.dataclass
class Minimum:
    minimum: float


@dataclasses.dataclass
class Maximum:
    maximum: float


def _split(annotation):
    if typing.get_origin(annotation) is typing.Annotated:
        base, *extras = typing.get_args(annotation)
        return base, extras
    return annotation, []


def _is_node_type(base) -> bool:
    import slicer

    return isinstance(base, type) and issubclass(base, slicer.vtkMRMLNode)


def _validate(name, base, extras, value):
    for extra in extras:
        if isinstance(extra, Choice) and value not in extra.choices:
            raise ValueError(f"{name}: {value!r} is not one of {list(extra.choices)}")
        if isinstance(extra, WithinRange) and not extra.minimum <= value <= extra.maximum:
            raise ValueError(f"{name}: {value!r} is outside [{extra.minimum}, {extra.maximum}]")
        if isinstance(extra, Minimum) and value < extra.minimum:
            raise ValueError(f"{name}: {value!r} < {extra.minimum}")
        if isinstance(extra, Maximum) and value > extra.maximum:
            raise ValueError(f"{name}: {value!r} > {extra.maximum}")
    if value is not None and not _is_node_type(base):
        expected = (int, float) if base is float else base
        if not isinstance(value, expected) or (base is int and isinstance(value, bool)):
            raise TypeError(f"{name}: expected {base.__name__}, got {type(value).__name__}")
    if value is not None and _is_node_type(base) and not value.IsA(base.__name__):
        raise TypeError(f"{name}: expected a {base.__name__}")


def _write(node, name, base, value):
    if _is_node_type(base):
        node.SetParameter(name, "")
        node.SetNodeReferenceID(name, value.GetID() if value is not None else None)
    elif base is bool:
        node.SetParameter(name, "True" if value else "False")
    else:
        node.SetParameter(name, str(value))


def _read(node, name, base):
    if _is_node_type(base):
        return node.GetNodeReference(name)
    text = node.GetParameter(name)
    if base is bool:
        return text == "True"
    return base(text)


def parameterNodeWrapper(cls):
    """Minimal typed wrapper over a vtkMRMLScriptedModuleNode (see the module docstring)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    specs = {}
    for name, annotation in hints.items():
        base, extras = _split(annotation)
        if name in cls.__dict__:
            default = cls.__dict__[name]
        else:
            explicit = [e.value for e in extras if isinstance(e, Default)]
            default = explicit[0] if explicit else (None if _is_node_type(base) else base())
        specs[name] = (base, extras, default)

    def __init__(self, parameterNode):
        object.__setattr__(self, "parameterNode", parameterNode)
        for name, (base, _extras, default) in specs.items():
            if not parameterNode.HasParameter(name):
                _write(parameterNode, name, base, default)

    def __getattr__(self, name):
        if name in specs:
            return _read(self.parameterNode, name, specs[name][0])
        if name[:1].isupper():  # VTK methods (AddObserver, RemoveObserver, ...) go to the MRML node
            return getattr(self.parameterNode, name)
        raise AttributeError(name)

    def __setattr__(self, name, value):
        if name not in specs:
            raise AttributeError(f"{cls.__name__} has no parameter {name!r}")
        base, extras, _default = specs[name]
        _validate(name, base, extras, value)
        _write(self.parameterNode, name, base, value)

    def connectGui(self, gui):  # GUI connections need Slicer's Qt widgets; here only a tag is handed out
        return ("gui-tag", id(gui))

    namespace = {"__init__": __init__, "__getattr__": __getattr__, "__setattr__": __setattr__,
                 "connectGui": connectGui, "disconnectGui": lambda self, tag: None,
                 "allParameters": property(lambda self: dict(specs)), "__doc__": cls.__doc__,
                 "__annotations__": hints, "_sculptorgan_standin": True}
    return type(cls.__name__, (), namespace)


class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent
        self.moduleName = type(self).__name__


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent

    def setup(self):
        self.layout = _Anything()  # the module panel's layout; widgets added to it go nowhere here


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        self.moduleName = type(self).__name__[: -len("Logic")]

    def getParameterNode(self):
        import slicer

        scene = slicer.mrmlScene
        node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetSingletonTag(self.moduleName)
            node.SetName(self.moduleName)
            node.SetModuleName(self.moduleName)
            node = scene.AddNode(node)
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message, msec=0):
        pass


def install_standins() -> None:
    """Put the stand-ins into sys.modules / the slicer package where slicer-core lacks the real ones."""
    slicer = require_slicer()
    for name in ("qt", "ctk"):
        sys.modules.setdefault(name, _fake_qt_module(name))
    if "slicer.ScriptedLoadableModule" not in sys.modules:
        module = types.ModuleType("slicer.ScriptedLoadableModule")
        for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
                    ScriptedLoadableModuleTest):
            setattr(module, cls.__name__, cls)
        sys.modules[module.__name__] = module
        slicer.ScriptedLoadableModule = module
    if "slicer.parameterNodeWrapper" not in sys.modules:
        module = types.ModuleType("slicer.parameterNodeWrapper")
        for obj in (parameterNodeWrapper, Default, Choice, WithinRange, Minimum, Maximum):
            setattr(module, obj.__name__, obj)
        sys.modules[module.__name__] = module
        slicer.parameterNodeWrapper = module
    if "slicer.i18n" not in sys.modules:
        module = types.ModuleType("slicer.i18n")
        module.tr = lambda text: text
        module.translate = lambda context, text: text
        sys.modules[module.__name__] = module
        slicer.i18n = module


def import_module():
    """The real ``SculptorGAN/SculptorGAN.py`` imported with the stand-ins."""
    install_standins()
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))
    import SculptorGAN

    return SculptorGAN


# ----------------------------------------------------------------------------- CMake file lists
def _cmake_block(name: str, files: list[str]) -> str:
    return f"set({name}\n" + "".join(f"  {f}\n" for f in files) + "  )"


def update_cmake_lists() -> list[str]:
    """Rewrite the file lists in SculptorGAN/CMakeLists.txt from the working tree; returns the new lines."""
    import re

    cmake = MODULE_DIR / "CMakeLists.txt"
    text = cmake.read_text()

    def files(folder: str) -> list[str]:
        root = REPO / folder
        return sorted(p.relative_to(REPO).as_posix() for p in root.rglob("*")
                      if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo"))

    module = ["${MODULE_NAME}.py"] + [f.split("/", 1)[1] for f in files("SculptorGAN")
                                       if f.endswith(".py") and f != "SculptorGAN/SculptorGAN.py"]
    library = files("SculptorGANLib")
    resources = [f for d in ("Icons", "UI", "Models") if (REPO / "Resources" / d).is_dir()
                 for f in files(f"Resources/{d}")]
    blocks = {"MODULE_PYTHON_SCRIPTS": module,
              "SCULPTORGANLIB_PYTHON_SCRIPTS": ["../" + f for f in library if f.endswith(".py")],
              "MODULE_PYTHON_RESOURCES": ["../" + f for f in resources + [x for x in library if not x.endswith(".py")]]}
    before = set(re.findall(r"^\s+(\S+)$", text, re.M))
    for name, listed in blocks.items():
        text = re.sub(rf"set\({name}\n.*?\n  \)", lambda _m: _cmake_block(name, listed), text, flags=re.S)
    cmake.write_text(text)
    return sorted(set(f for listed in blocks.values() for f in listed) - before)


if __name__ == "__main__":
    if sys.argv[1:] == ["--update-cmake"]:
        added = update_cmake_lists()
        print("SculptorGAN/CMakeLists.txt updated" + ("; added:\n  " + "\n  ".join(added) if added else ""))
    else:
        print("usage: python Testing/slicer_env.py --update-cmake")
