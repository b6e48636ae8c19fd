"""Python packages the pipeline needs beyond what Slicer ships, and installing them on first use.

torch comes from the PyTorch extension (``PyTorchUtils``) when it is installed — it picks the CUDA
build that matches the GPU driver — and from pip otherwise. Everything else is installed with
Slicer's pip helper under a constraints file that pins the numpy, SimpleITK and VTK Slicer already
has (and an installed torch), so an install can never replace Slicer's own packages or swap the
PyTorch build the PyTorch extension chose. A package that is installed but older than required
counts as missing (and is upgraded).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import re
import tempfile
from typing import Callable, Dict, List, Optional, Tuple

#: import name → pip requirement, for everything the worker imports at run time
#: (Testing/test_slicer_deps.py runs the worker in an environment holding only Slicer's packages + these).
REQUIREMENTS: Dict[str, str] = {
    "torch": "torch>=2.2",
    "scipy": "scipy>=1.10",
    "safetensors": "safetensors>=0.4",
    "nrrd": "pynrrd>=1.0",
    "monai": "monai>=1.3",  # sliding-window inference of the segmentation network
}
#: Distributions that belong to Slicer: pinned during installs, never installed or upgraded by us.
SLICER_OWNED = ("numpy", "SimpleITK", "vtk")
#: Also pinned at their installed version unless being installed: Slicer's scipy (5.8 and 5.10 ship
#: 1.13.1) and a torch the PyTorch extension chose (a pip dependency must never swap its build).
PINNED_IF_INSTALLED = ("scipy", "torch")


def requirementName(spec: str) -> str:
    """'torch>=2.2' -> 'torch'."""
    return re.split(r"[<>=!~\[ ;]", spec, maxsplit=1)[0].strip()


def minimumVersion(spec: str) -> Optional[str]:
    """'torch>=2.2' -> '2.2' (None without a ``>=`` bound)."""
    match = re.search(r">=\s*([0-9][0-9A-Za-z.]*)", spec)
    return match.group(1) if match else None


def versionTuple(version: str) -> Tuple[int, ...]:
    """'2.13.0+cpu' -> (2, 13, 0); '1.0rc1' -> (1, 0): the release numbers only."""
    numbers = []
    for part in version.split("+")[0].split("."):
        digits = re.match(r"\d+", part)
        if not digits:
            break
        numbers.append(int(digits.group()))
        if digits.group() != part:
            break
    return tuple(numbers)


def distributionVersion(name: str) -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def tooOld(spec: str, installed: Optional[str]) -> bool:
    """True when ``installed`` is below the spec's ``>=`` bound."""
    minimum = minimumVersion(spec)
    return bool(minimum and installed and versionTuple(installed) < versionTuple(minimum))


def missingPackages(requirements: Optional[Dict[str, str]] = None,
                    version: Callable[[str], Optional[str]] = distributionVersion) -> List[str]:
    """pip requirements of the packages that cannot be imported or are older than required."""
    requirements = REQUIREMENTS if requirements is None else requirements
    importlib.invalidate_caches()
    missing = []
    for name, spec in requirements.items():
        if importlib.util.find_spec(name) is None or tooOld(spec, version(requirementName(spec))):
            missing.append(spec)
    return missing


def outdatedMessage(requirements: Optional[Dict[str, str]] = None,
                    version: Callable[[str], Optional[str]] = distributionVersion) -> str:
    """'torch 2.0.1 (needs >=2.2)'-style list of installed-but-too-old packages ('' when none)."""
    requirements = REQUIREMENTS if requirements is None else requirements
    old = []
    for spec in requirements.values():
        installed = version(requirementName(spec))
        if tooOld(spec, installed):
            old.append(f"{requirementName(spec)} {installed} (needs >={minimumVersion(spec)})")
    return ", ".join(old)


def constraintsFile(installing: List[str] = (), directory: Optional[str] = None) -> str:
    """A pip constraints file pinning Slicer's numpy/SimpleITK/VTK and the installed scipy/torch
    (those not in ``installing``, a list of requirement names) at their installed versions."""
    lines = []
    names = [*SLICER_OWNED, *(n for n in PINNED_IF_INSTALLED if n not in installing)]
    for name in names:
        installed = distributionVersion(name)
        if installed:
            lines.append(f"{name}=={installed}")
    handle, path = tempfile.mkstemp(prefix="SculptorGAN-constraints-", suffix=".txt", dir=directory)
    with os.fdopen(handle, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def installPackages(missing: List[str], pipInstall=None, torchInstaller=None) -> List[str]:
    """Install ``missing`` (pip requirements); returns what is still missing afterwards.

    ``pipInstall(args: list[str])`` defaults to ``slicer.util.pip_install``; ``torchInstaller(spec)``
    defaults to the PyTorch extension's installer when that extension is present.
    """
    if pipInstall is None:
        import slicer

        pipInstall = slicer.util.pip_install
    owned = {n.lower() for n in SLICER_OWNED}
    missing = [m for m in missing if requirementName(m).lower() not in owned]
    rest = [m for m in missing if requirementName(m) != "torch"]
    if len(rest) != len(missing):
        installer = torchInstaller or pytorchExtensionInstaller()
        if installer is not None:
            installer(REQUIREMENTS["torch"])
        else:
            rest.insert(0, REQUIREMENTS["torch"])
    if rest:
        constraints = constraintsFile([requirementName(m) for m in rest])
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

    def install(spec: str) -> None:
        minimum = minimumVersion(spec)
        requirement = f">={minimum}" if minimum else None
        PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=requirement)

    return install
