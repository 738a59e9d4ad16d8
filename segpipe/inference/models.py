"""Which trained models to predict with, and loading them: shared by ``segpipe predict``
(:mod:`segpipe.inference.run`) and the Python :class:`~segpipe.inference.predictor.Predictor`."""
from __future__ import annotations

import logging

import torch

from segpipe import records
from segpipe.dataset.store import load_dataset
from segpipe.errors import fail
from segpipe.inference.predict import Model, load_model
from segpipe.inference.predictors import DEFAULT_PREDICTOR, check_predictor
from segpipe.io.jsonio import read_json
from segpipe.planning.plans import Configuration, load_plans
from segpipe.workspace import Workspace

log = logging.getLogger(__name__)


def trained_folds(ws: Workspace, config: str, checkpoint: str = "final") -> list[str]:
    root = ws.results_root(config)
    if not root.is_dir():
        return []
    return sorted(p.name[len("fold_"):] for p in root.glob("fold_*") if (p / f"checkpoint_{checkpoint}.pt").is_file())


def chosen_models(ws: Workspace, configs: list[str] | None = None, folds: list[str] | None = None,
                  best: bool = False) -> tuple[list[str], list[str] | None, dict | None]:
    """``(configurations, folds, post-processing)`` to predict with: ``select``'s choice with ``best``, else
    the given configurations (default: the plan's default configuration) and folds (None: every trained one)."""
    if best:
        sel = read_json(ws.selection_json, kind="selection")
        return list(sel["configs"]), [str(f) for f in sel["folds"]], sel["postprocessing"]
    return list(configs or [load_plans(ws).default_configuration]), folds, None


def load_models(ws: Workspace, configs: list[str], folds: list[str] | None, checkpoint: str,
                device: torch.device, predictor: str = DEFAULT_PREDICTOR) -> list[Model]:
    """The trained networks of each configuration (``folds``, default every trained fold), checked against the
    current plan; a cascade stage's model carries its previous stage's (all of its trained folds). Every model
    predicts with the registered ``predictor`` (checked before anything is loaded)."""
    check_predictor(predictor)
    spec = load_dataset(ws)
    plans = load_plans(ws)
    models = []
    for c in configs:
        cfg = plans.configuration(c)
        fs = [str(f) for f in folds] if folds else trained_folds(ws, c, checkpoint)
        if not fs:
            raise fail(f"no trained fold of {c}", f"run `segpipe train --config {c} --fold 0` (or --fold each)",
                       file=ws.results_root(c))
        previous = None
        foreground: tuple[int, ...] = ()
        if cfg.previous_stage is not None:  # a cascade stage: its previous stage runs first, with all its folds
            from segpipe.preprocessing.cascade import foreground_values

            prev_cfg = plans.configuration(cfg.previous_stage)
            prev_folds = trained_folds(ws, prev_cfg.name, checkpoint)
            if not prev_folds:
                raise fail(f"{c} needs its previous stage {prev_cfg.name}, which has no trained fold",
                           f"run `segpipe train --config {prev_cfg.name} --fold each`",
                           file=ws.results_root(prev_cfg.name))
            previous = load_model(ws.results_root(prev_cfg.name), prev_cfg, prev_folds, spec.n_channels,
                                  spec.n_outputs, device, checkpoint)
            _check_folds_plan(ws, prev_cfg.name, prev_cfg, prev_folds)
            foreground = tuple(foreground_values(spec.labels, spec.region_order))
        model = load_model(ws.results_root(c), cfg, fs, spec.n_channels + len(foreground), spec.n_outputs, device,
                           checkpoint)
        model.previous, model.foreground, model.predictor = previous, foreground, predictor
        if previous is not None:
            previous.predictor = predictor
        models.append(model)
        _check_folds_plan(ws, c, cfg, fs)  # after load_model, which names a changed network more precisely
    return models

def _check_folds_plan(ws: Workspace, config: str, cfg: Configuration, folds: list[str]) -> None:
    """Refuse folds trained with another plan configuration than the current plans.json entry."""
    current = records.config_hash(cfg.to_json())
    for f in folds:
        fold_dir = ws.results(config, f)
        origin = records.read_fold_origin(fold_dir)
        if origin is None:
            log.debug("fold %s of %s has no %s (trained by an older segpipe); plan not checked", f, config,
                      records.TRAIN_ORIGIN)
        elif origin.get("plan_hash") != current:
            raise fail(f"fold {f} of {config} was trained with another plan: the plan configuration in "
                       "plans.json changed since", f"retrain it (segpipe train --config {config} --fold {f} "
                       "--force), or restore the plans.json it was trained with",
                       file=fold_dir / records.TRAIN_ORIGIN)
