"""U-Net topology from spacing and patch size: pooling per axis, kernel sizes, and the divisible patch.

All per-axis values are in array axis order, sizes in voxels, spacing in mm. ``strides[0]`` is all ones (the
first stage does not pool); ``kernel_sizes`` has one entry per stage (the bottleneck is always all 3s). The
result is the plans contract's one :class:`~segpipe.planning.plans.Topology` type.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segpipe.axes import ShapeVox
from segpipe.planning import constants as C
from segpipe.planning.plans import Topology


def pad_to_multiple(shape: Sequence[float], divisor: Sequence[int]) -> list[int]:
    """Round each axis of ``shape`` up to the next multiple of ``divisor`` (unchanged when already one)."""
    out: list[int] = []
    for size, d in zip(shape, divisor):
        s = float(size)
        out.append(int(np.ceil(s / d) * d) if s % d else int(s))
    return out


def derive_topology(spacing: Sequence[float], patch_size: Sequence[float], min_edge: int = C.FEATUREMAP_MIN_EDGE,
                    max_pools: int = C.MAX_POOLS_PER_AXIS) -> tuple[Topology, ShapeVox]:
    """The topology for ``patch_size`` (voxels) at ``spacing`` (mm), and the patch padded to its total stride.

    Pool an axis while its feature map edge stays >= ``min_edge`` (a lone pooled axis needs >= 3x) and
    its current spacing is within ``POOL_SPACING_RATIO`` of the finest poolable axis; kernels stay 1 on an
    axis until its spacing is within that ratio of the finest. Features per stage follow
    :func:`features_per_stage`; convs per stage are ``CONVS_PER_STAGE_ENCODER`` / ``_DECODER``."""
    dim = len(spacing)
    cur_sp = [float(s) for s in spacing]
    cur_sz = [float(s) for s in patch_size]
    strides = [[1] * dim]
    kernels: list[list[int]] = []
    pools = [0] * dim
    kernel = [1] * dim
    while True:
        axes = [i for i in range(dim) if cur_sz[i] >= 2 * min_edge]
        if not axes:
            break
        finest = min(cur_sp[i] for i in axes)
        axes = [i for i in axes if cur_sp[i] / finest < C.POOL_SPACING_RATIO and pools[i] < max_pools]
        if len(axes) == 1 and cur_sz[axes[0]] < 3 * min_edge:
            break
        if not axes:
            break
        for d in range(dim):
            if kernel[d] != 3 and cur_sp[d] / min(cur_sp) < C.POOL_SPACING_RATIO:
                kernel[d] = 3
        stride = [1] * dim
        for a in axes:
            stride[a] = 2
            pools[a] += 1
            cur_sp[a] *= 2
            cur_sz[a] = float(np.ceil(cur_sz[a] / 2))
        strides.append(stride)
        kernels.append(list(kernel))
    kernels.append([3] * dim)
    patch = pad_to_multiple(patch_size, [2 ** p for p in pools])
    n = len(strides)
    topo = Topology(n_stages=n, features_per_stage=tuple(features_per_stage(n, dim)),
                    kernel_sizes=tuple(tuple(k) for k in kernels), strides=tuple(tuple(st) for st in strides),
                    n_conv_per_stage=(C.CONVS_PER_STAGE_ENCODER,) * n,
                    n_conv_per_stage_decoder=(C.CONVS_PER_STAGE_DECODER,) * (n - 1))
    return topo, tuple(patch)


def features_per_stage(n_stages: int, dim: int) -> list[int]:
    cap = C.MAX_FEATURES_3D if dim == 3 else C.MAX_FEATURES_2D
    return [min(cap, C.BASE_FEATURES * 2 ** i) for i in range(n_stages)]
