"""``segpipe preprocess``: preprocess every case for one configuration, in worker processes, resumably.

Output folder ``preprocessed/<config>/``, written through :mod:`segpipe.preprocessing.store` (per case its
blosc2 arrays and then its json; a case is complete iff its json exists). A killed run continues where it
stopped. The folder's ``.preprocess_state.json`` names the inputs and settings its case files were made from,
the storage format included; when those change (or with ``--force``; or the folder was written by an older
segpipe, in another storage format) the folder's case files are deleted first. The stage record is written
once every case is complete; a run whose record matches and whose cases are all complete is skipped.
"""
from __future__ import annotations

import logging
import zlib
from pathlib import Path

import numpy as np

from segpipe.dataset.model import CaseEntry, DatasetSpec
from segpipe.dataset.reading import read_channels, read_label
from segpipe.dataset.store import load_dataset
from segpipe.errors import SegpipeError
from segpipe.io.atomic import TMP_PREFIX, remove_stale_temporaries
from segpipe.io.jsonio import read_json, refuse_if_newer, write_json
from segpipe.locking import locked
from segpipe.parallel import map_cases
from segpipe.planning.plans import Configuration, Plans, load_plans
from segpipe.preprocessing.case import mark_unannotated, preprocess_case
from segpipe.preprocessing.store import check_preprocessed, plan_hash, stale_cases, storage_format, write_case
from segpipe.records import _norm, input_state, relative_state, up_to_date, write_record
from segpipe.workspace import Workspace

log = logging.getLogger(__name__)

STATE_FILE = ".preprocess_state.json"
SEED = 12345  # class location sampling: per case seed = SEED + crc32(case id), independent of order and workers


def stage_name(config: str) -> str:
    return f"preprocess_{config}"


def case_seed(case_id: str, base: int = SEED) -> int:
    return base + zlib.crc32(case_id.encode("utf-8"))


def _one(args: tuple[DatasetSpec, Path, CaseEntry, Configuration, Path, int]) -> str:
    """Worker: preprocess one case and write its arrays, then its json. Returns the case id (no arrays)."""
    spec, raw, case, cfg, out, seed = args
    data, geo = read_channels(spec, raw, case)
    label = None
    if case.label:
        lab, _ = read_label(spec, raw, case)
        label = mark_unannotated(np.rint(lab).astype(np.int16), spec.ignore_value)
    data, seg, props = preprocess_case(data, label, geo, cfg, seed=seed, case_id=case.id,
                                       file=str(raw / case.images[0]))
    props["plan_hash"] = plan_hash(cfg)
    write_case(out, case.id, data, seg, props, cfg.patch_size)
    return case.id


def _wipe(folder: Path) -> int:
    """Delete the case outputs (blosc2 arrays, npz of older versions, json, temporaries, state file) of a
    preprocessed folder (not its sub-folders)."""
    n = 0
    if not folder.is_dir():
        return 0
    for p in folder.iterdir():
        if p.is_file() and (p.suffix in (".b2nd", ".npz", ".json") or p.name.startswith(TMP_PREFIX)):
            p.unlink()
            n += 1
    return n


@locked("preprocess", exclusive=True)
def run_preprocess(ws: Workspace, config: str, workers: int = 1, force: bool = False) -> tuple[int, bool]:
    """Preprocess ``ws``'s dataset for ``config`` into ``preprocessed/<data_identifier>/`` (shared by the
    configurations that preprocess alike). Returns (number of cases written now, skipped).

    The folder depends on the dataset, the raw files and the configuration's preprocessing key (spacing,
    normalization, resampling), not on the rest of plans.json: re-planning a batch size or a network does not
    redo it."""
    spec = load_dataset(ws)
    plans = load_plans(ws)
    cfg = plans.configuration(config)
    out = ws.preprocessed(cfg.data_identifier)
    stage = stage_name(cfg.data_identifier)
    cases = spec.all_cases  # the unlabelled images too (image only): semi-supervised trainers read them
    raw_files = [ws.raw / f for c in cases for f in c.files()]
    inputs = input_state([ws.dataset_json], raw_files)
    settings = {"preprocessing": cfg.preprocessing_key(), **storage_format()}
    state = {"inputs": relative_state(ws, inputs), "settings": _norm(settings)}

    record_ok = up_to_date(ws, stage, inputs, settings, [])
    stale = remove_stale_temporaries(out)
    if stale:
        log.info("preprocess: removed %d temporary file(s) left by an interrupted run", stale)
    folder_state = None
    refuse_if_newer(out / STATE_FILE, writing=True)  # never wipe what a newer segpipe wrote, even with --force
    if (out / STATE_FILE).is_file():
        try:
            folder_state = read_json(out / STATE_FILE, kind="preprocess_state")
        except SegpipeError:  # a damaged state file: the case files' origin is unknown, so they are redone
            folder_state = None
    folder_ok = folder_state is not None and {k: folder_state.get(k) for k in state} == state
    if force or not (folder_ok or record_ok):
        n = _wipe(out)
        if n:
            log.info("preprocess: %s; deleted %d existing file(s) in %s",
                     "--force" if force else "plan, dataset, raw files or storage format changed", n, out)
        if ws.record(stage).is_file():
            ws.record(stage).unlink()
        record_ok = False
    if not folder_ok or force:
        write_json(out / STATE_FILE, state, kind="preprocess_state")

    missing, other = stale_cases(out, [c.id for c in cases], cfg)
    if other:
        log.warning("preprocess %s: %d case(s) were made with another plan; redoing them", config, len(other))
    todo = [c for c in cases if c.id in set(missing) | set(other)]
    if not todo and record_ok:
        log.info("preprocess %s: inputs unchanged and all %d cases complete; skipping (use --force to redo)",
                 config, len(cases))
        n_previous = _previous_stage(ws, plans, cfg, spec, workers, force)
        return n_previous, n_previous == 0
    if todo and len(todo) < len(cases):
        log.info("preprocess %s: %d of %d cases already complete; continuing with the other %d", config,
                 len(cases) - len(todo), len(cases), len(todo))
    args = [(spec, ws.raw, c, cfg, out, case_seed(c.id)) for c in todo]
    map_cases(_one, args, workers, f"preprocess {config}", cases=[c.id for c in todo])
    check_preprocessed(out, [c.id for c in cases], cfg, config)
    write_record(ws, stage, inputs, settings, [])
    _previous_stage(ws, plans, cfg, spec, workers, force)
    return len(todo), False


def _previous_stage(ws: Workspace, plans: Plans, cfg: Configuration, spec: DatasetSpec, workers: int,
                    force: bool) -> int:
    """For a cascade stage: its previous stage's cross-validation segmentations on this grid (the data itself is
    shared with the configuration of the same data identifier)."""
    if cfg.previous_stage is None:
        return 0
    from segpipe.preprocessing.previous_stage import prepare_previous_stage

    return prepare_previous_stage(ws, plans, cfg, spec, workers, force)
