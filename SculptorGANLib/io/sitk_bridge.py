"""The one numpy ⇄ SimpleITK bridge: arrays indexed (z, y, x) with a :class:`Geometry` ⇄ ``sitk.Image``."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..core.volume import Geometry, Volume


def geometry_from_sitk(image: sitk.Image) -> Geometry:
    """The image's spacing, origin and direction (LPS, ITK conventions)."""
    return Geometry(image.GetSpacing(), image.GetOrigin(), image.GetDirection())


def set_geometry(image: sitk.Image, geometry: Geometry) -> sitk.Image:
    """``image`` with ``geometry``'s spacing, origin and direction (in place; returned for chaining)."""
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    return image


def image_from_array(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """A SimpleITK image holding a copy of ``array`` (z, y, x) on ``geometry``."""
    return set_geometry(sitk.GetImageFromArray(np.ascontiguousarray(array)), geometry)


def to_sitk(volume: Volume) -> sitk.Image:
    """A SimpleITK image with the volume's array and geometry."""
    return image_from_array(volume.array, volume.geometry)


def reference_image(shape_zyx, geometry: Geometry, pixel_id: int = sitk.sitkFloat32) -> sitk.Image:
    """An empty image of ``shape_zyx`` on ``geometry``: the target grid of a resampling."""
    image = sitk.Image([int(shape_zyx[2]), int(shape_zyx[1]), int(shape_zyx[0])], pixel_id)
    return set_geometry(image, geometry)
