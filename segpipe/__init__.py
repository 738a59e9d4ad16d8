"""segpipe: a self-configuring medical image segmentation pipeline.

Stages (each a ``segpipe <stage>`` command writing artifacts to a workspace on disk):
onboard -> fingerprint -> plan -> preprocess -> train -> predict -> evaluate -> select.

Conventions used everywhere in the package:

* Arrays are in numpy axis order as returned by ``SimpleITK.GetArrayFromImage``: 3D images are
  ``(z, y, x)``, 2D images ``(y, x)``; multi-channel images are channels first, ``(c, z, y, x)``.
* Per-axis lists (spacing, shape, patch size, strides, kernel sizes) follow that array axis order.
  Spacing is in millimetres, shapes and patch sizes in voxels.
* Physical-space vectors (origin, direction) keep SimpleITK's ``(x, y, z)`` order, as in the files.
"""
from typing import Any

from segpipe._version import __version__

__all__ = ["Predictor", "__version__", "api"]


def __getattr__(name: str) -> Any:
    """``segpipe.Predictor`` and ``segpipe.api`` (the stage functions), imported on first use: ``import segpipe``
    alone stays light (no torch)."""
    if name == "Predictor":
        from segpipe.inference.predictor import Predictor

        return Predictor
    if name == "api":
        import importlib

        return importlib.import_module("segpipe.api")
    raise AttributeError(f"module 'segpipe' has no attribute {name!r}")
