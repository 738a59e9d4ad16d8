"""Resampling of probability maps in torch, one output slab at a time (the export of predictions).

It computes what :func:`segpipe.preprocessing.resampling.resample_image` computes with scipy's ``zoom`` (order 1,
``grid_mode``, ``mode="nearest"``; on anisotropic cases the coarse axis with order 0), but axis by axis (linear
interpolation and nearest neighbour are separable) and for a range of output slices along the first axis at a
time, so that no full-size intermediate is ever made. Source positions, neighbour indices and weights are
computed in float64 exactly as scipy computes them (``(o + 0.5) * in / out - 0.5``, clamped to the array), so
nearest-neighbour choices are the same; values differ from scipy's by float32 rounding only.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from segpipe.planning import constants as C
from segpipe.preprocessing.resampling import coarse_axis


def axis_map(in_size: int, out_size: int, order: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """For each output index along one axis: the two source indices and the weight of the second (order 1),
    or the one nearest source index (order 0; weight None), as scipy's ``zoom`` with ``grid_mode=True`` and
    ``mode="nearest"`` has them."""
    in_size, out_size = int(in_size), int(out_size)
    if in_size < 1 or out_size < 1:
        raise ValueError(f"cannot resample an axis of {in_size} voxels to {out_size}")
    if order not in (0, 1):
        raise ValueError(f"probabilities are resampled with order 0 or 1, not {order}")
    zoom = in_size / out_size
    cc = (np.arange(out_size, dtype=np.float64) + 0.5) * zoom - 0.5
    np.clip(cc, 0.0, in_size - 1, out=cc)
    if order == 0:
        i0 = np.floor(cc + 0.5).astype(np.int64)
        np.minimum(i0, in_size - 1, out=i0)
        return i0, i0, None
    i0 = np.floor(cc).astype(np.int64)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, cc - i0


class _Axis:
    def __init__(self, in_size: int, out_size: int, order: int):
        self.in_size, self.out_size, self.order = int(in_size), int(out_size), int(order)
        self.identity = self.in_size == self.out_size
        i0, i1, w = axis_map(in_size, out_size, order)
        self.i0_np, self.i1_np = i0, i1
        self.i0, self.i1 = torch.from_numpy(i0), torch.from_numpy(i1)
        self.w = None if w is None else torch.from_numpy(w.astype(np.float32))

    def apply(self, t: torch.Tensor, dim: int, lo: int = 0, sel: slice = slice(None)) -> torch.Tensor:
        """The outputs ``sel`` along dim ``dim`` of ``t``, whose first index there is source index ``lo``.

        A few large operations (two gathers by advanced indexing and one in-place ``lerp_``) rather than one
        per slice: each threaded torch operation pays a synchronisation, which dominates on a busy machine
        (and ``index_select`` along a leading dim is slow threaded)."""
        if self.identity:  # t holds exactly the source indices of the outputs asked for
            return t
        index: list[slice | torch.Tensor] = [slice(None)] * t.ndim
        index[dim] = (self.i0[sel] - lo).to(t.device)
        a = t[tuple(index)]
        if self.w is None:
            return a
        index[dim] = (self.i1[sel] - lo).to(t.device)
        shape = [1] * t.ndim
        shape[dim] = -1
        return a.lerp_(t[tuple(index)], self.w[sel].to(device=t.device, dtype=t.dtype).view(shape))


class SlabResampler:
    """Resamples volumes of shape ``in_shape`` (the last three dims of a tensor; any leading dims, e.g. classes,
    are kept) to ``out_shape``, one slab of output slices along the first spatial axis at a time.

    ``orders``: the interpolation order (0 or 1) per spatial axis.
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
        return int(ax.i0_np[start:stop].min()), int(ax.i1_np[start:stop].max()) + 1

    def slab(self, volume: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Output slices ``[start, stop)`` (first spatial axis) of ``volume`` ``(..., *in_shape)`` resampled:
        ``(..., stop - start, *out_shape[1:])`` float32, on ``volume``'s device."""
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
        return t

    def __call__(self, volume: torch.Tensor, slab: int | None = None) -> torch.Tensor:
        """The whole resampled volume (made slab by slab into one output tensor)."""
        out = torch.empty(tuple(volume.shape[:-3]) + self.out_shape, dtype=torch.float32, device=volume.device)
        step = slab or self.out_shape[0]
        for s in range(0, self.out_shape[0], step):
            e = min(s + step, self.out_shape[0])
            out[..., s:e, :, :] = self.slab(volume, s, e)
        return out


def probability_orders(spacing: Sequence[float], new_spacing: Sequence[float], order: int = 1,
                       anisotropy_threshold: float = C.ANISOTROPY_THRESHOLD,
                       axis_order: int = C.COARSE_AXIS_RESAMPLING_ORDER) -> tuple[int, int, int]:
    """The order per axis for probabilities resampled from ``spacing`` to ``new_spacing`` (mm, (z, y, x)), as
    :func:`segpipe.preprocessing.resampling.resample_image` uses them: ``order`` everywhere, ``axis_order``
    along the coarse axis of an anisotropic case."""
    orders = [int(order)] * 3
    axis = coarse_axis(spacing, new_spacing, anisotropy_threshold)
    if axis is not None:
        orders[axis] = int(axis_order)
    return orders[0], orders[1], orders[2]
