"""``segpipe onboard``: describe a user's folder as a workspace dataset, after validating every case.

Nothing is written unless every case passes; the user's folder is linked (or, with ``copy``, its case files
are copied), never modified.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from segpipe.dataset.attributes import attach_attributes
from segpipe.dataset.formats import discover
from segpipe.dataset.formats.common import OnboardOptions
from segpipe.dataset.model import IGNORE_LABEL, DatasetSpec, case_id_problem, label_values
from segpipe.dataset.store import load_dataset
from segpipe.dataset.subjects import assign_subjects
from segpipe.dataset.validate import validate_dataset
from segpipe.errors import Problem, SegpipeError, fail
from segpipe.io.atomic import _tmp_name, remove_stale_temporaries, replace_tree, verification_failed
from segpipe.io.images import ENDINGS_2D
from segpipe.io.jsonio import read_json, refuse_if_newer, write_json
from segpipe.locking import stage_lock
from segpipe.records import input_state, up_to_date, write_record
from segpipe.workspace import Workspace

log = logging.getLogger(__name__)


def _complete_labels(spec: DatasetSpec, found: set[int]) -> list[Problem]:
    """Declare labels found in the data when the folder declared none; check the declared set's shape."""
    problems: list[Problem] = []
    if not spec.labels:
        spec.labels = {"background": 0}
        for v in sorted(found - {0}):
            spec.labels[f"label_{v}"] = v
        problems.append(Problem(f"no label names given; using the values found in the label maps: {spec.labels}",
                                "name them with --labels background=0 NAME=1 ...", spec.source, severity="warning"))
    values = sorted(label_values(spec.labels))
    if 0 not in values:
        problems.append(Problem(f"labels {spec.labels} have no background value 0", "declare background=0",
                                spec.source))
    elif values != list(range(len(values))):
        problems.append(Problem(f"label values {values} are not consecutive from 0",
                                "renumber the label maps to 0, 1, 2, ... (or map them with --labels)", spec.source))
    ignore = spec.ignore_value
    if ignore is not None and ignore != max(values):
        problems.append(Problem(f"the '{IGNORE_LABEL}' label (unannotated voxels) has value {ignore}, but "
                                f"{max(values)} is higher", f"give '{IGNORE_LABEL}' the highest value, as nnU-Net "
                                "requires: renumber the label maps or map them with --labels", spec.source))
    if ignore == 0:
        problems.append(Problem(f"the '{IGNORE_LABEL}' label cannot be background (0)",
                                f"give '{IGNORE_LABEL}' the highest value", spec.source))
    return problems


