"""``segpipe select``: choose the best configuration (or ensemble) and its post-processing from
cross-validation, and store the choice in ``selection.json`` (used by ``segpipe predict --best``).

Cross-validation predictions are the folds' ``validation/<case><ending>`` exports (every case is held out by
exactly one fold); ensembles average the folds' exported probabilities (``validation/<case>.npz``, float16
``(n_classes, *raw shape)``). Cases are read one at a time and reduced to per-class voxel counts
(:func:`select_from_files`); the Dice tables are made by the one summary,
:func:`segpipe.evaluation.summary.summarize`.

Memory (issue 12): an ensemble's label map is made from the saved probabilities streamed class by class and
slab by slab (:func:`segpipe.inference.export.ensemble_label_map`): one case's float32 running maximum and label
map at a time, never the configurations' whole probabilities (which the files hold compressed, as float16).
"""
from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segpipe.dataset.reading import read_label
from segpipe.dataset.store import load_dataset
from segpipe.errors import error_context, fail
from segpipe.evaluation.metrics import Counts, class_counts, record_from_counts
from segpipe.evaluation.postprocessing import case_counts, choose_from_counts
from segpipe.evaluation.summary import OVERLAP_METRICS, summarize
from segpipe.inference.export import ensemble_label_map, probabilities_path
from segpipe.io.images import read_image
from segpipe.io.jsonio import read_json, write_json
from segpipe.locking import locked
from segpipe.planning.plans import load_plans
from segpipe.records import input_state, up_to_date, write_record
from segpipe.training.splits import load_splits
from segpipe.workspace import Workspace

log = logging.getLogger(__name__)


def _cv_files(ws: Workspace, config: str, n_folds: int, ending: str) -> dict[str, Path] | None:
    """case -> exported validation prediction, when every fold of ``config`` has validated all its cases."""
    out: dict[str, Path] = {}
    splits = load_splits(ws, [c.id for c in load_dataset(ws).cases])
    for k in range(n_folds):
        folder = ws.results(config, k) / "validation"
        for cid in splits[k]["val"]:
            p = folder / f"{cid}{ending}"
            if not p.is_file():
                return None
            out[cid] = p
    return out


def _dice_table(counts: dict[str, dict[str, Counts]], labels: Mapping[str, Any]) -> dict:
    """Mean Dice per class and foreground mean Dice from per-case ``{class: (tp, fp, fn)}`` voxel counts, by
    the one summary (:func:`segpipe.evaluation.summary.summarize`); ``mean`` holds every mean per class with
    the number of cases it is over (and the empty / missed / spurious counts)."""
    s = summarize({cid: record_from_counts(c) for cid, c in counts.items()}, labels, OVERLAP_METRICS)
    return {"dice": {name: m["dice"] for name, m in s["mean"].items()},
            "foreground_mean_dice": s["foreground_mean_dice"],
            "foreground_mean_dice_n_classes": s["foreground_mean_dice_n_classes"], "n_cases": s["n_cases"],
            "mean": s["mean"]}


def candidate_configs(done: dict[str, dict[str, Path]], case_ids: list[str]) -> dict[str, list[str]]:
    """Every candidate and its configurations, in the order they are compared (ties go to the first): each
    configuration, then each ensemble ``ensemble(a+b)`` of two or more whose folds saved probabilities for
    every case."""
    out = {c: [c] for c in done}
    for r in range(2, len(done) + 1):
        for combo in itertools.combinations(sorted(done), r):
            if all(probabilities_path(done[c][k]).is_file() for c in combo for k in case_ids):
                out["ensemble(" + "+".join(combo) + ")"] = list(combo)
    return out


