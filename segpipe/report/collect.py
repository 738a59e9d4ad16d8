"""What the report reads: every artifact of a data set that exists, through the stages' own readers (the
report never runs a stage and never writes outside ``report/``).

An artifact that exists but cannot be read (damaged, or written by a newer segpipe) does not stop the report:
its section is left out and the problem is shown at the top of the page.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from segpipe.dataset.model import DatasetSpec
from segpipe.dataset.store import load_dataset
from segpipe.errors import SegpipeError
from segpipe.io.jsonio import read_json
from segpipe.planning.plans import Plans, load_plans
from segpipe.workspace import Workspace

log = logging.getLogger(__name__)

T = TypeVar("T")

LOG_FILE = "log.jsonl"
SUMMARY_FILE = "summary.json"
FINAL_CHECKPOINT = "checkpoint_final.pt"


@dataclass
class FoldRun:
    """One trained (or training) fold: ``history`` is log.jsonl (one dict per epoch: epoch, iterations,
    train_loss, val_loss, pseudo_dice, ema_pseudo_dice, lr, ...); ``validation`` the final validation's
    summary.json (per-case metrics in ``cases``), None before it ran; ``finished`` when the final checkpoint
    exists."""

    config: str
    fold: str
    folder: Path
    history: list[dict[str, Any]]
    validation: dict[str, Any] | None
    finished: bool
    validation_dir: Path


@dataclass
class ReportData:
    """Everything the report shows, read from the workspace; None (or empty) for stages that have not run."""

    ws: Workspace
    spec: DatasetSpec
    fingerprint: dict[str, Any] | None = None
    plans: Plans | None = None
    calibration: dict[str, Any] | None = None
    splits: list[dict[str, list[str]]] | None = None
    folds: dict[str, dict[str, FoldRun]] = field(default_factory=dict)
    selection: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    def configs_with_validation(self) -> list[str]:
        """Configurations of which at least one fold has a final validation, in plan order."""
        return [c for c, fs in self.folds.items() if any(f.validation for f in fs.values())]


def _fold_key(name: str) -> tuple[int, int | str]:
    return (0, int(name)) if name.isdigit() else (1, name)


def _try(what: Path, reader: Callable[[], T], problems: list[str]) -> T | None:
    """``reader()``; a SegpipeError (damaged or newer artifact) becomes a problem line and None."""
    try:
        return reader()
    except SegpipeError as e:
        problems.append(f"{what}: not shown: {e.format()}")
        log.warning("report: %s is not shown: %s", what, e.format())
        return None


def read_history(path: Path) -> list[dict[str, Any]]:
    """A fold's log.jsonl: one JSON object per epoch (lines that are not JSON objects are skipped)."""
    out: list[dict[str, Any]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def fold_folders(ws: Workspace, config: str) -> dict[str, Path]:
    """``fold name -> folder`` of every ``results/<config>/fold_<k>/`` that exists, folds in numeric order."""
    root = ws.results_root(config)
    if not root.is_dir():
        return {}
    found = {p.name[len("fold_"):]: p for p in root.glob("fold_*") if p.is_dir()}
    return {k: found[k] for k in sorted(found, key=_fold_key)}


def collect(ws: Workspace) -> ReportData:
    """Read every artifact of ``ws`` that exists (dataset.json is required: the data set must be onboarded)."""
    spec = load_dataset(ws)
    data = ReportData(ws, spec)
    p = data.problems
    if ws.fingerprint_json.is_file():
        data.fingerprint = _try(ws.fingerprint_json, lambda: read_json(ws.fingerprint_json, kind="fingerprint"), p)
    if ws.plans_json.is_file():
        data.plans = _try(ws.plans_json, lambda: load_plans(ws), p)
    if ws.calibration_json.is_file():
        data.calibration = _try(ws.calibration_json, lambda: read_json(ws.calibration_json, kind="calibration"), p)
    if ws.splits_json.is_file():
        splits = _try(ws.splits_json, lambda: read_json(ws.splits_json, kind="splits"), p)
        data.splits = splits["folds"] if splits else None
    if ws.selection_json.is_file():
        data.selection = _try(ws.selection_json, lambda: read_json(ws.selection_json, kind="selection"), p)
    if data.plans is not None:
        for config in data.plans.configurations:
            for fold, folder in fold_folders(ws, config).items():
                log_path = folder / LOG_FILE
                history = _try(log_path, partial(read_history, log_path), p) if log_path.is_file() else None
                summary_path = ws.validation(config, fold) / SUMMARY_FILE
                summary = (_try(summary_path, partial(read_json, summary_path, kind="validation_summary"), p)
                           if summary_path.is_file() else None)
                if history or summary:
                    data.folds.setdefault(config, {})[fold] = FoldRun(
                        config, fold, folder, history or [], summary, (folder / FINAL_CHECKPOINT).is_file(),
                        ws.validation(config, fold))
    return data


def input_files(ws: Workspace, spec: DatasetSpec, configs: list[str]) -> tuple[list[Path], list[Path]]:
    """The files a report of ``ws`` depends on: ``(artifacts, large files)``. Artifacts (JSON, logs) are
    compared by content, large files (raw images, validation predictions) by size and modification time."""
    artifacts = [p for p in (ws.dataset_json, ws.fingerprint_json, ws.plans_json, ws.calibration_json,
                             ws.splits_json, ws.selection_json) if p.is_file()]
    large: list[Path] = []
    for config in configs:
        for fold, folder in fold_folders(ws, config).items():
            val = ws.validation(config, fold)
            artifacts += [f for f in (folder / LOG_FILE, val / SUMMARY_FILE) if f.is_file()]
            large += [f for f in (folder / FINAL_CHECKPOINT,) if f.is_file()]
            if val.is_dir():
                large += sorted(f for f in val.iterdir() if f.name.endswith(spec.file_ending) and f.is_file())
    raw = ws.raw.resolve() if ws.raw.is_symlink() else ws.raw
    for case in spec.cases:
        for rel in case.images + ([case.label] if case.label else []):
            f = raw / rel
            if f.is_file():
                large.append(f)
    return artifacts, large
