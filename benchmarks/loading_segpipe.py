"""Training data loading alone, segpipe: batches/s of its training batch stream, no network (for scale_benchmark.py).

Run with segpipe's venv python. Builds exactly what ``Trainer.run`` builds for a fold (``segpipe/training``):
``BatchStream(preprocessed, train ids of the fold, seed, plan batch size, plan patch, augment=True)`` and
``make_loader(stream, workers)`` (augmentation on, as the default trainer has it), then takes batches by the
rule of ``loading_timer.py`` (warm-up, drain the prefetch queue, time ``--batches`` batches) and writes the
arrival time of each. Nothing of the preprocessed format is read here directly, so
the script works with whatever format segpipe's own training reads.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

T0 = time.monotonic()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workspace", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--config", default="3d_fullres")
    ap.add_argument("--fold", default="0")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--batches", type=int, default=24, help="batches timed (after warm-up, drain and settle)")
    ap.add_argument("--settle", type=int, default=16, help="untimed batches after the drain (loading_timer.py)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="JSON file for the measurements")
    a = ap.parse_args()

    from loading_timer import take_batches

    from segpipe.dataset.store import load_dataset
    from segpipe.planning.plans import load_plans
    from segpipe.training.data import BatchStream, make_loader
    from segpipe.training.splits import fold_cases
    from segpipe.workspace import Workspace

    ws = Workspace(a.workspace, a.name)
    spec = load_dataset(ws)
    cfg = load_plans(ws).configuration(a.config)
    train_ids, val_ids = fold_cases(ws, a.fold, [c.id for c in spec.cases])
    stream = BatchStream(ws.preprocessed(cfg.data_identifier), train_ids, a.seed, cfg.batch_size, cfg.patch_size,
                         augment=True)
    t_setup = time.monotonic()
    its = [iter(make_loader(stream, a.workers))]
    shapes: dict = {}

    def first_shapes(b) -> None:
        if not shapes:
            shapes.update({k: list(v.shape) for k, v in b.items()})

    t = take_batches(lambda: next(its[0]), a.workers, a.batches, a.settle, on_batch=first_shapes)
    arrivals = t.pop("arrivals")
    its.clear()  # the iterator's finaliser shuts the DataLoader's worker processes down
    res = {"tool": "segpipe", "workers": a.workers, "batch_size": cfg.batch_size,
           "patch_size": list(cfg.patch_size), "batch_shapes": shapes, "augment": True, "plan_trainer": cfg.trainer,
           "n_train_cases": len(train_ids), "n_val_cases": len(val_ids),
           "import_and_setup_s": t_setup - T0, "first_batch_s": arrivals[0] - t_setup,
           "arrivals_s": [x - t_setup for x in arrivals], **t}
    with open(a.out, "w") as f:
        json.dump(res, f, indent=2)
    print(json.dumps({k: v for k, v in res.items() if k != "arrivals_s"}), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
