"""``segpipe adapt``: adapt trained folds to unlabelled images of a new domain (TENT, :mod:`.tent`), writing the
adapted model as a new model workspace; the source workspace is only read.

The target images are read and preprocessed exactly as ``predict`` reads them (same naming rules, checks and
plan entry). The output folder ``OUT`` becomes a workspace holding the data set under the same name, as
``import-model`` installs one: ``OUT/<name>/dataset.json`` (channels, labels; no case list), ``plans.json``
(the source's, byte for byte), and per adapted fold ``results/<config>/fold_<k>/checkpoint_final.pt`` (the
source checkpoint with the adapted network, without optimizer state), ``trained_with.json`` (the source fold's,
so that predict's plan check passes) and ``adaptation.json`` (what was done: source checkpoint hash, target
folder and cases, settings, the entropy before and after, the loss and balance term of every step, the stopping
rule's checks, and whether and why it stopped). So ``segpipe predict -w OUT -n <name> -c <config> ...`` predicts
with the adapted model.

:func:`adapt` is the public entry point (paths and options in, the output workspace folder out);
:func:`run_adapt` is the stage behind ``segpipe adapt`` (a located :class:`Workspace` and a settings object).

Memory: every target case is held preprocessed (float32 at the configuration's spacing) for the whole run.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segpipe import records
from segpipe.adaptation.tent import (
    StepLog,
    TentSettings,
    adapt_network,
    mean_entropy,
    norm_affine_parameters,
)
from segpipe.dataset.model import CaseEntry, DatasetSpec
from segpipe.dataset.reading import read_channels
from segpipe.dataset.store import load_dataset
from segpipe.devices import autocast_dtype, pick_device
from segpipe.errors import Problem, fail
from segpipe.inference.inputs import input_spec, resolve_inputs
from segpipe.inference.models import load_models
from segpipe.io.atomic import atomic_write_bytes
from segpipe.io.jsonio import read_json, write_json
from segpipe.locking import locked, stage_lock
from segpipe.parallel import CasePool, case_failures_error
from segpipe.planning.plans import Configuration, load_plans
from segpipe.preprocessing.case import preprocess_case
from segpipe.progress import CaseProgress, Heartbeat
from segpipe.training.checkpoint import load_checkpoint, save_checkpoint
from segpipe.workspace import Workspace

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint_final.pt"
RECORD = "adaptation.json"
DROPPED_KEYS = ("optimizer", "scaler")  # training state of the source: meaningless for the adapted network


@dataclass
class AdaptResult:
    """What ``adapt`` wrote: the output model workspace, the configuration, and per fold its record."""

    output: Workspace
    config: str
    folds: dict[str, dict[str, Any]] = field(default_factory=dict)


def _prepare_case(args: tuple[DatasetSpec, Path, CaseEntry, Configuration]) -> tuple[str, np.ndarray]:
    """Worker: read one target case and preprocess it as predict does: ``(case id, data (C, Z, Y, X))``."""
    spec, root, case, cfg = args
    data, geo = read_channels(spec, root, case)
    if data.shape[0] != spec.n_channels:
        raise fail(f"image has {data.shape[0]} channel(s), the model expects {spec.n_channels}",
                   "give the same channels as in training", file=root / case.images[0], case=case.id)
    pdata, _, _ = preprocess_case(data, None, geo, cfg, case_id=case.id, file=str(root / case.images[0]))
    return case.id, np.ascontiguousarray(pdata, dtype=np.float32)


def prepare_target(spec: DatasetSpec, cfg: Configuration, input_dir: Path, workers: int = 1,
                   pixel_spacing: float | None = None, spacing_csv: Path | None = None
                   ) -> dict[str, np.ndarray]:
    """Every case of ``input_dir`` preprocessed for ``cfg``: ``{case id: (C, Z, Y, X) float32}``. Bad files are
    reported together, each naming its file (as predict reports them)."""
    input_dir = Path(input_dir).absolute()
    cases = resolve_inputs(input_dir, spec, pixel_spacing, spacing_csv)
    in_spec = input_spec(spec, input_dir, cases)
    out: dict[str, np.ndarray] = {}
    failures: dict[str, list[Problem]] = {}
    with CasePool(workers, "adapt") as pool, CaseProgress(len(cases), "adapt: preprocess") as bar:
        tasks = [pool.submit(_prepare_case, (in_spec, input_dir, c, cfg), c.id) for c in cases]
        for task in tasks:
            ok, value = pool.outcome(task)
            if ok:
                out[value[0]] = value[1]
            else:
                failures[str(task.case)] = value
            bar.update(task.case, failed=not ok)
    if failures:
        raise case_failures_error(failures, len(cases), "adapt")
    return out


def _check_output(ws: Workspace, out: Workspace, config: str, folds: list[str], force: bool) -> None:
    """Refuse an output that is the source workspace, holds this data set with other channels, labels or plans,
    or already holds adapted folds (unless ``force``)."""
    if out.root.resolve() == ws.root.resolve():
        raise fail("the output folder is the source workspace: adapting never replaces the trained folds",
                   "give a new folder with -o (it becomes a workspace of the adapted model)", file=out.root)
    if out.dataset_json.is_file():
        have, src = read_json(out.dataset_json), read_json(ws.dataset_json)
        for key in ("channels", "labels"):
            if have.get(key) != src.get(key):
                raise fail(f"data set '{out.dataset}' exists there with other {key}", "choose another -o folder",
                           file=out.dataset_json)
    if out.plans_json.is_file() and out.plans_json.read_bytes() != ws.plans_json.read_bytes():
        raise fail(f"data set '{out.dataset}' exists there with other plans", "choose another -o folder",
                   file=out.plans_json)
    existing = [out.results(config, f) / CHECKPOINT for f in folds if (out.results(config, f) / CHECKPOINT).exists()]
    if existing and not force:
        raise fail(f"an adapted model exists there ({len(existing)} fold(s))", "choose another -o folder, or "
                   "--force to replace it", file=existing[0])


def _write_model_definition(ws: Workspace, out: Workspace) -> None:
    """``dataset.json`` without the training cases and ``plans.json`` unchanged, as import-model writes them."""
    d = read_json(ws.dataset_json)
    d.update({"cases": [], "num_cases": 0, "source": f"model of '{ws.dataset}' in {ws.root}, adapted by segpipe "
              "adapt", "notes": [*d.get("notes", []), "written by segpipe adapt: no training cases"]})
    atomic_write_bytes(out.dataset_json, json.dumps(d, indent=1).encode())
    atomic_write_bytes(out.plans_json, ws.plans_json.read_bytes())


def _write_fold(ws: Workspace, out: Workspace, config: str, fold: str, net: torch.nn.Module,
                record: dict[str, Any]) -> None:
    """The adapted checkpoint (atomic), the source fold's ``trained_with.json`` and the adaptation record."""
    src_dir, dst_dir = ws.results(config, fold), out.results(config, fold)
    state = load_checkpoint(src_dir / CHECKPOINT, map_location="cpu")
    state = {k: v for k, v in state.items() if k not in DROPPED_KEYS and k != "checkpoint_version"}
    state["network"] = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    state["adaptation"] = {k: record[k] for k in ("method", "steps", "lr", "balance_weight", "max_drift",
                                                  "kept_step", "entropy_before", "entropy_after")}
    dst_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(dst_dir / CHECKPOINT, state)
    origin = src_dir / records.TRAIN_ORIGIN
    if origin.is_file():
        atomic_write_bytes(dst_dir / records.TRAIN_ORIGIN, origin.read_bytes())
    write_json(dst_dir / RECORD, record, kind="adaptation")


