"""``segpipe run``: the whole chain in one command. Each stage skips itself when its inputs did not change,
so re-running after an interruption (or after adding folds) only does what is missing.

This module (and :mod:`segpipe.demo`) is the one place that calls several stage runners; stage runners never
call each other. It returns data (:class:`RunResult`); the command line turns it into output and an exit code.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segpipe.dataset.formats.common import OnboardOptions
from segpipe.dataset.onboard import onboard
from segpipe.errors import SegpipeError
from segpipe.evaluation.selection import format_selection, run_select
from segpipe.fingerprint.run import run_fingerprint
from segpipe.planning.plans import Plans
from segpipe.planning.run import run_plan, summarize
from segpipe.preprocessing.run import run_preprocess
from segpipe.report import write_report
from segpipe.training.run import run_train
from segpipe.training.schedule import parse_duration
from segpipe.training.splits import fold_names
from segpipe.training.trainer import TrainSettings, get_trainer
from segpipe.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What ``segpipe run`` did: the workspace, the plans, each trained fold's result (``run_train``'s dict:
    ``state``, ``validation`` summary, ``out``) per configuration, and ``select``'s choice (None when not every
    fold was trained), and the report's page (None when it could not be written)."""

    workspace: Workspace
    plans: Plans
    trained: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    selection: dict[str, Any] | None = None
    report: Path | None = None

    @property
    def cross_validation_dice(self) -> float | None:
        """Mean foreground Dice of the selected model over all cross-validation cases (None without select)."""
        return None if self.selection is None else float(self.selection["cv_dice"]["foreground_mean_dice"])


def run_all(source: str | Path, root: Path, name: str, configs: list[str] | None = None,
            folds: list[int] | None = None, budget: str | None = None, epochs: int | None = None,
            iterations_per_epoch: int | None = None, workers: int = 1, device: str = "auto", precision: str = "auto",
            batch_size: int | None = None, options: OnboardOptions | None = None, copy: bool = False,
            allow_external_links: bool = False, force_onboard: bool = False,
            echo: Callable[[str], None] | None = None, report: bool = True, trainer: str | None = None
            ) -> RunResult:
    """Onboard ``source``, fingerprint, plan, preprocess and train every fold of every configuration, then
    select the best configuration/ensemble and post-processing (``selection.json``).

    Stages are called as functions (never through the command line), so logging settings hold throughout.
    Onboarding takes ``options`` (default: only the name), ``copy``, ``allow_external_links`` and
    ``force_onboard`` (``segpipe run --onboard-args`` parses them from `segpipe onboard` options). ``folds``
    default to every fold of splits.json (5, fewer for data sets of fewer cases). The results the user asked for
    (the plans, each fold's outcome, the selection and, with ``report``, the path of the report written at the
    end) go to ``echo`` when given (the command line passes ``print``); progress is logged. ``trainer``: a
    registered trainer for every fold instead of the plan's (e.g. ``bcp`` for a data set with unlabelled
    images), checked before anything is written.
    """
    if trainer is not None:
        get_trainer(trainer)  # an unknown name fails here, with a did-you-mean, not after preprocessing
    say = echo or (lambda text: None)
    options = options or OnboardOptions(name=name)
    options.name = name
    ws, spec, warnings, skipped = onboard(source, root, options, copy=copy, workers=workers, force=force_onboard,
                                          allow_external_links=allow_external_links)
    for w in warnings:
        log.warning(w.format())
    log.info("%s: %s: %d cases -> %s", name, "unchanged, skipped" if skipped else "onboarded", len(spec.cases),
             ws.dir)
    run_fingerprint(ws, workers=workers)
    budget_s = parse_duration(budget) if budget else None
    plans, _ = run_plan(ws, budget_s=budget_s, device=device, precision=precision)
    say(summarize(plans))
    result = RunResult(ws, plans)
    # with a budget, the configuration the plan chose for it; without, every planned one (as nnU-Net)
    configs = configs or ([plans.default_configuration] if budget_s else list(plans.configurations))
    settings = TrainSettings(epochs=epochs, iterations_per_epoch=iterations_per_epoch, budget_s=budget_s,
                             device=device, precision=precision, workers=min(workers, 2), batch_size=batch_size)
    all_folds = fold_names(ws)
    fold_list = [str(f) for f in folds] if folds is not None else all_folds
    for config in configs:
        previous = plans.configuration(config).previous_stage
        if previous is not None and not set(fold_list) >= set(all_folds):
            log.info("%s skipped: a cascade stage trains on %s's predictions of every fold; %s trained", config,
                     previous, fold_list)
            continue
        run_preprocess(ws, config, workers=workers)
        for fold in fold_list:
            res = run_train(ws, config, fold, settings, trainer=trainer)
            result.trained.setdefault(config, {})[fold] = res
            v = res["validation"]
            if v:
                say(f"{config} fold {fold}: {res['state']['iteration']} iterations, "
                    f"{res['state']['elapsed_s'] / 60:.1f} min; validation Dice {v['foreground_mean_dice']:.4f}")
    if set(fold_list) >= set(all_folds):
        result.selection = run_select(ws, configs)
        say(format_selection(result.selection))
    else:
        log.info("select skipped: it compares cross-validation over all %d folds; %s trained", len(all_folds),
                 fold_list)
    if report:
        result.report = report_at_end(ws, say)
    return result


def report_at_end(ws: Workspace, say: Callable[[str], None]) -> Path | None:
    """Write the data set's report (``segpipe report``) and ``say`` its path. A report that cannot be written
    is a warning naming the problem, never a failure of the run it reports on; returns None then."""
    try:
        index = write_report(ws).index
    except Exception as e:  # noqa: BLE001 - the run's results are complete; only the report is missing
        why = e.format() if isinstance(e, SegpipeError) else f"{type(e).__name__}: {e}"
        log.warning("the report could not be written: %s; the run's results are complete (make the report with "
                    "`segpipe report --workspace %s --name %s`)", why, ws.root, ws.dataset)
        return None
    say(f"report: {index}")
    return index
