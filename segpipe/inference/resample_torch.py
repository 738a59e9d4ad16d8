"""Resampling of probability maps in torch, one output slab at a time (the export of predictions).

Which orders (issue 12): export takes them from the plan (:class:`segpipe.planning.plans.Resampling` of the
configuration that made the probabilities), never from constants. Probabilities are soft one-hot maps, so they
are resampled as preprocessing resampled the one-hot label maps (nnU-Net's semantics: its probabilities and its
segmentations both use order 1 with order 0 along a separately resampled axis):

* ``label_order`` along every axis, except
* ``coarse_axis_order`` along the coarse axis of an anisotropic case (coarsest spacing over
  ``anisotropy_threshold`` x the finest; the axis is decided as
  :func:`segpipe.preprocessing.resampling.coarse_axis` decides it).

A spline order (0 to 5, what scipy's ``zoom`` accepts in preprocessing) maps to a torch kernel as follows:

* 0: nearest neighbour, and 1: linear interpolation. These compute what
  :func:`segpipe.preprocessing.resampling.resample_image` computes with scipy's ``zoom`` (``grid_mode``,
  ``mode="nearest"``): source positions, neighbour indices and weights are computed in float64 exactly as scipy
  computes them (``(o + 0.5) * in / out - 0.5``, clamped to the array), so nearest-neighbour choices are the
  same; values differ from scipy's by float32 rounding only.
* 2 to 5: cubic convolution (Keys, ``a = -0.5``; 4 source voxels per output voxel, edge voxels repeated). scipy's
  order-3 spline needs a prefilter over the whole axis, which a slab-by-slab export cannot apply; cubic
  convolution is the local kernel closest to it (it interpolates, and reproduces polynomials up to degree 2).
  Its values differ from scipy's spline by a small fraction of the local variation, and, like the spline, it
  can overshoot ``[0, 1]`` slightly near sharp edges; the weights sum to 1, so the sum over classes stays 1.

All kernels are separable: the volume is resampled axis by axis, for a range of output slices along the first
axis at a time, so that no full-size intermediate is ever made. Axis order is the array order ``(z, y, x)``;
spacings are in mm, shapes in voxels.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from segpipe.planning.plans import Resampling
from segpipe.preprocessing.resampling import coarse_axis

MAX_ORDER = 5          # the highest spline order preprocessing (scipy's zoom) accepts
CUBIC_A = -0.5         # Keys' cubic convolution parameter (the one that matches a cubic Taylor expansion)


def kernel(order: int) -> str:
    """The torch kernel of a spline ``order`` (0 to 5): ``"nearest"`` (0), ``"linear"`` (1) or ``"cubic"``
    (2 to 5, cubic convolution)."""
    order = int(order)
    if not 0 <= order <= MAX_ORDER:
        raise ValueError(f"resampling order {order}: expected 0 to {MAX_ORDER} (as in preprocessing)")
    return "nearest" if order == 0 else "linear" if order == 1 else "cubic"


def _source_positions(in_size: int, out_size: int) -> np.ndarray:
    """Source position (float64, in voxels) of each output voxel along one axis, as scipy's ``zoom`` with
    ``grid_mode=True`` has it, clamped to ``[0, in_size - 1]`` (``mode="nearest"``)."""
    in_size, out_size = int(in_size), int(out_size)
    if in_size < 1 or out_size < 1:
        raise ValueError(f"cannot resample an axis of {in_size} voxels to {out_size}")
    cc = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
    return np.clip(cc, 0.0, in_size - 1, out=cc)


def axis_map(in_size: int, out_size: int, order: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """For each output index along one axis: the two source indices and the weight of the second (order 1),
    or the one nearest source index (order 0; weight None), as scipy's ``zoom`` with ``grid_mode=True`` and
    ``mode="nearest"`` has them. (Orders 2 to 5: :func:`cubic_axis_map`.)"""
    if order not in (0, 1):
        raise ValueError(f"axis_map is for orders 0 and 1, not {order} (cubic_axis_map for orders 2 to 5)")
    cc = _source_positions(in_size, out_size)
    if order == 0:
        i0 = np.floor(cc + 0.5).astype(np.int64)
        np.minimum(i0, int(in_size) - 1, out=i0)
        return i0, i0, None
    i0 = np.floor(cc).astype(np.int64)
    i1 = np.minimum(i0 + 1, int(in_size) - 1)
    return i0, i1, cc - i0


def _keys(d: np.ndarray, a: float = CUBIC_A) -> np.ndarray:
    """Keys' cubic convolution kernel at distances ``d`` (voxels)."""
    d = np.abs(d)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def cubic_axis_map(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """For each output index along one axis: the 4 source indices (``(4, out_size)`` int64, clamped to the
    array: edge voxels repeated) and their cubic convolution weights (``(4, out_size)`` float64, summing to 1)."""
    cc = _source_positions(in_size, out_size)
    base = np.floor(cc).astype(np.int64)
    frac = cc - base
    offsets = np.arange(-1, 3, dtype=np.int64)[:, None]
    idx = np.clip(base[None, :] + offsets, 0, int(in_size) - 1)
    weights = _keys(frac[None, :] - offsets)
    return idx, weights / weights.sum(axis=0, keepdims=True)


class _Axis:
    def __init__(self, in_size: int, out_size: int, order: int):
        self.in_size, self.out_size, self.order = int(in_size), int(out_size), int(order)
        self.kernel = kernel(order)
        self.identity = self.in_size == self.out_size
        self.w: torch.Tensor | None = None
        self.taps: list[torch.Tensor] = []       # cubic: the 4 source indices per output
        self.tap_w: list[torch.Tensor] = []      # cubic: their weights
        if self.kernel == "cubic":
            idx, weights = cubic_axis_map(in_size, out_size)
            self.lo_np, self.hi_np = idx[0], idx[-1]
            self.taps = [torch.from_numpy(np.ascontiguousarray(i)) for i in idx]
            self.tap_w = [torch.from_numpy(w.astype(np.float32)) for w in weights]
            self.i0 = self.taps[0]
            return
        i0, i1, w = axis_map(in_size, out_size, 0 if self.kernel == "nearest" else 1)
        self.lo_np, self.hi_np = i0, i1
        self.i0, self.i1 = torch.from_numpy(i0), torch.from_numpy(i1)
        self.w = None if w is None else torch.from_numpy(w.astype(np.float32))

    def apply(self, t: torch.Tensor, dim: int, lo: int = 0, sel: slice = slice(None)) -> torch.Tensor:
        """The outputs ``sel`` along dim ``dim`` of ``t``, whose first index there is source index ``lo``.

        A few large operations (gathers by advanced indexing, one in-place ``lerp_`` or multiply-adds) rather
        than one per slice: each threaded torch operation pays a synchronisation, which dominates on a busy
        machine (and ``index_select`` along a leading dim is slow threaded)."""
        if self.identity:  # t holds exactly the source indices of the outputs asked for
            return t
        index: list[slice | torch.Tensor] = [slice(None)] * t.ndim
        shape = [1] * t.ndim
        shape[dim] = -1
        if self.kernel == "cubic":
            out: torch.Tensor | None = None
            for i, w in zip(self.taps, self.tap_w):
                index[dim] = (i[sel] - lo).to(t.device)
                term = t[tuple(index)].mul_(w[sel].to(device=t.device, dtype=t.dtype).view(shape))
                out = term if out is None else out.add_(term)
            assert out is not None
            return out
        index[dim] = (self.i0[sel] - lo).to(t.device)
        a = t[tuple(index)]
        if self.w is None:
            return a
        index[dim] = (self.i1[sel] - lo).to(t.device)
        return a.lerp_(t[tuple(index)], self.w[sel].to(device=t.device, dtype=t.dtype).view(shape))


class SlabResampler:
    """Resamples volumes of shape ``in_shape`` (the last three dims of a tensor; any leading dims, e.g. classes,
    are kept) to ``out_shape``, one slab of output slices along the first spatial axis at a time.

    ``orders``: the spline order per spatial axis (0 to 5; see :func:`kernel` for the torch kernel of each),
    in array order ``(z, y, x)``; shapes in voxels.
    """

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], orders: Sequence[int]):
        if not len(in_shape) == len(out_shape) == len(orders) == 3:
            raise ValueError(f"expected 3 spatial axes, got {in_shape} -> {out_shape} (orders {orders})")
        self.in_shape = tuple(int(s) for s in in_shape)
        self.out_shape = tuple(int(s) for s in out_shape)
        self.orders = tuple(int(o) for o in orders)
        self.axes = [_Axis(i, o, k) for i, o, k in zip(self.in_shape, self.out_shape, self.orders)]

    def source_range(self, start: int, stop: int) -> tuple[int, int]:
        """The source slices ``[lo, hi)`` along the first axis that output slices ``[start, stop)`` read."""
        ax = self.axes[0]
        if ax.identity:
            return start, stop
        return int(ax.lo_np[start:stop].min()), int(ax.hi_np[start:stop].max()) + 1

    def slab(self, volume: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Output slices ``[start, stop)`` (first spatial axis) of ``volume`` ``(..., *in_shape)`` resampled:
        ``(..., stop - start, *out_shape[1:])`` float32, on ``volume``'s device. Always a new tensor, never a
        view of ``volume`` (callers add into it in place; ``volume`` may be a read-only memory map)."""
        if tuple(volume.shape[-3:]) != self.in_shape:
            raise ValueError(f"volume of spatial shape {tuple(volume.shape[-3:])}, expected {self.in_shape}")
        if not 0 <= start < stop <= self.out_shape[0]:
            raise ValueError(f"slab [{start}, {stop}) outside [0, {self.out_shape[0]})")
        lo, hi = self.source_range(start, stop)
        t = volume.narrow(volume.ndim - 3, lo, hi - lo)
        if t.dtype != torch.float32:
            t = t.float()
        d = t.ndim
        t = self.axes[0].apply(t, d - 3, lo, slice(start, stop))
        # the in-plane axes: the one that shrinks first, so that the intermediate stays small
        order = (d - 2, d - 1) if self.out_shape[1] * self.in_shape[2] <= self.in_shape[1] * self.out_shape[2] \
            else (d - 1, d - 2)
        for dim in order:
            t = self.axes[dim - d + 3].apply(t, dim)
        if all(ax.identity for ax in self.axes) and volume.dtype == torch.float32:
            t = t.clone()  # no axis copied: t is still a view of volume
        return t

    def __call__(self, volume: torch.Tensor, slab: int | None = None) -> torch.Tensor:
        """The whole resampled volume (made slab by slab into one output tensor)."""
        out = torch.empty(tuple(volume.shape[:-3]) + self.out_shape, dtype=torch.float32, device=volume.device)
        step = slab or self.out_shape[0]
        for s in range(0, self.out_shape[0], step):
            e = min(s + step, self.out_shape[0])
            out[..., s:e, :, :] = self.slab(volume, s, e)
        return out


def probability_orders(spacing: Sequence[float], new_spacing: Sequence[float],
                       resampling: Resampling) -> tuple[int, int, int]:
    """The spline order per axis (array order ``(z, y, x)``) for probabilities resampled from ``spacing`` to
    ``new_spacing`` (mm), from the plan's ``resampling`` as preprocessing uses it for one-hot label maps:
    ``resampling.label_order`` everywhere, ``resampling.coarse_axis_order`` along the coarse axis of an
    anisotropic case (:func:`segpipe.preprocessing.resampling.coarse_axis` with
    ``resampling.anisotropy_threshold``)."""
    orders = [int(resampling.label_order)] * 3
    axis = coarse_axis(spacing, new_spacing, resampling.anisotropy_threshold)
    if axis is not None:
        orders[axis] = int(resampling.coarse_axis_order)
    for o in orders:
        kernel(o)  # a clear error for an order export cannot apply
    return orders[0], orders[1], orders[2]