SETTING_FIXES = {  # TentSettings field -> how to fix it (the command line's flag)
    "steps": "give --steps >= 1", "patches": "give --patches >= 1", "lr": "give --lr > 0, e.g. 1e-3",
    "mirrorings": "give --mirrorings >= 1, or leave it out (all mirrorings)",
    "balance_weight": "give --balance-weight >= 0 (0: plain TENT, no class-balance term)",
    "max_drift": "give --max-drift > 0, e.g. 0.05, or --no-stop for no stopping rule",
    "check_every": "give --check-every >= 1",
}


def _settings_error(settings: TentSettings) -> None:
    try:
        settings.check()
    except ValueError as e:
        message, name = (e.args + ("",))[:2]
        raise fail(f"invalid adaptation settings: {message}", SETTING_FIXES.get(name, "see `segpipe adapt --help`")
                   ) from None


def _class_names(spec: DatasetSpec) -> list[str]:
    """The foreground classes (softmax: by label value) or regions (dataset.json order): the network's
    foreground outputs, for messages."""
    if spec.region_order is not None:
        return [n for n, v in spec.classes.items() if v != 0]
    return [n for n, v in sorted(spec.classes.items(), key=lambda kv: int(kv[1])) if v != 0]  # type: ignore[arg-type]


@locked("adapt", exclusive=False)
def run_adapt(ws: Workspace, input_dir: Path, output: Path, config: str | None = None,
              folds: list[str] | None = None, settings: TentSettings | None = None, checkpoint: str = "final",
              device: str = "auto", precision: str = "auto", workers: int = 1, pixel_spacing: float | None = None,
              spacing_csv: Path | None = None, force: bool = False) -> AdaptResult:
    """Adapt ``config``'s ``folds`` (default: the plan's default configuration, every trained fold) of ``ws``
    to the unlabelled images in ``input_dir`` and write the adapted model to the workspace ``output``
    (module docstring). The source workspace is only read."""
    settings = settings or TentSettings()
    _settings_error(settings)
    spec, plans = load_dataset(ws), load_plans(ws)
    cfg = plans.configuration(config or plans.default_configuration)
    if cfg.previous_stage is not None:
        raise fail(f"{cfg.name} is a cascade stage: adapting it is not supported", "adapt a single-stage "
                   "configuration (e.g. -c 3d_fullres or 2d)")
    out = Workspace(Path(output), ws.dataset)
    dev = pick_device(device)
    amp = autocast_dtype(dev, precision)
    (model,) = load_models(ws, [cfg.name], folds, checkpoint, dev)
    _check_output(ws, out, cfg.name, list(model.folds), force)
    target = prepare_target(spec, cfg, Path(input_dir), workers, pixel_spacing, spacing_csv)
    cases = list(target.values())
    sigmoid = spec.region_order is not None
    result = AdaptResult(out, cfg.name)
    every = 2 ** len(cfg.patch_size)  # all mirrorings of a patch
    out.dir.mkdir(parents=True, exist_ok=True)
    with stage_lock(out.dir, "adapt", exclusive=True):
        _write_model_definition(ws, out)
        names = _class_names(spec)
        for fold, net in zip(model.folds, model.networks):
            t0 = time.monotonic()
            before = mean_entropy(net, cases, cfg.patch_size, dev, sigmoid, amp)
            step_log = StepLog(f"adapt {cfg.name} fold {fold}", settings.steps)
            with Heartbeat(step_log.status) as heartbeat:
                step_log.on_log = heartbeat.beat
                rep = adapt_network(net, cases, cfg.patch_size, settings, dev, sigmoid, amp, on_step=step_log,
                                    class_names=names)
            after = mean_entropy(net, cases, cfg.patch_size, dev, sigmoid, amp)
            src_ckpt = ws.results(cfg.name, fold) / f"checkpoint_{checkpoint}.pt"
            out_kind = "sigmoid" if sigmoid else "softmax"
            balance = (f" + {settings.balance_weight:g} x KL(source's class distribution on the batch || adapted)"
                       if settings.balance_weight > 0 else "")
            record = {
                "method": f"tent: entropy of the mean {out_kind} over mirrorings{balance}, Adam on the "
                          "normalization layers' affine parameters only"
                          + (f"; stopping rule: predicted foreground fraction per class within "
                             f"{settings.max_drift:.0%} of the unadapted model's, checked every "
                             f"{settings.check_every} steps" if settings.max_drift is not None else ""),
                **asdict(settings), "mirrorings": min(settings.mirrorings or every, every),
                "source": {"workspace": str(ws.root), "dataset": ws.dataset, "config": cfg.name, "fold": fold,
                           "checkpoint": str(src_ckpt), "sha256": records.content_hash(src_ckpt)},
                "target": {"folder": str(Path(input_dir).absolute()), "cases": sorted(target)},
                "parameters_adapted": sorted(norm_affine_parameters(net)),
                "device": str(dev), "precision": str(amp).replace("torch.", "") if amp else "fp32",
                "entropy_before": before, "entropy_after": after, "loss": rep.losses, "balance": rep.balance,
                "classes": names, "fractions_before": rep.fractions_before, "fractions_after": rep.fractions_after,
                "checks": rep.checks, "stopped": rep.stopped, "kept_step": rep.kept_step,
                "steps_run": len(rep.losses), "seconds": round(time.monotonic() - t0, 2)}
            _write_fold(ws, out, cfg.name, fold, net, record)
            log.info("adapt %s fold %s: mean entropy on the target %.4f -> %.4f (%d of %d steps run, parameters "
                     "of step %d kept, %.0f s)", cfg.name, fold, before, after, len(rep.losses), settings.steps,
                     rep.kept_step, record["seconds"])
            if rep.fractions_before:
                log.info("adapt %s fold %s: predicted foreground fraction %s", cfg.name, fold, ", ".join(
                    f"{n} {a:.5f} -> {b:.5f}" for n, a, b in zip(names, rep.fractions_before, rep.fractions_after)))
            result.folds[fold] = record
    return result

