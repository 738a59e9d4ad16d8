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
from pathlib import Path

from segpipe.pipeline import run_all

log = logging.getLogger(__name__)

EXAMPLE = Path(__file__).parent / "data" / "example" / "hippocampus"
DEMO_NAME = "hippocampus_example"
DEMO_PREDICT_CASES = 4


def run_demo(workspace: Path, workers: int = 1, force: bool = False, budget: str = "2m",
             configs: list[str] | None = None) -> int:
    from segpipe.evaluation.evaluate import evaluate_folders
    from segpipe.inference.run import run_predict
    from segpipe.workspace import Workspace

    t0 = time.monotonic()
    workspace = Path(workspace).absolute()
    code = run_all(EXAMPLE, workspace, DEMO_NAME, configs=configs or ["2d"], budget=budget,
                   workers=workers, force_onboard=force)
    if code:
        return code
    ws = Workspace(workspace, DEMO_NAME)
    inp, ref = ws.dir / "demo_input" / "images", ws.dir / "demo_input" / "labels"
    for folder in (inp, ref):
        folder.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in (EXAMPLE / "imagesTr").iterdir())[:DEMO_PREDICT_CASES]
    for n in names:
        for src, dst in ((EXAMPLE / "imagesTr" / n, inp / n), (EXAMPLE / "labelsTr" / n, ref / n)):
            if not dst.exists():
                os.symlink(src, dst)
    out = ws.predictions("demo_best")
    written, desc = run_predict(ws, inp, out, best=True, mirror=False, workers=workers)
    summary = evaluate_folders(out, ref, ws_labels(ws), out, workers=workers)
    print(f"predicted {len(written)} example cases with {desc}: Dice {summary['foreground_mean_dice']:.4f} "
          "(cases seen in training by 4 of the 5 folds: a check that prediction works, not a score)")
    from segpipe.pipeline import cross_validation_dice

    print(f"demo finished in {(time.monotonic() - t0) / 60:.1f} min; cross-validation Dice "
          f"{cross_validation_dice(ws):.4f}")
    return 0


def ws_labels(ws) -> dict[str, int]:
    from segpipe.dataset.onboard import load_dataset

    return load_dataset(ws).labels
