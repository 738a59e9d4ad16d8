"""Type aliases that state axis order, units and array layout, so signatures say what they take.

Conventions used everywhere in segpipe:

- **Array axis order.** Spatial axes are in numpy order: ``(z, y, x)`` for 3D, ``(y, x)`` for 2D. SimpleITK's
  ``(x, y, z)`` order appears only inside :mod:`segpipe.io.images`, which converts on reading and writing.
- **Units.** Spacing in millimetres per voxel; sizes, shapes, patches and strides in voxels.
- **Layout.** Images are channels first: ``(c, z, y, x)`` (``(c, y, x)`` in 2D). Label maps have no channel
  axis on disk and in exports (``(z, y, x)``); preprocessed segmentations keep one: ``(1, z, y, x)``.
"""
from __future__ import annotations

from typing import TypeAlias

import numpy as np
import numpy.typing as npt

SpacingMM: TypeAlias = tuple[float, ...]
"""Millimetres per voxel, one per spatial axis in array order ``(z, y, x)`` / ``(y, x)``."""

ShapeVox: TypeAlias = tuple[int, ...]
"""Voxels per spatial axis, array order ``(z, y, x)`` / ``(y, x)`` (image shapes, patch sizes)."""

MedianShapeVox: TypeAlias = tuple[float, ...]
"""A median image shape in voxels per axis, array order; may be fractional."""

StridesVox: TypeAlias = tuple[int, ...]
"""A convolution stride or kernel size per spatial axis, in voxels, array order."""

ChannelsFirst: TypeAlias = npt.NDArray[np.float32]
"""An image ``(c, z, y, x)`` (or ``(c, y, x)`` in 2D), float32, channels first."""

LabelMap: TypeAlias = npt.NDArray[np.integer]
"""An integer label map ``(z, y, x)`` (or ``(y, x)``), values as in dataset.json's ``labels``."""
