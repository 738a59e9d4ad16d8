"""``segpipe train``: one fold of one configuration, resumable; final validation at the end."""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from segpipe import records
from segpipe.dataset.model import DatasetSpec
from segpipe.dataset.store import load_dataset
from segpipe.errors import fail
from segpipe.io.jsonio import read_json, write_json
from segpipe.locking import locked
from segpipe.planning.plans import Configuration, load_plans
from segpipe.training import distributed as dist
from segpipe.training.data import CascadeInput
from segpipe.training.initialization import INIT_REPORT, initialize_from
from segpipe.training.splits import fold_cases
from segpipe.training.trainer import TrainSettings, get_trainer
from segpipe.workspace import Workspace

log = logging.getLogger(__name__)

RESULT_FILES = ("checkpoint_latest.pt", "checkpoint_best.pt", "checkpoint_final.pt", "log.jsonl", "progress.png",
                INIT_REPORT)


def _fold_lock(ws: Workspace, config: str, fold: str, *args, **kwargs) -> str | None:
    """A fold's own lock (held by the main process only: DDP's other ranks share the dataset lock)."""
    return f"train-{config}-fold{fold}" if int(os.environ.get("RANK", "0")) == 0 else None


@locked("train", exclusive=False, own=_fold_lock)
def run_train(ws: Workspace, config: str, fold: str, settings: TrainSettings, trainer: str | None = None,
              resume: bool | None = None, force: bool = False, validate: bool = True,
              init_from: str | Path | None = None, init_mode: str = "full") -> dict:
    """Train (or resume) a fold. ``resume=None`` resumes automatically when an unfinished run exists.

    ``init_from`` (a segpipe checkpoint) starts a fresh run from its weights (:mod:`segpipe.training.
    initialization`, ``init_mode`` full or encoder) and writes ``init_report.json``; a resumed or finished run
    ignores it.

    A ``settings.budget_s`` covers this call from ``settings.started_at`` (default: now) to the end of the
    final validation."""
    settings = dataclasses.replace(settings.check(), final_validation=validate and fold != "all",
                                   started_at=settings.started_at if settings.started_at is not None
                                   else time.monotonic())
    spec = load_dataset(ws)
    cfg = load_plans(ws).configuration(config)
    trainer_cls = get_trainer(trainer or cfg.trainer)
    pre = ws.preprocessed(cfg.data_identifier)
    from segpipe.preprocessing.store import check_preprocessed

    check_preprocessed(pre, [c.id for c in spec.all_cases], cfg, config)
    cascade = _cascade_input(ws, cfg, spec)
    n_inputs = spec.n_channels + (len(cascade.foreground) if cascade is not None else 0)
    train_ids, val_ids = fold_cases(ws, fold, [c.id for c in spec.cases])
    out = ws.results(config, fold)
    final = out / "checkpoint_final.pt"
    latest = out / "checkpoint_latest.pt"
    is_main = int(os.environ.get("RANK", "0")) == 0
    stage = records.train_stage(config, fold)
    origin = records.fold_origin(ws, cfg)
    if init_from is not None and force and Path(init_from).resolve().is_relative_to(out.resolve()):
        raise fail("the checkpoint to start from lies in the fold that --force clears",
                   "copy it out of the fold folder first and give that copy to --init-from", file=init_from)
    if init_from is not None and not force and (final.is_file() or latest.is_file()):
        log.warning("--init-from %s is not applied: this fold %s (use --force to start it over from those "
                    "weights)", init_from, "is already trained" if final.is_file() else "resumes its own run")
    if init_from is not None and (force or not (final.is_file() or latest.is_file())):
        # before anything of the fold is deleted: the checkpoint must exist, load and fit this network
        from segpipe.networks import build_network

        initialize_from(build_network(cfg, n_inputs, spec.n_outputs), init_from, init_mode)
    if force and out.exists() and is_main:
        for name in RESULT_FILES:
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "validation", ignore_errors=True)
        (out / records.TRAIN_ORIGIN).unlink(missing_ok=True)
        ws.record(stage).unlink(missing_ok=True)
    dist.barrier()
    if not force and (final.is_file() or latest.is_file()):
        _check_fold_origin(out, origin, config, fold)
    extra: dict[str, Any] = {}
    if cascade is not None:
        extra["cascade"] = cascade
    if spec.regions is not None:
        extra["regions"] = spec.regions
    if spec.unlabelled:
        extra["unlabelled_ids"] = [c.id for c in spec.unlabelled]
    if spec.attributes:
        extra["attributes"] = spec.attributes
    t = trainer_cls(cfg, n_inputs, spec.n_outputs, pre, train_ids, val_ids, out, settings, **extra)
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
        elif init_from is None:
            if is_main:  # a fresh start from random weights: no report of an earlier, killed fine-tuning start
                (out / INIT_REPORT).unlink(missing_ok=True)
        else:
            report = initialize_from(t.network, init_from, init_mode)
            log.info("initialized from %s (%s): %d weights loaded, %d reshaped, %d skipped (%s)", init_from,
                     init_mode, len(report["loaded"]), len(report["reshaped"]), len(report["skipped"]),
                     out / INIT_REPORT)
            if is_main:
                write_json(out / INIT_REPORT, report, kind="init_report")
        if is_main:
            records.write_fold_origin(out, origin)
        t.run()
    rec_inputs = {"plan:" + config: origin["plan_hash"], "preprocess:" + config: str(origin["preprocess_hash"])}
    if fold != "all" and ws.splits_json.is_file():
        rec_inputs.update(records.input_state([ws.splits_json]))
    rec_settings: dict = {"fold": fold, "train": train_ids, "val": val_ids}
    init_report = out / INIT_REPORT
    if init_report.is_file():  # a fine-tuned fold names the weights it started from
        init = read_json(init_report, kind="init_report")
        rec_settings["init"] = {"checkpoint": init["checkpoint"], "sha256": init["sha256"], "mode": init["mode"]}
    summary = None
    vsum = out / "validation" / "summary.json"
    if validate and t.is_main and fold != "all":
        from segpipe.training.validation import validate_fold

        if not force and vsum.is_file() and final.is_file() and _validation_current(
                ws, stage, rec_inputs, rec_settings, final, vsum):
            summary = read_json(vsum, kind="validation_summary")
        else:
            schedule = getattr(t, "schedule", None)
            summary = validate_fold(t.network, cfg, spec, ws.raw, pre, val_ids, out / "validation", t.device,
                                    cascade=cascade,
                                    amp_dtype=t.amp_dtype, mirror=schedule.mirror_final if schedule else True,
                                    deadline=getattr(t, "deadline", None))
    if t.is_main and final.is_file():
        records.write_record(ws, stage, rec_inputs, rec_settings, [final] + ([vsum] if vsum.is_file() else []),
                             info={"trainer": trainer or cfg.trainer,
                                   "settings": {k: v for k, v in vars(settings).items()
                                                if k not in ("extra", "started_at")}})
    dist.barrier()
    dist.cleanup()
    return {"state": t.state, "validation": summary, "out": str(out)}


