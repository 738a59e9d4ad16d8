"""``segpipe demo`` / ``make demo``: every stage on the example data shipped inside the package.

20 hippocampus MRI cases: onboard, fingerprint, plan (all configurations), preprocess and train 5 folds of the
2d configuration on a short time budget each (on a CPU, 2d learns the most per minute; pass ``--config`` to
train others), select the best configuration and post-processing from cross-validation, predict four cases
with it and evaluate them. On 2 CPU cores this takes about 12 minutes; the Dice is what two minutes of
training per fold reach, not what segpipe reaches with a real budget.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from segpipe.dataset.store import load_dataset
from segpipe.evaluation.evaluate import evaluate_folders
from segpipe.inference.run import run_predict
from segpipe.pipeline import RunResult, report_at_end, run_all

log = logging.getLogger(__name__)

EXAMPLE = Path(__file__).parent / "data" / "example" / "hippocampus"
DEMO_NAME = "hippocampus_example"
DEMO_PREDICT_CASES = 4


@dataclass
class DemoResult:
    """The demo's outcome: the chain's result, the predicted files, the Dice of those predictions and the
    cross-validation Dice of the selected model, the wall time in minutes, and the report's page (None when it
    could not be written)."""

    run: RunResult
    predicted: list[str]
    prediction_dice: float
    cross_validation_dice: float
    minutes: float
    report: Path | None = None


def run_demo(workspace: Path, workers: int = 1, force: bool = False, budget: str = "2m",
             configs: list[str] | None = None, echo: Callable[[str], None] | None = None, device: str = "auto",
             precision: str = "auto") -> DemoResult:
    """Run the demo in ``workspace`` on ``device`` (auto, cpu, cuda) with ``precision``; results go to ``echo``
    when given (the command line passes ``print``)."""
    say = echo or (lambda text: None)
    t0 = time.monotonic()
    workspace = Path(workspace).absolute()
    run = run_all(EXAMPLE, workspace, DEMO_NAME, configs=configs or ["2d"], budget=budget, workers=workers,
                  force_onboard=force, echo=say, device=device, precision=precision, report=False)
    ws = run.workspace
    inp, ref = ws.scratch("demo_input") / "images", ws.scratch("demo_input") / "labels"
    for folder in (inp, ref):
        folder.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in (EXAMPLE / "imagesTr").iterdir())[:DEMO_PREDICT_CASES]
    for n in names:
        for src, dst in ((EXAMPLE / "imagesTr" / n, inp / n), (EXAMPLE / "labelsTr" / n, ref / n)):
            if not dst.exists():
                os.symlink(src, dst)
    out = ws.predictions("demo_best")
    written, desc = run_predict(ws, inp, out, best=True, mirror=False, workers=workers, device=device,
                                precision=precision)
    summary = evaluate_folders(out, ref, load_dataset(ws).labels, out, workers=workers)
    result = DemoResult(run, written, float(summary["foreground_mean_dice"]),
                        run.cross_validation_dice if run.cross_validation_dice is not None else float("nan"),
                        (time.monotonic() - t0) / 60)
    say(f"predicted {len(written)} example cases with {desc}: Dice {result.prediction_dice:.4f} "
        "(cases seen in training by 4 of the 5 folds: a check that prediction works, not a score)")
    say(f"demo finished in {result.minutes:.1f} min; cross-validation Dice {result.cross_validation_dice:.4f}")
    result.report = report_at_end(ws, say)  # last: `make demo` ends with the Dice and the report's path
    return result
