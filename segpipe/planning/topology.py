"""U-Net topology from spacing and patch size: pooling per axis, kernel sizes, and the divisible patch.

All per-axis lists are in array axis order. ``strides[0]`` is all ones (the first stage does not pool);
``kernel_sizes`` has one entry per stage (the bottleneck is always all 3s).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segpipe.planning import constants as C


@dataclass
class Topology:
    strides: list[list[int]]
    kernel_sizes: list[list[int]]
    patch_size: list[int]
    pools_per_axis: list[int]

    @property
    def n_stages(self) -> int:
        return len(self.strides)

    @property
    def divisor(self) -> list[int]:
        """What every patch axis must be divisible by (the total stride per axis)."""
        return [2 ** p for p in self.pools_per_axis]


def pad_to_multiple(shape, divisor) -> list[int]:
    """Round each axis of ``shape`` up to the next multiple of ``divisor`` (unchanged when already one)."""
    out = []
    for s, d in zip(shape, divisor):
        s = float(s)
        out.append(int(np.ceil(s / d) * d) if s % d else int(s))
    return out


def derive_topology(spacing, patch_size, min_edge: int = C.FEATUREMAP_MIN_EDGE,
                    max_pools: int = C.MAX_POOLS_PER_AXIS) -> Topology:
    """Pool an axis while its feature map edge stays >= ``min_edge`` (a lone pooled axis needs >= 3x) and
    its current spacing is within ``POOL_SPACING_RATIO`` of the finest poolable axis; kernels stay 1 on an
    axis until its spacing is within that ratio of the finest. The patch is padded to the total stride."""
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
    return Topology(strides=strides, kernel_sizes=kernels, patch_size=patch, pools_per_axis=pools)


def features_per_stage(n_stages: int, dim: int) -> list[int]:
    cap = C.MAX_FEATURES_3D if dim == 3 else C.MAX_FEATURES_2D
    return [min(cap, C.BASE_FEATURES * 2 ** i) for i in range(n_stages)]
