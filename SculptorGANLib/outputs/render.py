"""Headless 3D rendering of surface models to PNG (VTK offscreen, fixed anterior view, structure colours).

Offscreen OpenGL needs no X server with VTK's pip wheels: they load EGL at run time (Mesa's software
EGL works: Debian/Ubuntu packages ``libegl1 libegl-mesa0 libgl1-mesa-dri``), or OSMesa
(``libosmesa6``), or GLX when a display exists. :func:`rendering_backend` finds one that works in a
short-lived subprocess first, because a failing OpenGL context can abort the process instead of
raising; when none works, :func:`render_meshes_png` raises :class:`RenderError` and callers can fall
back to a non-OpenGL preview.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ..core.errors import SculptorGANError
from ..core.structures import PREVIEW_COLORS


def structure_color(name: str) -> tuple[float, float, float]:
    """The preview colour of a structure (distinct per structure; grey when unknown)."""
    return tuple(PREVIEW_COLORS.get(name, (0.7, 0.7, 0.7)))


#: VTK render window classes tried in order (``VTK_DEFAULT_OPENGL_WINDOW`` values).
BACKENDS = ("vtkEGLRenderWindow", "vtkOSOpenGLRenderWindow", "vtkXOpenGLRenderWindow")
#: Default opacity: kidneys translucent so the tumor inside shows, everything else opaque.
DEFAULT_OPACITY = {"kidney": 0.45, "kidney_left": 0.45, "kidney_right": 0.45}
_ENV = "VTK_DEFAULT_OPENGL_WINDOW"
_PROBE = """
import vtk
w = vtk.vtkRenderWindow(); w.SetOffScreenRendering(1); w.SetSize(32, 32)
r = vtk.vtkRenderer(); r.SetBackground(1, 0, 0); w.AddRenderer(r); w.Render()
f = vtk.vtkWindowToImageFilter(); f.SetInput(w); f.Update()
from vtk.util.numpy_support import vtk_to_numpy
px = vtk_to_numpy(f.GetOutput().GetPointData().GetScalars())
assert px[:, 0].mean() > 200 and px[:, 1].mean() < 50, "blank image"
print(w.GetClassName())
"""
_backend: str | None | bool = False  # False: not probed yet; None: nothing works


class RenderError(SculptorGANError):
    """Offscreen 3D rendering is not possible on this machine (no usable OpenGL)."""


def rendering_backend(timeout: float = 60.0) -> str | None:
    """Name of a VTK render window class that renders offscreen here, or ``None`` (probed once)."""
    global _backend
    if _backend is not False:
        return _backend
    candidates = [os.environ[_ENV]] if os.environ.get(_ENV) else []
    candidates += [b for b in BACKENDS if b not in candidates
                   and (b != "vtkXOpenGLRenderWindow" or os.environ.get("DISPLAY"))]
    _backend = None
    for name in candidates:
        env = dict(os.environ, **{_ENV: name})
        try:
            done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                                  timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0 and name in done.stdout:
            _backend = name
            break
    return _backend


def _camera_anterior(renderer, bounds) -> None:
    """Look at the models from the patient's front (LPS −y), superior up: patient right on the image left."""
    centre = [(bounds[2 * i] + bounds[2 * i + 1]) / 2 for i in range(3)]
    camera = renderer.GetActiveCamera()
    camera.SetFocalPoint(*centre)
    camera.SetPosition(centre[0], centre[1] - 1000.0, centre[2])
    camera.SetViewUp(0.0, 0.0, 1.0)
    renderer.ResetCamera(bounds)
    camera.Zoom(1.1)


def _text(vtk, text: str, position: tuple[float, float], color=(0.1, 0.1, 0.1), size: int = 16, right=False):
    actor = vtk.vtkTextActor()
    actor.SetInput(text)
    prop = actor.GetTextProperty()
    prop.SetFontSize(size)
    prop.SetColor(*color)
    prop.SetBold(True)
    if right:
        prop.SetJustificationToRight()
    actor.GetPositionCoordinate().SetCoordinateSystemToNormalizedViewport()
    actor.GetPositionCoordinate().SetValue(*position)
    return actor


def render_meshes_png(meshes: dict, path: str | Path, size: tuple[int, int] = (600, 600),
                      opacity: dict[str, float] | None = None, title: str | None = None) -> Path:
    """Render ``meshes`` (LPS) from the anterior view into a PNG; returns its path.

    Raises :class:`RenderError` when no offscreen OpenGL works here, ``ValueError`` with no meshes.
    """
    meshes = {n: m for n, m in meshes.items() if m is not None and m.GetNumberOfCells() > 0}
    if not meshes:
        raise ValueError("nothing to render: no non-empty meshes")
    backend = rendering_backend()
    if backend is None:
        raise RenderError("3D rendering unavailable: no offscreen OpenGL (install Mesa EGL: "
                          "libegl1 libegl-mesa0 libgl1-mesa-dri, or libosmesa6)")
    os.environ[_ENV] = backend  # read by VTK when a render window is created
    import vtk

    opacity = {**DEFAULT_OPACITY, **(opacity or {})}
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(1.0, 1.0, 1.0)
    renderer.SetUseDepthPeeling(True)
    renderer.SetMaximumNumberOfPeels(8)
    for name, mesh in meshes.items():
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputData(mesh)
        mapper.ScalarVisibilityOff()
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        prop = actor.GetProperty()
        prop.SetColor(*structure_color(name))
        prop.SetOpacity(float(opacity.get(name, 1.0)))
        prop.SetSpecular(0.2)
        prop.SetSpecularPower(20)
        renderer.AddActor(actor)
    bounds = renderer.ComputeVisiblePropBounds()
    _camera_anterior(renderer, bounds)
    renderer.AddViewProp(_text(vtk, "R", (0.02, 0.5)))
    renderer.AddViewProp(_text(vtk, "L", (0.98, 0.5), right=True))
    renderer.AddViewProp(_text(vtk, title or "anterior view", (0.02, 0.96), size=14))
    for i, name in enumerate(meshes):
        renderer.AddViewProp(_text(vtk, name.replace("_", " "), (0.02, 0.02 + 0.045 * i),
                                  color=tuple(0.8 * c for c in structure_color(name)), size=14))
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetAlphaBitPlanes(1)
    window.SetMultiSamples(0)
    window.SetSize(int(size[0]), int(size[1]))
    window.AddRenderer(renderer)
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.ReadFrontBufferOff()
    grab.Update()
    path = Path(path)
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(path))
    writer.SetInputConnection(grab.GetOutputPort())
    writer.Write()
    window.Finalize()
    if not path.is_file():
        from ..core.errors import OutputError

        raise OutputError(f"{path}: cannot be written")
    return path
