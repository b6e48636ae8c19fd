"""Where the library and the resources are, in every way the module can be installed.

The module file ``SculptorGAN.py`` always has the library (``SculptorGANLib/``) and the shared
``Resources/`` either beside it or one folder up:

* source tree ("Add module path" = ``<repo>/SculptorGAN``): ``<repo>/SculptorGAN/SculptorGAN.py``,
  ``<repo>/SculptorGANLib``, ``<repo>/Resources``;
* extension build and install trees: ``lib/Slicer-X.Y/qt-scripted-modules/SculptorGAN.py``,
  ``lib/Slicer-X.Y/SculptorGANLib``, ``lib/Slicer-X.Y/Resources`` (``SculptorGAN/CMakeLists.txt``
  lists them as ``../SculptorGANLib/…`` and ``../Resources/…`` and installs those two folders there);
* a copy that bundles everything next to the module file also works (checked first).
"""
from __future__ import annotations

import os
import sys

MODULE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MARKER_LIB = os.path.join("SculptorGANLib", "__init__.py")
_MARKER_UI = os.path.join("Resources", "UI", "SculptorGAN.ui")


def _first_containing(marker: str) -> str | None:
    for root in (MODULE_DIR, os.path.dirname(MODULE_DIR)):
        if os.path.isfile(os.path.join(root, marker)):
            return root
    return None


def libraryRoot() -> str:
    """The folder that contains ``SculptorGANLib`` (put on sys.path and on the worker's PYTHONPATH)."""
    root = _first_containing(_MARKER_LIB)
    if root is None:
        raise RuntimeError(f"SculptorGANLib not found next to {MODULE_DIR} or one folder up; "
                           "the extension is incompletely installed")
    return root


def resourcesDir() -> str:
    """The ``Resources`` folder holding UI/, Icons/ and Models/."""
    root = _first_containing(_MARKER_UI)
    if root is None:
        raise RuntimeError(f"Resources/UI/SculptorGAN.ui not found next to {MODULE_DIR} or one folder up")
    return os.path.join(root, "Resources")


def resourcePath(relative: str) -> str:
    return os.path.join(resourcesDir(), relative)


def ensureLibraryImportable() -> str:
    """Make ``import SculptorGANLib`` work in this process; returns the library root."""
    root = libraryRoot()
    if root not in sys.path:
        sys.path.insert(0, root)
    return root
