"""``segpipe run``: the whole chain in one command. Each stage skips itself when its inputs did not change,
so re-running after an interruption (or after adding folds) only does what is missing."""
from __future__ import annotations

import logging
from pathlib import Path

from segpipe.evaluation.selection import format_selection, run_select
from segpipe.fingerprint.run import run_fingerprint
from segpipe.io.jsonio import read_json
from segpipe.planning.run import run_plan, summarize
from segpipe.preprocessing.run import run_preprocess
from segpipe.training.run import run_train
from segpipe.training.schedule import parse_duration
from segpipe.training.trainer import TrainSettings
from segpipe.workspace import Workspace

log = logging.getLogger(__name__)


def run_all(source: str | Path, root: Path, name: str, configs: list[str] | None = None,
            folds: list[int] | None = None, budget: str | None = None, epochs: int | None = None,
            iterations_per_epoch: int = 250, workers: int = 1, device: str = "auto", batch_size: int | None = None,
            onboard_args: list[str] | None = None) -> int:
    """Onboard ``source``, fingerprint, plan, preprocess and train every fold of every configuration, then
    select the best configuration/ensemble and post-processing; prints the cross-validation Dice."""
    from segpipe.cli import main as cli_main

    code = cli_main(["onboard", str(source), "--name", name, "--workspace", str(root), "--workers", str(workers),
                     *(onboard_args or [])])
    if code:
        return code
    ws = Workspace(root, name)
    run_fingerprint(ws, workers=workers)
    plans, _ = run_plan(ws)
    print(summarize(plans))
    configs = configs or list(plans["configurations"])
    settings = TrainSettings(epochs=epochs, iterations_per_epoch=iterations_per_epoch,
                             budget_s=parse_duration(budget) if budget else None, device=device,
                             workers=min(workers, 2), batch_size=batch_size)
    for config in configs:
        run_preprocess(ws, config, workers=workers)
        for fold in folds if folds is not None else range(5):
            res = run_train(ws, config, str(fold), settings)
            v = res["validation"]
            if v:
                log.info("%s fold %s: validation Dice %.4f", config, fold, v["foreground_mean_dice"])
    selection = run_select(ws, configs)
    print(format_selection(selection))
    return 0


def cross_validation_dice(ws: Workspace) -> float:
    from segpipe.evaluation.selection import selection_path

    return float(read_json(selection_path(ws), kind="selection")["cv_dice"]["foreground_mean_dice"])
