"""Resampling of channels-first arrays between spacings.

Arrays are ``(c, z, y, x)`` (or ``(c, y, x)``); spacings and shapes are per spatial axis in array order (mm,
voxels). Voxel centres are aligned as in image resizing (``grid_mode``): the first and last voxels' outer edges
coincide before and after. Images use cubic splines (order 3), label maps linear interpolation of one-hot
maps (order 1). When a case is anisotropic (coarsest spacing > ``anisotropy_threshold`` x the finest), the
coarse axis is resampled separately with nearest neighbour (order 0), so no detail is invented between slices.
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import zoom

from segpipe.planning import constants as C


def new_shape(shape, spacing, new_spacing) -> list[int]:
    """Shape (voxels) after resampling ``shape`` from ``spacing`` to ``new_spacing`` (rounded per axis)."""
    return [max(1, int(round(s * sp / nsp))) for s, sp, nsp in zip(shape, spacing, new_spacing)]


def coarse_axis(spacing, new_spacing, threshold: float = C.ANISOTROPY_THRESHOLD) -> int | None:
    """The axis to resample separately with order 0, or None. Decided from the source spacing, else the
    target spacing (as nnU-Net does); only one axis may be coarse."""
    for sp in (spacing, new_spacing):
        sp = np.asarray(sp, dtype=np.float64)
        if len(sp) == 3 and sp.max() / sp.min() > threshold:
            ax = int(np.argmax(sp))
            if np.sum(sp > sp.min() * threshold) == 1:
                return ax
    return None


def _zoom_to(arr: np.ndarray, shape, order: int) -> np.ndarray:
    """Zoom a spatial array to exactly ``shape`` (one call, all axes)."""
    if tuple(arr.shape) == tuple(shape):
        return arr
    factors = [n / o for n, o in zip(shape, arr.shape)]
    out = zoom(arr, factors, order=order, mode="nearest", grid_mode=True, prefilter=order > 1)
    assert out.shape == tuple(shape), (out.shape, shape)
    return out


def _resample_spatial(arr: np.ndarray, shape, order: int, axis: int | None, axis_order: int) -> np.ndarray:
    if axis is None:
        return _zoom_to(arr, shape, order)
    inplane = list(shape)
    inplane[axis] = arr.shape[axis]
    out = _zoom_to(arr, inplane, order)
    return _zoom_to(out, shape, axis_order)


def resample_image(data: np.ndarray, spacing, new_spacing, shape=None, order: int = C.IMAGE_RESAMPLING_ORDER,
                   anisotropy_threshold: float = C.ANISOTROPY_THRESHOLD,
                   axis_order: int = C.COARSE_AXIS_RESAMPLING_ORDER) -> np.ndarray:
    """Resample ``data`` ``(c, ...)`` float from ``spacing`` to ``new_spacing`` (or exactly to ``shape``)."""
    shape = list(shape) if shape is not None else new_shape(data.shape[1:], spacing, new_spacing)
    if list(data.shape[1:]) == shape:
        return data.astype(np.float32, copy=False)
    axis = coarse_axis(spacing, new_spacing, anisotropy_threshold)
    return np.stack([_resample_spatial(ch.astype(np.float32, copy=False), shape, order, axis, axis_order)
                     for ch in data]).astype(np.float32, copy=False)


def resample_label(label: np.ndarray, spacing, new_spacing, shape=None, order: int = C.LABEL_RESAMPLING_ORDER,
                   anisotropy_threshold: float = C.ANISOTROPY_THRESHOLD,
                   axis_order: int = C.COARSE_AXIS_RESAMPLING_ORDER) -> np.ndarray:
    """Resample an integer label map ``(...)`` by interpolating each class' one-hot map and taking the argmax.

    Negative values (e.g. -1 marking voxels outside the nonzero crop) are kept as their own class.
    """
    shape = list(shape) if shape is not None else new_shape(label.shape, spacing, new_spacing)
    if list(label.shape) == shape:
        return label
    axis = coarse_axis(spacing, new_spacing, anisotropy_threshold)
    values = np.unique(label)
    if len(values) == 1:
        return np.full(shape, values[0], dtype=label.dtype)
    best = np.full(shape, -np.inf, dtype=np.float32)
    out = np.zeros(shape, dtype=label.dtype)
    for v in values:
        prob = _resample_spatial((label == v).astype(np.float32), shape, order, axis, axis_order)
        better = prob > best
        out[better] = v
        best[better] = prob[better]
    return out