def case_predictions(done: dict[str, dict[str, Path]], cid: str, candidates: dict[str, list[str]],
                     region_order: Sequence[int] | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """The label map of case ``cid`` (raw geometry, e.g. ``(z, y, x)``) of each candidate, one at a time: a
    configuration's exported label map, or the argmax of its configurations' mean probabilities, streamed from
    their saved ``.npz`` files class by class (:func:`segpipe.inference.export.ensemble_label_map`; each
    ensemble reads its configurations' files again, so that memory does not grow with the candidates)."""
    for name, configs in candidates.items():
        if len(configs) == 1:
            yield name, read_image(done[configs[0]][cid])[0]
            continue
        yield name, ensemble_label_map([probabilities_path(done[c][cid]) for c in configs], region_order)


def select_from_files(done: dict[str, dict[str, Path]], case_ids: list[str],
                      reference: Callable[[str], np.ndarray], labels: Mapping[str, Any],
                      region_order: Sequence[int] | None = None) -> dict:
    """Score every candidate, take the best by foreground mean Dice and choose its post-processing.

    Cases are streamed: each case's reference and predictions are read, reduced to per-class (tp, fp, fn)
    voxel counts, and dropped. A first pass counts every candidate; a second pass reads the best candidate's
    predictions again for the counts with and without each post-processing step
    (:class:`segpipe.evaluation.postprocessing.CaseCounts`). ``done``: configuration -> case -> exported
    validation label map; ``reference(cid)``: the reference label map of a case."""
    candidates = candidate_configs(done, case_ids)
    counts: dict[str, dict[str, dict[str, Counts]]] = {name: {} for name in candidates}
    for cid in case_ids:
        with error_context("select", cid):
            ref = reference(cid)
            for name, pred in case_predictions(done, cid, candidates, region_order):
                counts[name][cid] = class_counts(pred, ref, labels)
    tables = {name: {"configs": configs, **_dice_table(counts[name], labels)} for name, configs in candidates.items()}
    best = max(tables, key=lambda n: tables[n]["foreground_mean_dice"])
    pp_counts = {}
    for cid in case_ids:
        with error_context("select", cid):
            for _, pred in case_predictions(done, cid, {best: candidates[best]}, region_order):
                pp_counts[cid] = case_counts(pred, reference(cid), labels)
    pp = choose_from_counts(pp_counts.values(), labels)
    final = _dice_table({cid: c.after(pp) for cid, c in pp_counts.items()}, labels)
    return {"candidates": tables, "best": best, "configs": candidates[best],
            "postprocessing": {"foreground": pp["foreground"], "classes": pp["classes"]},
            "cv_dice_before_postprocessing": tables[best], "cv_dice": final}


def _select_inputs(ws: Workspace, spec, done: dict[str, dict[str, Path]]) -> dict[str, str]:
    """What a selection depends on: dataset, splits, reference labels and every fold's validation exports."""
    files = [f for cv in done.values() for f in cv.values()]
    files += [probabilities_path(f) for f in files if probabilities_path(f).is_file()]
    raw = [ws.raw / c.label for c in spec.cases if c.label]
    return input_state([ws.dataset_json, ws.splits_json], sorted(files) + raw)


@locked("select", exclusive=False, own=lambda *a, **k: "select")
def run_select(ws: Workspace, configs: list[str] | None = None, force: bool = False) -> dict:
    """Choose the best configuration/ensemble and post-processing; skipped when its inputs did not change."""
    spec = load_dataset(ws)
    plans = load_plans(ws)
    n_folds = len(load_splits(ws, [c.id for c in spec.cases]))
    names = configs or list(plans.configurations)
    cv = {c: _cv_files(ws, c, n_folds, spec.file_ending) for c in names}
    done = {c: f for c, f in cv.items() if f}
    if not done:
        raise fail(f"no configuration has cross-validation results for all {n_folds} folds",
                   "train every fold first: segpipe train --config C --fold each", file=ws.dir / "results")
    for c in set(names) - set(done):
        log.warning("%s skipped: not every fold is trained and validated", c)
    inputs, settings = _select_inputs(ws, spec, done), {"configs": sorted(names), "n_folds": n_folds}
    if not force and up_to_date(ws, "select", inputs, settings, [ws.selection_json]):
        log.info("select: cross-validation results unchanged; skipping")
        return read_json(ws.selection_json, kind="selection")
    case_ids = [c.id for c in spec.cases]
    cases = {c.id: c for c in spec.cases}

    def reference(cid: str) -> np.ndarray:
        return np.rint(read_label(spec, ws.raw, cases[cid])[0]).astype(np.int16)

    selection = {**select_from_files(done, case_ids, reference, spec.labels, spec.region_order),
                 "folds": list(range(n_folds))}
    write_json(ws.selection_json, selection, kind="selection")
    write_record(ws, "select", inputs, settings, [ws.selection_json])
    return selection


def format_selection(sel: dict) -> str:
    lines = ["cross-validation Dice (mean over cases):"]
    for name, c in sorted(sel["candidates"].items(), key=lambda kv: -kv[1]["foreground_mean_dice"]):
        per = ", ".join(f"{k} {v:.4f}" for k, v in c["dice"].items())
        lines.append(f"  {name:30s} mean {c['foreground_mean_dice']:.4f}  ({per})")
    pp = sel["postprocessing"]
    what = ["largest foreground component"] if pp["foreground"] else []
    what += [f"largest component of {c}" for c in pp["classes"]]
    lines.append(f"best: {sel['best']}; post-processing: {', '.join(what) or 'none (did not help)'}; "
                 f"cross-validation Dice {sel['cv_dice']['foreground_mean_dice']:.4f}")
    return "\n".join(lines)
