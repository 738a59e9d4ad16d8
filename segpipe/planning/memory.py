"""Memory model of a U-Net: the number of conv output activations for one patch ("feature map voxels").

Counts, for the plain U-Net: every encoder conv's output (the first conv of a stage carries the stride), every
decoder conv's and transposed conv's output at the skip resolution, and the full-resolution segmentation
output (every resolution's with ``deep_supervision``). Norms, nonlinearities and concatenations are not
counted. Compared against a reference measured on a GPU of known size; see
:meth:`segpipe.planning.presets.Preset.reference`.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segpipe.planning import constants as C


def feature_map_voxels(patch_size: Sequence[float], strides: Sequence[Sequence[int]], features: Sequence[int],
                       n_classes: int, convs_encoder: int = C.CONVS_PER_STAGE_ENCODER,
                       convs_decoder: int = C.CONVS_PER_STAGE_DECODER, deep_supervision: bool = False) -> int:
    sizes: list[list[int]] = []  # spatial size of each stage's output
    size = [int(s) for s in patch_size]
    total = 0
    for feat, stride in zip(features, strides):
        size = [s // st for s, st in zip(size, stride)]
        sizes.append(size)
        total += convs_encoder * feat * int(np.prod(size))
    n_dec = len(features) - 1
    for s in range(n_dec):  # s = 0 is the decoder stage right above the bottleneck
        level = n_dec - 1 - s
        vox = int(np.prod(sizes[level]))
        total += (convs_decoder + 1) * features[level] * vox
        if deep_supervision or level == 0:
            total += n_classes * vox
    return total
