"""The cascade's extra input: a previous stage's segmentation on this configuration's preprocessed grid.

nnU-Net's cascade trains ``3d_cascade_fullres`` on 3d_fullres's data with 3d_lowres's segmentation as one-hot
input channels. The segmentation comes in the raw image's geometry (an exported label map: cross-validation
predictions in training, the previous stage's prediction at inference); it is moved onto the case's preprocessed
grid exactly as the case's own label was (crop to the nonzero box, resample the one-hot maps with the plan's
label orders), and turned into one channel per foreground label.

Arrays: label maps ``(z, y, x)`` in voxels (array axis order); the result of :func:`one_hot_channels` is
``(n_foreground, z, y, x)`` float32, channels in the order of the label values.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from segpipe.dataset.model import output_classes
from segpipe.planning.plans import Configuration
from segpipe.preprocessing.cropping import crop
from segpipe.preprocessing.resampling import resample_label


def previous_stage_on_grid(label_map: npt.NDArray[np.integer[Any]], props: Mapping[str, Any],
                           config: Configuration) -> npt.NDArray[np.int8]:
    """``label_map`` (the raw image's spatial shape ``(z, y, x)``) on the preprocessed grid of the case whose
    properties are ``props`` (``crop_bbox``, ``spacing``, ``target_spacing``, ``shape_after_resampling``):
    ``(z, y, x)`` int8, values as in ``label_map`` (voxels outside the crop do not exist there)."""
    shape_before = tuple(int(s) for s in props["shape_before_crop"])
    lab = np.asarray(label_map)
    if lab.ndim == 2:  # a 2D case is (1, y, x) internally
        lab = lab[None]
    if lab.shape != shape_before:
        raise ValueError(f"previous stage label map {lab.shape} does not match the case's raw shape {shape_before}")
    cropped = crop(lab, props["crop_bbox"])
    rs = config.resampling
    out = resample_label(cropped.astype(np.int16), props["spacing"], props["target_spacing"],
                         shape=props["shape_after_resampling"], order=rs.label_order,
                         anisotropy_threshold=rs.anisotropy_threshold, axis_order=rs.coarse_axis_order)
    return np.ascontiguousarray(out, dtype=np.int8)


def one_hot_channels(seg: npt.NDArray[np.integer[Any]], foreground: Sequence[int]) -> npt.NDArray[np.float32]:
    """One float32 channel per foreground label value (1 where ``seg`` has it): ``(len(foreground), *seg.shape)``.
    Values outside ``foreground`` (background, -1 padding) are 0 in every channel."""
    out = np.zeros((len(foreground), *seg.shape), dtype=np.float32)
    for k, v in enumerate(foreground):
        out[k][seg == v] = 1.0
    return out


def foreground_values(labels: Mapping[str, Any], region_order: Sequence[int] | None = None) -> list[int]:
    """The label values that get a cascade channel: every output class but background (0), ascending (an
    ``ignore`` label is never predicted, so it gets none); with regions, the values their label maps are painted
    with (``region_order``, dataset.json's ``regions_class_order``)."""
    if region_order is not None:
        return sorted({int(v) for v in region_order if v != 0})
    return sorted(v for v in output_classes(labels).values() if isinstance(v, int) and v != 0)
