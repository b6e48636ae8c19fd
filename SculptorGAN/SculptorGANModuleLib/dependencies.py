"""Python packages the pipeline needs beyond what Slicer ships, and installing them on first use.

torch comes from the PyTorch extension (``PyTorchUtils``) when it is installed — it picks the CUDA
build that matches the GPU driver — and from pip otherwise. Everything else is installed with
Slicer's pip helper under a constraints file that pins the numpy and SimpleITK Slicer already has, so
an install can never replace Slicer's own numpy, SimpleITK or VTK.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import tempfile

#: import name → pip requirement, for what the worker imports at run time.
REQUIREMENTS: dict[str, str] = {
    "torch": "torch>=2.2",
    "scipy": "scipy>=1.10",
    "safetensors": "safetensors>=0.4",
    "nrrd": "pynrrd>=1.0",
}
#: Distributions that belong to Slicer: pinned during installs, never installed or upgraded by us.
SLICER_OWNED = ("numpy", "SimpleITK", "vtk")


def missingPackages(requirements: dict[str, str] | None = None) -> list[str]:
    """pip requirements of the packages that cannot be imported."""
    requirements = REQUIREMENTS if requirements is None else requirements
    importlib.invalidate_caches()
    return [spec for name, spec in requirements.items() if importlib.util.find_spec(name) is None]


def _distributionVersion(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def constraintsFile(directory: str | None = None) -> str:
    """A pip constraints file pinning Slicer's own numpy/SimpleITK at their installed versions."""
    lines = []
    for name in SLICER_OWNED:
        version = _distributionVersion(name)
        if version:
            lines.append(f"{name}=={version}")
    handle, path = tempfile.mkstemp(prefix="SculptorGAN-constraints-", suffix=".txt", dir=directory)
    with os.fdopen(handle, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _requirementName(spec: str) -> str:
    for separator in "<>=!~[ ;":
        spec = spec.split(separator)[0]
    return spec.strip()


def installPackages(missing: list[str], pipInstall=None, torchInstaller=None) -> list[str]:
    """Install ``missing`` (pip requirements); returns what is still missing afterwards.

    ``pipInstall(args: list[str])`` defaults to ``slicer.util.pip_install``; ``torchInstaller()``
    defaults to the PyTorch extension's installer when that extension is present.
    """
    if pipInstall is None:
        import slicer

        pipInstall = slicer.util.pip_install
    owned = {n.lower() for n in SLICER_OWNED}
    missing = [m for m in missing if _requirementName(m).lower() not in owned]
    rest = [m for m in missing if _requirementName(m) != "torch"]
    if len(rest) != len(missing):
        installer = torchInstaller or pytorchExtensionInstaller()
        if installer is not None:
            installer()
        else:
            rest.insert(0, REQUIREMENTS["torch"])
    if rest:
        constraints = constraintsFile()
        try:
            pipInstall([*rest, "--constraint", constraints])
        finally:
            os.remove(constraints)
    return missingPackages()


def pytorchExtensionInstaller():
    """A callable installing torch through the PyTorch extension, or None when that extension is absent."""
    try:
        import PyTorchUtils  # the PyTorch extension's module
    except ImportError:
        return None

    def install():
        logic = PyTorchUtils.PyTorchUtilsLogic()
        if not logic.torchInstalled():
            logic.installTorch(askConfirmation=False)

    return install
