"""Fairness of an evaluation: every metric per group of cases, and the equity-scaled Dice (ES-Dice).

A grouping maps each evaluated case to its group, its value in one column of the attribute CSV
(:mod:`segpipe.dataset.attributes`: site, scanner, sex, age group, ...). Per group, the cases of that group are
summarized exactly as the whole evaluation is (:func:`segpipe.evaluation.summary.summarize`: means per class
with the number of cases each is over, empty / missed / spurious counts, foreground mean Dice).

ES-Dice (FairSeg, Tian et al., ICLR 2024; FairDomain, Tian et al., ECCV 2024), per class and for the foreground
mean::

    ES-Dice = Dice_all / (1 + sum over groups g of |Dice_g - Dice_all|)

- Dice_all and Dice_g are **means of per-case Dice** (as FairSeg computes them: the per-sample Dice averaged
  over the samples), over all evaluated cases and over the cases of group g: the ``dice`` means of
  :func:`summarize`, not a Dice of voxels pooled over cases. ES-Dice equals Dice_all when every group has the
  same Dice, and falls as the groups drift apart.
- NaN: a case where the class is absent from both prediction and reference has no Dice (NaN) and is left out of
  Dice_all and Dice_g, as it is of every mean. A group with no defined Dice for a class (the class absent from
  all its cases) has no Dice_g; it is left out of the sum and named in ``groups_without_dice``. When Dice_all is
  undefined, so are the gaps and ES-Dice (NaN, written as null in JSON).
- Foreground mean: Dice_all is the evaluation's ``foreground_mean_dice`` (the mean over classes of the mean Dice
  per class) and Dice_g each group's own ``foreground_mean_dice``.

The functions here work on per-case records and ``{case: group}`` maps only; reading the CSV is
:mod:`segpipe.dataset.attributes`'.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from segpipe.dataset.attributes import CaseAttributes, case_groups, read_attributes, unused_rows
from segpipe.dataset.model import DatasetSpec
from segpipe.errors import fail
from segpipe.evaluation.metrics import CaseRecord
from segpipe.evaluation.summary import SUMMARY_METRICS, SummaryMetric, summarize

log = logging.getLogger(__name__)

FOREGROUND_MEAN = "foreground_mean"  # the key of the foreground mean among the classes of ``es_dice``
NAN = float("nan")


def _defined(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def equity_scaled(value_all: float, group_values: Mapping[str, float]) -> dict[str, Any]:
    """ES-Dice (or any equity-scaled metric) from the value over all cases and the value per group:
    ``{"dice_all", "dice_groups", "sum_abs_gap", "es_dice", "groups_without_dice"}``. Groups whose value is
    undefined (NaN / None) are left out of the sum and listed in ``groups_without_dice``."""
    defined = {g: float(v) for g, v in group_values.items() if _defined(v)}
    missing = sorted(g for g in group_values if g not in defined)
    if not _defined(value_all):
        gap, es = NAN, NAN
    else:
        gap = float(sum(abs(v - value_all) for v in defined.values()))
        es = value_all / (1.0 + gap)
    return {"dice_all": value_all, "dice_groups": {g: group_values[g] for g in group_values},
            "sum_abs_gap": gap, "es_dice": es, "groups_without_dice": missing}


def split_by_group(per_case: Mapping[str, CaseRecord], case_group: Mapping[str, str]
                   ) -> dict[str, dict[str, CaseRecord]]:
    """The per-case records of each group (groups sorted by name, cases in ``per_case``'s order). Every case
    of ``per_case`` must have a group."""
    lost = [c for c in per_case if c not in case_group]
    if lost:
        raise ValueError(f"cases without a group: {lost[:10]}")
    out: dict[str, dict[str, CaseRecord]] = {g: {} for g in sorted(set(case_group[c] for c in per_case))}
    for cid, record in per_case.items():
        out[case_group[cid]][cid] = record
    return out


def group_fairness(per_case: Mapping[str, CaseRecord], case_group: Mapping[str, str], labels: Mapping[str, Any],
                   metrics: tuple[SummaryMetric, ...] = SUMMARY_METRICS,
                   overall: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One grouping of an evaluation: ``{"n_groups", "groups": {group: {"cases", **summarize(...)}},
    "es_dice": {class: equity_scaled(...), ..., "foreground_mean": equity_scaled(...)}}``.

    ``overall``: the evaluation's own :func:`summarize` of ``per_case`` (computed when not given)."""
    overall = overall if overall is not None else summarize(per_case, labels, metrics)
    groups = {g: {"cases": list(records), **summarize(records, labels, metrics)}
              for g, records in split_by_group(per_case, case_group).items()}
    es = {name: equity_scaled(m["dice"], {g: s["mean"][name]["dice"] for g, s in groups.items()})
          for name, m in overall["mean"].items()}
    es[FOREGROUND_MEAN] = equity_scaled(overall["foreground_mean_dice"],
                                        {g: s["foreground_mean_dice"] for g, s in groups.items()})
    return {"n_groups": len(groups), "groups": groups, "es_dice": es}


def fairness(per_case: Mapping[str, CaseRecord], groupings: Mapping[str, Mapping[str, str]],
             labels: Mapping[str, Any], metrics: tuple[SummaryMetric, ...] = SUMMARY_METRICS,
             overall: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """:func:`group_fairness` for each grouping column: ``{column: ...}``."""
    overall = overall if overall is not None else summarize(per_case, labels, metrics)
    return {column: group_fairness(per_case, case_group, labels, metrics, overall)
            for column, case_group in groupings.items()}


def load_groupings(attributes: Path | CaseAttributes | None, group_by: Sequence[str], cases: Sequence[str]
                   ) -> tuple[dict[str, dict[str, str]], dict[str, Any] | None]:
    """``({column: {case: group}}, description)`` for the evaluated ``cases`` from the attribute CSV (or the
    attributes onboarded into a workspace, :func:`workspace_attributes`), checked before any case is evaluated.
    ``({}, None)`` without ``attributes``. The description (for summary.json) names
    the CSV, its case column, the columns and the CSV rows that were not evaluated (ignored)."""
    if attributes is None and not group_by:
        return {}, None
    if attributes is None:
        raise fail("--group-by was given without --attributes", "add --attributes CSV (a case_id column and one "
                   "column per attribute, e.g. site or scanner)")
    if not group_by:
        raise fail("--attributes was given without --group-by", "add --group-by COLUMN (one or more of the CSV's "
                   "attribute columns)",
                   file=attributes.file if isinstance(attributes, CaseAttributes) else attributes)
    attrs = attributes if isinstance(attributes, CaseAttributes) else read_attributes(Path(attributes))
    groupings = case_groups(attrs, cases, group_by)
    ignored = unused_rows(attrs, cases)
    if ignored:
        log.info("%d row(s) of %s are not among the evaluated cases and are ignored", len(ignored), attrs.file)
    info = {"file": str(attrs.file), "case_column": attrs.case_column, "group_by": list(groupings),
            "n_rows_not_evaluated": len(ignored), "rows_not_evaluated": ignored[:50]}
    return groupings, info


def workspace_attributes(spec: DatasetSpec, dataset_json: Path) -> CaseAttributes | None:
    """The per-case attributes onboarded with ``onboard --attributes`` (stored in ``dataset_json``), as the
    CSV would give them; None when the data set has none."""
    if not spec.attribute_columns:
        return None
    return CaseAttributes(Path(dataset_json), "id", tuple(spec.attribute_columns), spec.attributes)


def _fmt(value: float | None) -> str:
    return f"{value:.4f}" if _defined(value) else "n/a"


def format_groups(groups: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Short text lines of summary.json's ``groups`` (for the CLI): per column, one line per group (cases,
    foreground mean Dice) and one with Dice_all, the sum of gaps and ES-Dice of the foreground mean."""
    lines = []
    for column, g in groups.items():
        fg = g["es_dice"][FOREGROUND_MEAN]
        lines.append(f"by {column} ({g['n_groups']} group(s)):")
        width = max(len(name) for name in g["groups"])
        for name, s in g["groups"].items():
            lines.append(f"  {name:{width}s}  {s['n_cases']:4d} cases  mean foreground Dice "
                         f"{_fmt(s['foreground_mean_dice'])}  (gap {_fmt(_gap(s['foreground_mean_dice'], fg))})")
        lines.append(f"  all: mean foreground Dice {_fmt(fg['dice_all'])}, sum of |gaps| {_fmt(fg['sum_abs_gap'])}, "
                     f"ES-Dice {_fmt(fg['es_dice'])}")
    return lines


def _gap(value: float | None, es: Mapping[str, Any]) -> float:
    return value - es["dice_all"] if _defined(value) and _defined(es["dice_all"]) else NAN
