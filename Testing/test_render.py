"""Headless rendering: a real PNG from the anterior view, or a clear RenderError."""
from __future__ import annotations

import numpy as np
import pytest

from SculptorGANLib.outputs import render
from SculptorGANLib.synthetic.phantom import make_phantom
from SculptorGANLib.surfaces.meshing import labelmap_to_meshes
from SculptorGANLib.core.volume import STRUCTURE_COLORS


@pytest.fixture(scope="module")
def meshes():
    ct, labels = make_phantom(shape=(48, 64, 64), spacing=(5.0, 5.0, 5.0))
    return labelmap_to_meshes(labels, ct.array)


def test_anterior_png_shows_tumor_on_the_patients_right(meshes, tmp_path):
    if render.rendering_backend() is None:
        pytest.skip("no offscreen OpenGL on this machine")
    path = render.render_meshes_png(meshes, tmp_path / "models.png", size=(320, 240))
    import matplotlib.image

    image = matplotlib.image.imread(path)[..., :3]
    assert image.shape[:2] == (240, 320)
    tumor = np.asarray(STRUCTURE_COLORS["tumor"])
    greenish = (image[..., 1] > image[..., 0] + 0.15) & (image[..., 1] > image[..., 2] + 0.15)
    assert greenish.sum() > 100, "tumor not visible"
    cols = np.nonzero(greenish)[1]
    # Anterior view: the patient's right (the phantom's tumor side, LPS x < 0) is on the image's left.
    assert np.median(cols) < 320 / 2
    assert np.abs(image[greenish].mean(axis=0) - tumor).max() < 0.35


def test_render_error_when_no_backend(meshes, tmp_path, monkeypatch):
    monkeypatch.setattr(render, "_backend", None)
    with pytest.raises(render.RenderError, match="3D rendering unavailable"):
        render.render_meshes_png(meshes, tmp_path / "x.png")


def test_nothing_to_render(tmp_path):
    with pytest.raises(ValueError):
        render.render_meshes_png({}, tmp_path / "x.png")
