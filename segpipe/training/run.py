"""``segpipe train``: one fold of one configuration, resumable; final validation at the end."""
from __future__ import annotations

import logging
import os
import shutil

from segpipe.dataset.onboard import load_dataset
from segpipe.errors import fail
from segpipe.io.jsonio import read_json, write_json
from segpipe.planning.run import get_configuration
from segpipe.training import distributed as dist
from segpipe.training.splits import DEFAULT_FOLDS, make_splits
from segpipe.training.trainer import TrainSettings, get_trainer
from segpipe.workspace import Workspace

log = logging.getLogger(__name__)

RESULT_FILES = ("checkpoint_latest.pt", "checkpoint_best.pt", "checkpoint_final.pt", "log.jsonl", "progress.png")


def load_splits(ws: Workspace, case_ids: list[str], n_folds: int = DEFAULT_FOLDS) -> list[dict]:
    """splits.json, created on first use (seeded, so it is the same on every machine)."""
    if ws.splits_json.is_file():
        splits = read_json(ws.splits_json, kind="splits")["folds"]
        known = {c for f in splits for c in f["val"]}
        if known != set(case_ids):
            raise fail("splits.json does not match the data set's cases (cases were added or removed)",
                       "delete splits.json to make new folds (trained folds then no longer match)",
                       file=ws.splits_json)
        return splits
    splits = make_splits(case_ids, n_folds)
    if dist.world_size() <= 1 or int(os.environ.get("RANK", "0")) == 0:
        write_json(ws.splits_json, {"folds": splits}, kind="splits")
    return splits


def fold_cases(ws: Workspace, fold: str, case_ids: list[str]) -> tuple[list[str], list[str]]:
    if fold == "all":
        return sorted(case_ids), sorted(case_ids)
    splits = load_splits(ws, case_ids)
    try:
        k = int(fold)
        return splits[k]["train"], splits[k]["val"]
    except (ValueError, IndexError):
        raise fail(f"unknown fold '{fold}'", f"use 0..{len(splits) - 1} or all") from None


def run_train(ws: Workspace, config: str, fold: str, settings: TrainSettings, trainer: str | None = None,
              resume: bool | None = None, force: bool = False, validate: bool = True) -> dict:
    """Train (or resume) a fold. ``resume=None`` resumes automatically when an unfinished run exists."""
    spec = load_dataset(ws)
    plans = read_json(ws.plans_json, kind="plans")
    cfg = get_configuration(plans, config, ws.plans_json)
    trainer_cls = get_trainer(trainer or cfg.get("trainer", "default"))
    pre = ws.preprocessed(config)
    from segpipe.preprocessing.run import list_cases

    done = set(list_cases(pre)) if pre.is_dir() else set()
    missing = [c.id for c in spec.cases if c.id not in done]
    if missing:
        raise fail(f"{len(missing)} case(s) are not preprocessed for {config} (e.g. {missing[:3]})",
                   f"run `segpipe preprocess --config {config}` first", file=pre)
    train_ids, val_ids = fold_cases(ws, fold, [c.id for c in spec.cases])
    out = ws.results(config, fold)
    final = out / "checkpoint_final.pt"
    latest = out / "checkpoint_latest.pt"
    is_main = int(os.environ.get("RANK", "0")) == 0
    if force and out.exists() and is_main:
        for name in RESULT_FILES:
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "validation", ignore_errors=True)
    dist.barrier()
    t = trainer_cls(cfg, spec.n_channels, spec.n_classes, pre, train_ids, val_ids, out, settings, config)
    if final.is_file() and not force:
        log.info("fold %s of %s is already trained (%s); use --force to train again", fold, config, final)
        t.load(final)
    else:
        if resume is True and not latest.is_file():
            raise fail("nothing to resume: no checkpoint_latest.pt", "start training without --resume", file=latest)
        if latest.is_file() and resume is not False:
            t.load(latest)
        elif latest.is_file():
            raise fail("this fold has an unfinished run", "re-run with --resume to continue it, or --force to "
                       "start over", file=latest)
        t.run()
    summary = None
    if validate and t.is_main and fold != "all":
        from segpipe.training.validation import validate_fold

        vsum = out / "validation" / "summary.json"
        if vsum.is_file() and final.is_file() and vsum.stat().st_mtime >= final.stat().st_mtime and not force:
            summary = read_json(vsum, kind="validation_summary")
        else:
            summary = validate_fold(t.network, cfg, spec, ws.raw, pre, val_ids, out / "validation", t.device,
                                    amp_dtype=t.amp_dtype)
    dist.barrier()
    dist.cleanup()
    return {"state": t.state, "validation": summary, "out": str(out)}
