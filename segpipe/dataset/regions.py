"""Region-based training (nnU-Net's convention): labels that name regions, i.e. lists of label-map values.

A BraTS-style ``dataset.json`` declares ``"labels": {"background": 0, "whole tumour": [1, 2, 3],
"tumour core": [2, 3], "enhancing": [3]}`` and ``"regions_class_order": [1, 2, 3]``. Regions may overlap
(nested regions usually do). The network then has one output per region with a sigmoid (not a softmax over
classes), trained with binary cross-entropy + soft Dice on the region masks; a voxel belongs to every region
whose probability exceeds 0.5. A label map is made back by painting the regions in dataset.json's order with
the values of ``regions_class_order`` (later regions overwrite earlier ones), so nested regions come back as the
original label values. Evaluation, selection and post-processing work on the regions: a region's mask in a
label map is ``np.isin(label_map, region)`` (:func:`class_mask`), in the prediction as in the reference.

Arrays: label maps are integer arrays of any spatial layout (e.g. ``(z, y, x)``); torch targets are
``(B, 1, *S)`` or ``(B, *S)`` integer label maps, region targets ``(B, R, *S)``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from segpipe.errors import Problem

REGION_THRESHOLD = 0.5  # a voxel belongs to a region whose sigmoid probability exceeds this


def class_mask(label_map: np.ndarray, value: int | Sequence[int]) -> np.ndarray:
    """Boolean mask of a class (``label_map == value``) or of a region (``np.isin(label_map, region)``)."""
    if isinstance(value, (tuple, list)):
        if len(value) == 1:
            return label_map == value[0]
        return np.isin(label_map, np.asarray(value, dtype=label_map.dtype))
    return label_map == value


def region_targets(labels: torch.Tensor, regions: Sequence[Sequence[int]]) -> torch.Tensor:
    """Region masks ``(B, R, *S)`` (float, 0/1) of an integer label map ``(B, *S)``: channel ``r`` is 1 where the
    label is one of ``regions[r]``'s values."""
    masks = []
    for region in regions:
        m = labels == int(region[0])
        for v in region[1:]:
            m |= labels == int(v)
        masks.append(m)
    return torch.stack(masks, dim=1).to(torch.float32)


def region_problems(labels: Mapping[str, Any], order: Any, where: str) -> list[Problem]:
    """What is wrong with a region declaration (``labels`` with list values and ``regions_class_order``), in
    nnU-Net's terms; empty when it is usable. ``where``: the file to name (dataset.json)."""
    fix_order = ('add "regions_class_order": one label value per foreground region, in the order of "labels", '
                 'e.g. [1, 2, 3] for BraTS (later regions are painted over earlier ones)')
    problems: list[Problem] = []
    foreground = [(n, v) for n, v in labels.items() if n != "ignore" and v != 0]
    for name, v in foreground:
        values = v if isinstance(v, (list, tuple)) else [v]
        if not values or any(isinstance(x, bool) or not isinstance(x, int) or x <= 0 for x in values):
            problems.append(Problem(f"region '{name}' is {v!r}; a region is a non-empty list of positive integer "
                                    "label values", 'write e.g. "whole": [1, 2]', where))
    bg = labels.get("background", 0)
    if isinstance(bg, (list, tuple)) or bg != 0:
        problems.append(Problem(f"background is {bg!r}; with regions it must be the value 0",
                                '"background": 0', where))
    if order is None:
        problems.append(Problem("labels declare regions but dataset.json has no 'regions_class_order'", fix_order,
                                where))
    elif (not isinstance(order, list) or len(order) != len(foreground)
          or any(isinstance(x, bool) or not isinstance(x, int) or x <= 0 for x in order)):
        problems.append(Problem(f"'regions_class_order' {order!r} must list one positive integer per foreground "
                                f"region ({len(foreground)}: {[n for n, _ in foreground]})", fix_order, where))
    return problems