def onboard(source: str | os.PathLike, workspace_root: str | os.PathLike, options: OnboardOptions, copy: bool = False,
            workers: int = 1, force: bool = False, allow_external_links: bool = False,
            ) -> tuple[Workspace, DatasetSpec, list[Problem], bool]:
    """Onboard ``source`` as dataset ``options.name``. Returns (workspace, spec, warnings, skipped)."""
    src = Path(os.path.abspath(Path(source).expanduser()))
    if not src.is_dir():
        raise fail("source folder does not exist or is not a folder", "give the folder holding the data", file=src)
    why = case_id_problem(options.name)
    if why:
        raise fail(f"unsafe dataset name: {why.replace('case id', 'name')}", "use letters, digits, '_', '-' only")
    ws = Workspace(workspace_root, options.name)
    refuse_if_newer(ws.dataset_json, writing=True)  # before any work, --force or not
    real_src = src.resolve()
    if ws.root.resolve() == real_src or real_src in ws.root.resolve().parents:
        raise fail("the workspace lies inside the data folder; segpipe never writes into the user's folder",
                   "choose a --workspace outside the data folder", file=ws.root)
    spec, problems = discover(src, options)
    problems += assign_subjects(spec.cases, options)
    if options.attributes_csv is not None:
        spec.attribute_columns, attribute_problems = attach_attributes(spec.all_cases, Path(options.attributes_csv))
        problems += attribute_problems
    if spec.file_ending in ENDINGS_2D and spec.label_value_map is None and 255 not in label_values(spec.labels):
        spec.label_value_map = {"255": 1}
    spec.raw_mode = "copy" if copy else "link"
    spec.allow_external_links = allow_external_links
    files = [src / f for c in spec.all_cases for f in c.files()]
    settings = {"options": {k: str(v) for k, v in vars(options).items()}, "copy": copy, "source": str(src),
                "allow_external_links": allow_external_links}
    csvs = [Path(c) for c in (options.spacing_csv, options.subject_csv, options.attributes_csv) if c is not None]
    inputs = input_state([], [f for f in files + csvs if f.is_file()])
    if not force and ws.dataset_json.is_file():
        old = read_json(ws.dataset_json, kind="dataset")
        if old.get("source") != str(src):
            raise fail(f"dataset '{options.name}' was onboarded from {old.get('source')}, not {src}",
                       "choose another --name, or pass --force to replace it", file=ws.dataset_json)
        if not any(p.severity == "error" for p in problems) and up_to_date(ws, "onboard", inputs, settings,
                                                                           [ws.dataset_json]):
            current = load_dataset(ws)
            if raw_is_complete(ws, current):
                log.info("onboard: inputs unchanged since the last run; skipping (use --force to redo)")
                return ws, current, [], True
            log.warning("onboard: the workspace's raw/ folder is missing files (an interrupted run?); "
                        "onboarding again")
    problems, reports = validate_dataset(spec, src, workers=workers, extra_problems=problems)
    found = {int(v) for r in reports for v in r.label_values}
    if not any(p.severity == "error" for p in problems):
        problems += _complete_labels(spec, found)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise SegpipeError(problems)
    warnings = [p for p in problems if p.severity == "warning"]
    ndims = {r.ndim for r in reports if r.ndim}
    spec.notes = [f"{len(spec.cases)} cases, {ndims.pop() if len(ndims) == 1 else '?'}D, "
                  f"channels {list(spec.channels.values())}, labels {spec.labels}"
                  + (f"; {len(spec.unlabelled)} unlabelled image(s)" if spec.unlabelled else "")
                  + (f"; attributes {spec.attribute_columns}" if spec.attribute_columns else "")]
    ws.dir.mkdir(parents=True, exist_ok=True)
    with stage_lock(ws.dir, "onboard", exclusive=True):
        _write(ws, spec, src, copy)
        write_record(ws, "onboard", inputs, settings, [ws.dataset_json])
    return ws, spec, warnings, False


def _write(ws: Workspace, spec: DatasetSpec, src: Path, copy: bool) -> None:
    """Write ``raw/`` (a link to ``src``, or with ``copy`` a copy of the case files) and dataset.json.

    The new ``raw/`` is built completely beside the old one and only then swapped in (atomically on Linux);
    the old one is deleted after that. A run killed at any point leaves a usable ``raw/`` behind.
    """
    ws.dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(ws.dir)
    new = _tmp_name(ws.raw)
    try:
        if copy:
            spec.allow_external_links = False  # the copies are real files inside raw/
            for c in spec.all_cases:
                for rel in c.files():
                    dst = new / rel
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src / rel, dst)
                    if dst.stat().st_size != (src / rel).stat().st_size:
                        raise verification_failed(dst, f"copy of {src / rel} is incomplete")
        else:
            os.symlink(src, new, target_is_directory=True)
        replace_tree(new, ws.raw)
    except BaseException:
        if new.is_symlink() or new.is_file():
            new.unlink()
        elif new.is_dir():
            shutil.rmtree(new, ignore_errors=True)
        raise
    write_json(ws.dataset_json, spec.to_dict(), kind="dataset")


def raw_is_complete(ws: Workspace, spec: DatasetSpec) -> bool:
    """True when every case file of ``spec`` is present under the workspace's ``raw/``."""
    return all((ws.raw / f).is_file() for c in spec.all_cases for f in c.files())

