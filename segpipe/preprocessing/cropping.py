"""Cropping to the bounding box of nonzero voxels (over all channels), as used for statistics and training.

Arrays are channels first, ``(c, z, y, x)`` or ``(c, y, x)``; boxes are ``[[start, stop), ...]`` per spatial
axis in array axis order (voxels).
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_fill_holes


def nonzero_mask(data: np.ndarray) -> np.ndarray:
    """Voxels where any channel is nonzero, with holes filled. ``data``: ``(c, ...)``; returns ``(...)`` bool."""
    mask = np.any(data != 0, axis=0)
    return binary_fill_holes(mask)


def bbox_of(mask: np.ndarray) -> list[list[int]]:
    """Bounding box ``[[start, stop), ...]`` of ``mask``'s True voxels; the whole array when it has none."""
    if not mask.any():
        return [[0, int(s)] for s in mask.shape]
    box = []
    for ax in range(mask.ndim):
        other = tuple(i for i in range(mask.ndim) if i != ax)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append([int(hits[0]), int(hits[-1]) + 1])
    return box


def crop(arr: np.ndarray, box: list[list[int]]) -> np.ndarray:
    """Crop the trailing ``len(box)`` axes of ``arr`` to ``box`` (a view, no copy)."""
    lead = (slice(None),) * (arr.ndim - len(box))
    return arr[lead + tuple(slice(a, b) for a, b in box)]
