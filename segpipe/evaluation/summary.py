"""The one summary of per-case metric records over cases, used by the training's final validation
(``validation/summary.json``), ``segpipe evaluate`` (``summary.json``) and ``segpipe select`` (the Dice
tables of ``selection.json``).

Input: ``{case id: CaseRecord}`` (:mod:`segpipe.evaluation.metrics`: ``{class name: {metric: value}}``; counts in
voxels, volumes in mm^3, HD95 in mm), output per foreground class:

- the mean of each metric over the cases where it is defined (NaN / None values are left out), and beside it
  ``n_cases_per_metric[metric]``: how many cases that mean is over (0 and a NaN mean when none);
- ``n_cases``: cases whose record has the class; ``n``: the number of cases in the mean Dice (the same as
  ``n_cases_per_metric["dice"]``);
- ``n_empty_both``: cases where neither the reference nor the prediction has the class. They have no Dice,
  HD95 or surface Dice and are left out of every mean;
- ``n_missed``: the reference has the class, the prediction is empty; ``n_spurious``: the prediction has the
  class, the reference is empty. Such a case counts in the mean Dice (0) and the mean surface Dice (0), but its
  HD95 is undefined (no surface to measure to), so the mean HD95 is over the cases where both have the class,
  and the missed / spurious cases are counted here instead of silently dropping out: with surface metrics,
  ``n_cases == n_cases_per_metric["hd95_mm"] + n_missed + n_spurious + n_empty_both``. Read a mean HD95
  together with ``n_missed``: a model that misses a structure in half the cases can have a small mean HD95.

Top level: ``foreground_mean_dice`` (mean over the classes whose mean Dice is defined; how many:
``foreground_mean_dice_n_classes``) and ``n_cases`` (cases summarized).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from segpipe.dataset.model import output_classes
from segpipe.evaluation.metrics import CaseRecord, ClassMetrics

SummaryMetric = Literal["dice", "iou", "precision", "recall", "hd95_mm", "surface_dice"]  # averaged metrics

OVERLAP_METRICS: tuple[SummaryMetric, ...] = ("dice", "iou", "precision", "recall")
SUMMARY_METRICS: tuple[SummaryMetric, ...] = (*OVERLAP_METRICS, "hd95_mm", "surface_dice")


def _defined(value: object) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def summarize_class(rows: list[ClassMetrics], metrics: tuple[SummaryMetric, ...] = SUMMARY_METRICS) -> dict:
    """Means of ``metrics`` over the records of one class (one per case, in case order), with the number of
    cases each mean is over and the empty / missed / spurious counts (see the module docstring)."""
    out: dict = {}
    counted: dict[str, int] = {}
    for key in metrics:
        vals = [r[key] for r in rows if _defined(r.get(key))]
        out[key] = _mean(vals)
        counted[key] = len(vals)
    out["n_cases"] = len(rows)
    out["n_cases_per_metric"] = counted
    out["n"] = counted.get("dice", 0)
    out["n_empty_both"] = sum(bool(r.get("empty_reference_and_prediction")) for r in rows)
    out["n_missed"] = sum(bool(r.get("empty_prediction")) and not r.get("empty_reference") for r in rows)
    out["n_spurious"] = sum(bool(r.get("empty_reference")) and not r.get("empty_prediction") for r in rows)
    return out


def summarize(per_case: Mapping[str, CaseRecord], labels: Mapping[str, Any],
              metrics: tuple[SummaryMetric, ...] = SUMMARY_METRICS) -> dict:
    """``{"mean": {class: summarize_class(...)}, "foreground_mean_dice", "foreground_mean_dice_n_classes",
    "n_cases"}`` over the cases of ``per_case`` (in its order) for every foreground class (value != 0) of
    ``labels``. ``metrics``: the metrics to average (surface ones only where they were computed; ``segpipe
    evaluate`` adds the keys of the registered metrics it computed, :mod:`segpipe.evaluation.metric_registry`)."""
    mean = {name: summarize_class([c[name] for c in per_case.values() if name in c], metrics)
            for name, value in output_classes(labels).items() if value != 0}
    dices = [m["dice"] for m in mean.values() if _defined(m.get("dice"))]
    return {"mean": mean, "foreground_mean_dice": _mean(dices), "foreground_mean_dice_n_classes": len(dices),
            "n_cases": len(per_case)}


def mean_dice(per_case: Mapping[str, CaseRecord], labels: Mapping[str, Any]) -> dict[str, float]:
    """Mean Dice per foreground class (the ``dice`` of :func:`summarize`): ``{class: mean Dice}``."""
    return {name: m["dice"] for name, m in summarize(per_case, labels, ("dice",))["mean"].items()}
