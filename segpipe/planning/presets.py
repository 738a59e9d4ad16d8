"""Planner presets: which memory target, reference, network and batch cap the planner uses.

``default`` is nnU-Net's default planner (plain U-Net, 2 convs per encoder stage, 8 GB, a batch covers at most 5%
of the data set's voxels). ``resenc-m``, ``resenc-l`` and ``resenc-xl`` are nnU-Net 2.8.1's residual-encoder
planners (``nnUNetPlannerResEncM/L/XL``): a residual encoder with 1, 3, 4, 6, 6, ... basic blocks per stage and
one conv per decoder stage, memory targets of 8, 24 and 40 GB with their own reference activation counts, and no
5% batch cap. The numbers are nnU-Net's (read from its planners; ``tests/fixtures/nnunet_resenc_plans.json``
holds the plans nnU-Net 2.8.1 made on real data, which segpipe's must equal). ``segpipe plan --preset NAME``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from segpipe.errors import fail
from segpipe.planning import constants as C
from segpipe.planning.memory import feature_map_voxels


@dataclass(frozen=True)
class Preset:
    """``reference_3d``/``reference_2d``: conv output activations of one patch that fit ``reference_gb`` at the
    reference batch sizes (2 in 3D, 12 in 2D); ``blocks_encoder``: residual blocks per encoder stage (None: the
    plain U-Net's ``CONVS_PER_STAGE_ENCODER`` convs); ``max_dataset_covered``: the batch cap (1: none)."""

    name: str
    memory_gb: float
    reference_3d: float
    reference_2d: float
    reference_gb: float
    network: str
    blocks_encoder: tuple[int, ...] | None
    convs_decoder: int
    max_dataset_covered: float

    def reference(self, dim: int, memory_gb: float) -> tuple[float, int]:
        """(activations that fit ``memory_gb`` at the reference batch size, that batch size)."""
        ref = self.reference_3d if dim == 3 else self.reference_2d
        return ref * memory_gb / self.reference_gb, (C.REFERENCE_BATCH_3D if dim == 3 else C.REFERENCE_BATCH_2D)

    def encoder_convs(self, n_stages: int) -> tuple[int, ...]:
        if self.blocks_encoder is None:
            return (C.CONVS_PER_STAGE_ENCODER,) * n_stages
        return self.blocks_encoder[:n_stages]

    def activations(self, patch: Sequence[int], strides: Sequence[Sequence[int]], features: Sequence[int],
                    n_classes: int) -> int:
        """Conv output activations of the network for one patch (the planner's memory model)."""
        if self.blocks_encoder is None:
            return feature_map_voxels(patch, strides, features, n_classes, convs_decoder=self.convs_decoder)
        return residual_feature_map_voxels(patch, strides, features, n_classes, self.blocks_encoder,
                                           self.convs_decoder)


RESENC_BLOCKS = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)

PRESETS: dict[str, Preset] = {
    "default": Preset("default", C.DEFAULT_MEMORY_GB, C.REFERENCE_FEATURE_MAP_VOXELS_3D,
                      C.REFERENCE_FEATURE_MAP_VOXELS_2D, C.REFERENCE_MEMORY_GB, "plain", None,
                      C.CONVS_PER_STAGE_DECODER, C.MAX_DATASET_COVERED),
    "resenc-m": Preset("resenc-m", 8.0, 680_000_000, 135_000_000, 8.0, "residual", RESENC_BLOCKS, 1, 1.0),
    "resenc-l": Preset("resenc-l", 24.0, 2_100_000_000, 380_000_000, 24.0, "residual", RESENC_BLOCKS, 1, 1.0),
    "resenc-xl": Preset("resenc-xl", 40.0, 3_600_000_000, 560_000_000, 40.0, "residual", RESENC_BLOCKS, 1, 1.0),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise fail(f"unknown planner preset '{name}'", f"use one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def residual_feature_map_voxels(patch_size: Sequence[float], strides: Sequence[Sequence[int]],
                                features: Sequence[int], n_classes: int, blocks: Sequence[int],
                                convs_decoder: int) -> int:
    """Activations of the residual-encoder U-Net (:mod:`segpipe.networks.residual`) for one patch: the stem's
    output, two convs per basic block plus the 1x1 skip conv of a block that strides or changes the channels,
    and the plain decoder (``convs_decoder`` convs and a transposed conv per stage, the segmentation output)."""
    size = [int(s) for s in patch_size]
    total = int(features[0]) * int(np.prod(size))  # the stem
    in_channels = int(features[0])
    for feat, stride, n_blocks in zip(features, strides, blocks):
        size = [s // st for s, st in zip(size, stride)]
        vox = int(np.prod(size))
        skip = in_channels != feat or any(st != 1 for st in stride)
        total += (2 * n_blocks + (1 if skip else 0)) * feat * vox
        in_channels = feat
    decoder_only = feature_map_voxels(patch_size, strides, features, n_classes, convs_encoder=0,
                                      convs_decoder=convs_decoder)
    return total + decoder_only
