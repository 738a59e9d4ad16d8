"""``segpipe report``: one HTML page per data set, ``<workspace>/<dataset>/report/index.html``, with its images
in ``report/images/``.

The report is a pure reader: it reads the artifacts of the stages that have run (through their readers, see
:mod:`segpipe.report.collect`) and writes nothing outside ``report/``. The page is built in a temporary folder
beside it and replaces the old report only when complete (:func:`segpipe.io.atomic.replace_tree`), so a failed
or killed build leaves the previous report as it was. Like every stage it skips itself when nothing it reads
changed (its inputs are kept in ``report/report_inputs.json``); ``force`` rebuilds it.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from segpipe import records
from segpipe._version import __version__
from segpipe.dataset.store import load_dataset
from segpipe.errors import SegpipeError
from segpipe.io.atomic import TMP_PREFIX, _tmp_name, atomic_write_text, pid_alive, replace_tree
from segpipe.io.jsonio import read_json, write_json
from segpipe.locking import locked
from segpipe.planning.plans import load_plans
from segpipe.report.collect import collect, input_files
from segpipe.report.html import Section, page, warning
from segpipe.report.panels import PANELS, panel_files
from segpipe.report.sections import SECTIONS, Images, html_list, stages_run
from segpipe.workspace import Workspace

log = logging.getLogger(__name__)

INDEX = "index.html"
INPUTS_FILE = "report_inputs.json"
REPORT_FORMAT = 1  # raise when the page changes: reports of unchanged workspaces are then made again


@dataclass
class ReportResult:
    """What ``segpipe report`` did: the page, its sections (their anchors), whether it was up to date already
    (``skipped``), and the artifacts it could not show."""

    index: Path
    sections: list[str] = field(default_factory=list)
    skipped: bool = False
    problems: list[str] = field(default_factory=list)


def _remove_own_stale_builds(ws: Workspace) -> None:
    """Delete unfinished report builds (``.tmp-<pid>-<hex>-report``) of processes that are gone."""
    if not ws.dir.is_dir():
        return
    for p in ws.dir.iterdir():
        if p.name.startswith(TMP_PREFIX) and p.name.endswith("-" + ws.report.name) and p.is_dir():
            pid = p.name[len(TMP_PREFIX):].split("-", 1)[0]
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(p, ignore_errors=True)


def _inputs(ws: Workspace, configs: list[str]) -> dict[str, str]:
    spec = load_dataset(ws)
    artifacts, large = input_files(ws, spec, configs)
    artifacts += panel_files(ws)
    return records.relative_state(ws, records.input_state(artifacts, large))


def _up_to_date(ws: Workspace, inputs: dict[str, str], settings: dict) -> bool:
    path = ws.report / INPUTS_FILE
    if not (path.is_file() and (ws.report / INDEX).is_file()):
        return False
    try:
        rec = read_json(path, kind="report_inputs")
    except SegpipeError:
        return False
    return rec.get("inputs") == inputs and rec.get("settings") == settings


def build(ws: Workspace, folder: Path) -> tuple[list[str], list[str]]:
    """Write the page and its images into ``folder``; returns (section anchors, problems)."""
    data = collect(ws)
    images = Images(folder)
    sections: list[Section] = []
    for make in SECTIONS:
        section = make(data, images)
        if section is not None:
            sections.append(section)
    for panel in PANELS:
        section = panel(data)
        if section is not None:
            sections.append(section)
    done, todo = stages_run(data)
    spec = data.spec
    lines = [f"{len(spec.cases)} cases, channels {', '.join(spec.channels.values())}, labels "
             f"{', '.join(n for n, v in spec.labels.items() if v != 0)}; workspace {ws.dir}",
             f"stages run: {', '.join(done)}" + (f"; not yet: {', '.join(todo)} (no sections for those)" if todo
                                                 else ""),
             f"made {time.strftime('%Y-%m-%d %H:%M')} by segpipe {__version__}"]
    if data.problems:
        first = sections[0] if sections else Section("data", "Data set")
        first.body.insert(0, warning("some artifacts could not be read:") + html_list(data.problems))
    atomic_write_text(folder / INDEX, page(f"segpipe report: {spec.name}", lines, sections))
    return [s.key for s in sections], data.problems


@locked("report", exclusive=False, own=lambda *a, **k: "report")
def write_report(ws: Workspace, force: bool = False) -> ReportResult:
    """Write ``<workspace>/<dataset>/report/index.html`` (and ``report/images/``) from the artifacts of the
    stages that have run; skipped when none of them changed since the last report (``force`` rebuilds)."""
    ws.require_dataset()
    _remove_own_stale_builds(ws)
    plans_configs: list[str] = []
    with contextlib.suppress(SegpipeError):  # a damaged plans.json is reported by the page itself
        if ws.plans_json.is_file():
            plans_configs = list(load_plans(ws).configurations)
    inputs = _inputs(ws, plans_configs)
    settings = {"report_format": REPORT_FORMAT, "segpipe": __version__}
    index = ws.report / INDEX
    if not force and _up_to_date(ws, inputs, settings):
        log.info("report: nothing changed since %s; skipping (use --force to make it again)", index)
        return ReportResult(index, skipped=True)
    t0 = time.monotonic()
    tmp = _tmp_name(ws.report)
    tmp.mkdir(parents=True)
    try:
        keys, problems = build(ws, tmp)
        write_json(tmp / INPUTS_FILE, {"inputs": inputs, "settings": settings}, kind="report_inputs")
        replace_tree(tmp, ws.report)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("report: %d section(s) in %.1f s -> %s", len(keys), time.monotonic() - t0, index)
    return ReportResult(index, keys, problems=problems)

