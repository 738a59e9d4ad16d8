"""Predicting with a cascade stage: the previous stage first, its segmentation as the cascade's extra input.

As in training (:mod:`segpipe.preprocessing.previous_stage`), the previous stage's segmentation is taken in the
raw image's geometry (its probabilities exported to the raw grid, argmax) and moved onto the cascade's
preprocessed grid with the case's own crop and resampling, then given as one-hot channels after the image
channels. Arrays: ``(c, z, y, x)`` channels first, label maps ``(z, y, x)``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from segpipe.planning.plans import Configuration
from segpipe.preprocessing.cascade import one_hot_channels, previous_stage_on_grid


def cascade_input(pdata: npt.NDArray[np.float32], props: dict[str, Any], config: Configuration,
                  previous_label: npt.NDArray[np.integer[Any]], foreground: Sequence[int]) -> npt.NDArray[np.float32]:
    """The cascade network's input for one case: the preprocessed image ``pdata`` ``(c, Z, Y, X)`` and the
    previous stage's label map ``previous_label`` (raw shape) on the same grid as one-hot channels:
    ``(c + len(foreground), Z, Y, X)`` float32."""
    on_grid = previous_stage_on_grid(previous_label, props, config)
    return np.concatenate([pdata, one_hot_channels(on_grid, foreground)])
