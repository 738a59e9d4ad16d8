"""Panels for the artifacts of ``predict --uncertainty`` and ``evaluate --attributes --group-by``: sections that
appear only when such an artifact exists.

Both stages write into the user's folders, never into the workspace, and record each run in the workspace's
``records/`` (``predict_<hash>.json``, ``evaluate_<hash>.json``, with the output folder in ``info.output``). A
panel follows those records to the artifacts:

- **Uncertainty**: ``uncertainty.json`` (kind ``uncertainty``) in a recorded predict output folder: the per-case
  score (mean predictive entropy over the predicted structure, nats) and the mutual information, most uncertain
  cases first (:mod:`segpipe.inference.uncertainty`).
- **Fairness per group**: the ``groups`` entry of ``summary.json`` in a recorded evaluate output folder: per
  grouping column, each group's number of cases and mean foreground Dice, and the equity-scaled Dice per class
  (:mod:`segpipe.evaluation.fairness`).

The newest record first; at most :data:`MAX_RUNS` runs each. Each panel is a function ``(ReportData) ->
Section | None`` in :data:`PANELS`; it returns None when no such artifact exists, so the report has no empty
sections. :func:`panel_files` lists the files a report depends on through them.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from segpipe.errors import SegpipeError
from segpipe.io.jsonio import read_json
from segpipe.report.collect import ReportData
from segpipe.report.html import Section, paragraph, table, warning
from segpipe.workspace import Workspace

log = logging.getLogger(__name__)

UNCERTAINTY_FILE = "uncertainty.json"  # in a predict output folder (predict --uncertainty)
EVALUATION_FILE = "summary.json"        # in an evaluate output folder
MAX_RUNS = 3
MAX_ROWS = 200


def recorded_outputs(ws: Workspace, kind: str) -> list[Path]:
    """The output folders of the recorded ``kind`` runs ("predict", "evaluate"), newest record first."""
    folder = ws.records
    if not folder.is_dir():
        return []
    out = []
    for rec in sorted(folder.glob(f"{kind}_*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            output = (read_json(rec).get("info") or {}).get("output")
        except (SegpipeError, OSError, AttributeError):
            continue
        if isinstance(output, str) and output:
            p = Path(output)
            out.append(p if p.is_absolute() else ws.dir / p)
    return out


def _artifacts(ws: Workspace, kind: str, name: str) -> list[Path]:
    found = [d / name for d in recorded_outputs(ws, kind) if (d / name).is_file()]
    return found[:MAX_RUNS]


def panel_files(ws: Workspace) -> list[Path]:
    """Every artifact a panel shows (what the report depends on besides the stages' own artifacts)."""
    return _artifacts(ws, "predict", UNCERTAINTY_FILE) + _artifacts(ws, "evaluate", EVALUATION_FILE)


def _num(v: Any) -> Any:
    return round(v, 4) if isinstance(v, float) and math.isfinite(v) else v


def _uncertainty_rows(doc: dict) -> list[tuple]:
    cases = doc.get("cases") or {}
    rows = [(cid, _num(c.get("score")), _num(c.get("mean_mutual_information_region")),
             _num(c.get("mean_entropy_image")), c.get("foreground_voxels"))
            for cid, c in cases.items() if isinstance(c, dict)]
    return sorted(rows, key=lambda r: -(r[1] if isinstance(r[1], (int, float)) else -1.0))


def uncertainty_panel(data: ReportData) -> Section | None:
    """Per-case uncertainty of the recorded ``predict --uncertainty`` runs, or None when there is none."""
    files = _artifacts(data.ws, "predict", UNCERTAINTY_FILE)
    if not files:
        return None
    section = Section("uncertainty", "Uncertainty").add(paragraph(
        "How unsure the model was on the images it predicted with --uncertainty: the score is the mean entropy "
        "of the prediction (nats) over the predicted structure; the mutual information is the part due to "
        "disagreement between mirrorings and folds. Most uncertain cases first: high scores flag predictions "
        "to check and inputs unlike the training data."))
    for path in files:
        try:
            doc = read_json(path, kind="uncertainty")
        except SegpipeError as e:
            section.add(warning(f"{path} cannot be read: {e.format()}"))
            continue
        rows = _uncertainty_rows(doc)
        section.add(paragraph(f"{path.parent}: {len(rows)} case(s), models {', '.join(doc.get('members', []))}; "
                              f"score: {doc.get('score', '')}", "note"))
        section.add(table(["case", "score (nats)", "mutual information", "whole-image entropy",
                           "foreground voxels"], rows[:MAX_ROWS], sortable=True))
    return section


def _fairness_rows(grouping: dict) -> tuple[list[tuple], list[tuple]]:
    groups = grouping.get("groups") or {}
    group_rows = [(name, g.get("n_cases"), _num(g.get("foreground_mean_dice"))) for name, g in groups.items()
                  if isinstance(g, dict)]
    es = grouping.get("es_dice") or {}
    class_rows = [(cls, _num(e.get("dice_all")), _num(e.get("sum_abs_gap")), _num(e.get("es_dice")),
                   "; ".join(f"{g} {_num(d)}" for g, d in (e.get("dice_groups") or {}).items()))
                  for cls, e in es.items() if isinstance(e, dict)]
    return group_rows, class_rows


def fairness_panel(data: ReportData) -> Section | None:
    """Metrics per group of the recorded ``evaluate --attributes --group-by`` runs, or None when there is none."""
    found = []
    for path in _artifacts(data.ws, "evaluate", EVALUATION_FILE):
        try:
            doc = read_json(path)
        except SegpipeError as e:
            found.append((path, None, e.format()))
            continue
        if isinstance(doc, dict) and doc.get("groups"):
            found.append((path, doc["groups"], ""))
    if not found:
        return None
    section = Section("fairness", "Fairness per group").add(paragraph(
        "Evaluations grouped by a case attribute (evaluate --attributes CSV --group-by COLUMN): each group's mean "
        "foreground Dice, and per class the equity-scaled Dice ES-Dice = Dice_all / (1 + sum over groups of "
        "|Dice_group - Dice_all|), which equals the Dice when every group is served alike."))
    for path, groups, problem in found:
        if groups is None:
            section.add(warning(f"{path} cannot be read: {problem}"))
            continue
        for column, grouping in groups.items():
            if not isinstance(grouping, dict):
                continue
            group_rows, class_rows = _fairness_rows(grouping)
            section.add(paragraph(f"{path.parent}, grouped by {column}", "note"))
            section.add(table(["group", "cases", "mean foreground Dice"], group_rows, sortable=True))
            section.add(table(["class", "Dice (all)", "sum of gaps", "ES-Dice", "Dice per group"],
                              class_rows[:MAX_ROWS], sortable=True))
    return section


PANELS: list[Callable[[ReportData], Section | None]] = [uncertainty_panel, fairness_panel]