def _cascade_input(ws: Workspace, cfg: Configuration, spec: DatasetSpec) -> CascadeInput | None:
    """For a cascade stage: where its previous stage's segmentations lie (checked complete) and which labels
    become input channels; None for other configurations."""
    if cfg.previous_stage is None:
        return None
    from segpipe.preprocessing.cascade import foreground_values
    from segpipe.preprocessing.previous_stage import check_previous_stage

    folder = check_previous_stage(ws, cfg, [c.id for c in spec.cases])
    return CascadeInput(folder, tuple(foreground_values(spec.labels, spec.region_order)))


def _check_fold_origin(out, origin: dict, config: str, fold: str) -> None:
    """Refuse to reuse or continue a fold trained with another plan entry or other preprocessed data."""
    old = records.read_fold_origin(out)
    if old is None:
        log.warning("fold %s of %s was trained before segpipe recorded the plan it used; cannot check that it "
                    "matches plans.json (re-run with --force to retrain if the plan changed)", fold, config)
        return
    diff = records.origin_differences(old, origin)
    if diff:
        raise fail(f"this fold was trained with another plan: the {' and the '.join(diff)} changed since",
                   f"re-run with --force to retrain (segpipe train --config {config} --fold {fold} --force), or "
                   "restore the plans.json and preprocessed data it was trained with",
                   file=out / records.TRAIN_ORIGIN)


def _validation_current(ws: Workspace, stage: str, inputs: dict, settings: dict, final, vsum) -> bool:
    """The fold's validation summary belongs to its final checkpoint: by the train record, or (for folds
    without one, trained by older versions) by modification time."""
    if ws.record(stage).is_file():
        return records.up_to_date(ws, stage, inputs, settings, [final, vsum])
    return vsum.stat().st_mtime >= final.stat().st_mtime
