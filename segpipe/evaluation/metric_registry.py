"""Registry of per-class metrics, keyed by name (plug-ins add theirs through ``segpipe.plugins``).

A metric is ``fn(pred: np.ndarray bool, ref: np.ndarray bool, spacing: tuple[float, ...]) -> float``: the
prediction's and the reference's masks of one class in one case (same shape, array axis order ``(z, y, x)`` /
``(y, x)``), the voxel spacing in mm in that order, and the value (NaN where undefined). :func:`class_metric`
computes a registered metric from label maps.

The in-tree entries are ``dice`` and ``hd95`` (the same values as :mod:`segpipe.evaluation.metrics`, whose
per-case record holds them as ``dice`` and ``hd95_mm``: :data:`BUILT_IN`).

``segpipe evaluate`` adds registered metrics to every case's record and to the means of ``summary.json``
(:func:`add_registered_metrics`, :func:`chosen_metrics`): by default every registered metric that is cheap, or
the ones named with ``--metrics a,b``. A metric is cheap unless its function says otherwise with the attribute
``expensive = True`` (:func:`expensive`; the in-tree ``hd95`` is). A metric's values are stored under its name,
except the in-tree ones, which the built-in record already holds under their own keys (not computed twice; with
``--no-surface``, ``--metrics hd95`` computes ``hd95_mm`` alone).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

import numpy as np

from segpipe import plugins
from segpipe.dataset.model import LabelValue, output_classes
from segpipe.dataset.regions import class_mask
from segpipe.errors import fail
from segpipe.evaluation.metrics import CaseRecord, blank_unannotated, overlap_from_counts, surface_metrics

Metric = Callable[[np.ndarray, np.ndarray, Sequence[float]], float]

METRICS: dict[str, Metric] = {}


register_metric: plugins.Registrar[Metric] = plugins.Registrar("metric")
"""Decorator: ``@register_metric(name)`` makes ``fn`` the metric called ``name``."""

BUILT_IN: dict[str, str] = {"dice": "dice", "hd95": "hd95_mm"}
"""In-tree metrics the built-in per-case record (:func:`segpipe.evaluation.metrics.case_metrics`) holds, and under
which key."""

RESERVED_KEYS = frozenset({"dice", "iou", "precision", "recall", "tp", "fp", "fn", "volume_pred_mm3",
                           "volume_ref_mm3", "empty_reference_and_prediction", "empty_prediction", "empty_reference",
                           "hd95_mm", "surface_dice", "surface_tolerance_mm"})
"""The built-in record's keys: a registered metric named like one (other than through :data:`BUILT_IN`) would
overwrite it, and is refused."""

F = TypeVar("F", bound=Callable[..., float])


def expensive(fn: F) -> F:
    """Mark metric ``fn`` as expensive (distances, surfaces): ``segpipe evaluate`` computes it only when it is
    named with ``--metrics``. Put it under ``@register_metric(name)``."""
    fn.expensive = True  # type: ignore[attr-defined]
    return fn


def is_expensive(fn: Metric) -> bool:
    return bool(getattr(fn, "expensive", False))


def metric_key(name: str) -> str:
    """The key of metric ``name`` in a case's per-class record (and in the summary's means)."""
    return BUILT_IN.get(name, name)


def chosen_metrics(names: Iterable[str] | None = None) -> list[str]:
    """The registered metrics an evaluation adds: ``names`` (each looked up: an unknown one is an error with a
    did-you-mean hint), or by default every registered metric that is not :func:`expensive`, sorted."""
    plugins.load_plugins()
    if names is None:
        return sorted(n for n, fn in METRICS.items() if not is_expensive(fn))
    chosen = list(dict.fromkeys(names))
    for name in chosen:
        get_metric(name)
        if name not in BUILT_IN and name in RESERVED_KEYS:
            raise fail(f"metric '{name}' is named like a value segpipe's evaluation computes itself",
                       "register the metric under another name")
    return chosen


def add_registered_metrics(record: CaseRecord, pred: np.ndarray, ref: np.ndarray,
                           labels: Mapping[str, LabelValue], spacing: Sequence[float], names: Sequence[str]
                           ) -> CaseRecord:
    """Add metrics ``names`` (registered) of every foreground class to one case's ``record`` (in place, and
    returned), compared over the annotated voxels as :func:`segpipe.evaluation.metrics.case_metrics` compares
    them. An in-tree metric whose key the record already has is not computed again."""
    pred = blank_unannotated(pred, ref, labels)
    fns = {name: get_metric(name) for name in names}
    for cls, value in output_classes(labels).items():
        if value == 0:
            continue
        row = record.setdefault(cls, {})
        p, r = class_mask(pred, value), class_mask(ref, value)
        for name, fn in fns.items():
            key = metric_key(name)
            if key in row and name in BUILT_IN:
                continue
            row[key] = float(fn(p, r, tuple(float(s) for s in spacing)))  # type: ignore[literal-required]
    return record


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
@expensive
def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> float:
    """95th percentile Hausdorff distance (mm); NaN when either mask is empty."""
    return float(surface_metrics(pred.astype(np.uint8), ref.astype(np.uint8), 1, spacing)["hd95_mm"])
