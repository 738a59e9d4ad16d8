"""``segpipe select``: choose the best configuration (or ensemble) and its post-processing from
cross-validation, and store the choice in ``selection.json`` (used by ``segpipe predict --best``).

Cross-validation predictions are the folds' ``validation/<case><ending>`` exports (every case is held out by
exactly one fold); ensembles average the folds' exported probabilities (``validation/<case>.npz``).
"""
from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np

from segpipe.dataset.onboard import load_dataset
from segpipe.dataset.reading import read_label
from segpipe.errors import fail
from segpipe.evaluation.metrics import mean_dice_per_class
from segpipe.evaluation.postprocessing import apply_postprocessing, choose_postprocessing
from segpipe.inference.export import probabilities_path
from segpipe.io.images import read_image
from segpipe.locking import locked
from segpipe.io.jsonio import read_json, write_json
from segpipe.records import input_state, up_to_date, write_record
from segpipe.training.splits import load_splits
from segpipe.workspace import Workspace

log = logging.getLogger(__name__)


def selection_path(ws: Workspace) -> Path:
    return ws.dir / "selection.json"


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


def _dice_table(pairs: list[tuple[np.ndarray, np.ndarray]], labels: dict[str, int]) -> dict:
    per_class = mean_dice_per_class(pairs, labels)
    return {"dice": per_class, "foreground_mean_dice": float(np.nanmean(list(per_class.values())))}


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
    plans = read_json(ws.plans_json, kind="plans")
    n_folds = len(load_splits(ws, [c.id for c in spec.cases]))
    names = configs or list(plans["configurations"])
    cv = {c: _cv_files(ws, c, n_folds, spec.file_ending) for c in names}
    done = {c: f for c, f in cv.items() if f}
    if not done:
        raise fail(f"no configuration has cross-validation results for all {n_folds} folds",
                   "train every fold first: segpipe train --config C --fold each", file=ws.dir / "results")
    for c in set(names) - set(done):
        log.warning("%s skipped: not every fold is trained and validated", c)
    inputs, settings = _select_inputs(ws, spec, done), {"configs": sorted(names), "n_folds": n_folds}
    if not force and up_to_date(ws, "select", inputs, settings, [selection_path(ws)]):
        log.info("select: cross-validation results unchanged; skipping")
        return read_json(selection_path(ws), kind="selection")
    refs = {c.id: np.rint(read_label(spec, ws.raw, c)[0]).astype(np.int16) for c in spec.cases}
    labels = spec.labels
    candidates: dict[str, dict] = {}
    preds: dict[str, dict[str, np.ndarray]] = {}
    for c, files in done.items():
        preds[c] = {cid: read_image(p)[0] for cid, p in files.items()}
        candidates[c] = {"configs": [c], **_dice_table([(preds[c][k], refs[k]) for k in refs], labels)}
    for r in range(2, len(done) + 1):
        for combo in itertools.combinations(sorted(done), r):
            if not all(probabilities_path(done[c][k]).is_file() for c in combo for k in refs):
                continue
            ens = {}
            for k in refs:
                probs = np.mean([np.load(probabilities_path(done[c][k]))["probabilities"].astype(np.float32)
                                 for c in combo], axis=0)
                ens[k] = np.argmax(probs, axis=0)
            name = "ensemble(" + "+".join(combo) + ")"
            preds[name] = ens
            candidates[name] = {"configs": list(combo), **_dice_table([(ens[k], refs[k]) for k in refs], labels)}
    best = max(candidates, key=lambda n: candidates[n]["foreground_mean_dice"])
    pp = choose_postprocessing([(preds[best][k], refs[k]) for k in refs], labels)
    final = _dice_table([(apply_postprocessing(preds[best][k], pp, labels), refs[k]) for k in refs], labels)
    selection = {"candidates": candidates, "best": best, "configs": candidates[best]["configs"],
                 "folds": list(range(n_folds)),
                 "postprocessing": {"foreground": pp["foreground"], "classes": pp["classes"]},
                 "cv_dice_before_postprocessing": candidates[best], "cv_dice": final}
    write_json(selection_path(ws), selection, kind="selection")
    write_record(ws, "select", inputs, settings, [selection_path(ws)])
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
