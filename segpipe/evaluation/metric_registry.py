"""Registry of per-class metrics, keyed by name (plug-ins add theirs through ``segpipe.plugins``).

A metric is ``fn(pred: np.ndarray bool, ref: np.ndarray bool, spacing: tuple[float, ...]) -> float``: the
prediction's and the reference's masks of one class in one case (same shape, array axis order ``(z, y, x)`` /
``(y, x)``), the voxel spacing in mm in that order, and the value (NaN where undefined). :func:`class_metric`
computes a registered metric from label maps.

The in-tree entries are ``dice`` and ``hd95`` (the same values as :mod:`segpipe.evaluation.metrics`). The
evaluation summary (:func:`segpipe.evaluation.metrics.case_metrics`) does not read this registry yet: a registered
metric is available to code that asks for it by name, not added to ``summary.json``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from segpipe import plugins
from segpipe.dataset.model import LabelValue
from segpipe.dataset.regions import class_mask
from segpipe.evaluation.metrics import overlap_from_counts, surface_metrics

Metric = Callable[[np.ndarray, np.ndarray, Sequence[float]], float]

METRICS: dict[str, Metric] = {}


register_metric: plugins.Registrar[Metric] = plugins.Registrar("metric")
"""Decorator: ``@register_metric(name)`` makes ``fn`` the metric called ``name``."""


def get_metric(name: str) -> Metric:
    """The metric registered as ``name`` (a SegpipeError with a did-you-mean hint otherwise)."""
    metric: Metric = plugins.lookup("metric", name, "use one of: {names}, or install the plug-in that provides it")
    return metric


def class_metric(name: str, pred: np.ndarray, ref: np.ndarray, label: LabelValue, spacing: Sequence[float]) -> float:
    """Metric ``name`` of class ``label`` (a value, or a region: a tuple of values) between two label maps."""
    return float(get_metric(name)(class_mask(pred, label), class_mask(ref, label), tuple(spacing)))


@register_metric("dice")
def dice(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """Dice of two masks; NaN when both are empty."""
    tp = int(np.count_nonzero(pred & ref))
    return float(overlap_from_counts(tp, int(np.count_nonzero(pred)) - tp, int(np.count_nonzero(ref)) - tp)["dice"])


@register_metric("hd95")
def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """95th percentile Hausdorff distance (mm); NaN when either mask is empty."""
    return float(surface_metrics(pred.astype(np.uint8), ref.astype(np.uint8), 1, spacing)["hd95_mm"])
