"""Patch sampling from preprocessed cases: random crops with padding, foreground oversampling.

Arrays are channels first ``(c, Z, Y, X)``; patch sizes are spatial ``(pz, py, px)`` (3D) or ``(py, px)`` for
2D configurations, which sample one slice (along Z) at a time. Crops reaching outside the image are padded:
images with 0, labels with -1 (ignored by the loss).
"""
from __future__ import annotations

import numpy as np


def crop_padded(arr: np.ndarray, lower: list[int], size: list[int], pad_value: float) -> np.ndarray:
    """Crop ``arr[:, lower:lower+size]`` over the spatial axes, padding where the box leaves the array.

    ``arr`` is a numpy array or an array on disk (a blosc2 NDArray) of which only the box is read. The result is
    a new array (never a view of ``arr``)."""
    spatial = arr.shape[1:]
    src, dst = [], []
    for lo, sz, n in zip(lower, size, spatial):
        a, b = max(lo, 0), min(lo + sz, n)
        src.append(slice(a, max(a, b)))
        dst.append(slice(a - lo, a - lo + max(0, b - a)))
    # indices built first: mypy takes out[(slice(None), *dst)] for 3.11-only subscript unpacking (same AST)
    into, take = (slice(None), *dst), (slice(None), *src)
    if all(d.stop - d.start == sz for d, sz in zip(dst, size)):  # inside the array: no padding, no second copy
        part = arr[take]
        return part.copy() if isinstance(arr, np.ndarray) else np.asarray(part)
    out = np.full((arr.shape[0], *size), pad_value, dtype=arr.dtype)
    out[into] = arr[take]
    return out


def random_lower(shape, patch, rng: np.random.Generator, center=None) -> list[int]:
    """Lower corner of a patch inside ``shape`` (allowing padding when the image is smaller than the patch).

    With ``center`` the patch is centred on that voxel (clipped to the allowed range)."""
    lower = []
    for ax, (n, p) in enumerate(zip(shape, patch)):
        lo_min, lo_max = (0, n - p) if n >= p else (n - p, 0)
        if center is None:
            lower.append(int(rng.integers(lo_min, lo_max + 1)))
        else:
            lower.append(int(np.clip(center[ax] - p // 2, lo_min, lo_max)))
    return lower


def patch_box(shape, class_locations, patch, force_fg: bool, rng: np.random.Generator
              ) -> tuple[list[int], list[int]]:
    """Where the next patch lies in a case of spatial ``shape`` ``(Z, Y, X)``: ``(lower corner, size)`` over the
    three spatial axes, possibly reaching outside the image (then padded by the reader).

    ``patch`` has 3 entries for 3D configurations or 2 for 2D ones (then a slice is chosen first, one with
    foreground when ``force_fg``, and the box is one slice thick). With ``force_fg`` the patch is centred on a
    random voxel of a random class that the case contains (``class_locations``: per class, voxel coordinates
    ``(z, y, x)``, a list or an ``(n, 3)`` array). Only the shape is needed, so the patch alone can be read.
    """
    center = None
    if force_fg:
        classes = [k for k, v in class_locations.items() if len(v)]
        if classes:
            locs = class_locations[classes[int(rng.integers(len(classes)))]]
            center = [int(v) for v in locs[int(rng.integers(len(locs)))]]
    if len(patch) == 2:
        z = center[0] if center is not None else int(rng.integers(shape[0]))
        lower = random_lower(shape[1:], patch, rng, center[1:] if center is not None else None)
        return [z, *lower], [1, *patch]
    return random_lower(shape, patch, rng, center), list(patch)


def sample_patch(data, seg, class_locations: dict[str, list], patch, force_fg: bool,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One patch ``(c, *patch)`` and its label ``(1, *patch)`` from a case ``(c, Z, Y, X)`` (numpy arrays or
    blosc2 arrays on disk, of which only the patch is read); the box is :func:`patch_box`'s."""
    lower, size = patch_box(data.shape[1:], class_locations, patch, force_fg, rng)
    d, s = crop_padded(data, lower, size, 0.0), crop_padded(seg, lower, size, -1)
    return (d[:, 0], s[:, 0]) if len(patch) == 2 else (d, s)
