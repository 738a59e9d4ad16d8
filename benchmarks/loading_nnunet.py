"""Training data loading alone, nnU-Net v2: batches/s of its training dataloader, no network (for
scale_benchmark.py).

Run with the nnU-Net venv's python, with nnUNet_preprocessed / nnUNet_results set and ``nnUNet_n_proc_DA`` =
the number of augmentation processes. Like ``nnunet_driver.py`` it only imports nnU-Net (nothing is copied).

The stock ``nnUNetTrainer`` (3d_fullres, the fold's ``splits_final.json`` entry, device cpu) is constructed and
``_set_batch_size_and_oversample()`` is called (the first thing ``initialize()`` does; the network, optimizer and
loss that ``initialize()`` would build next are not needed for loading). Then its own ``get_dataloaders()``
builds the ``nnUNetDataLoader`` with the default training augmentation (``get_training_transforms``) inside a
``NonDetMultiThreadedAugmenter`` with ``nnUNet_n_proc_DA`` processes, and takes the first training batch (and one
validation batch) itself. The validation augmenter is shut down at once, so that only the training pipeline
uses the CPU while it is timed. Then batches are taken by the rule of ``loading_timer.py`` (the batch
``get_dataloaders`` took counts toward the warm-up; the batches that queued up meanwhile are drained before the
clock starts), as in ``loading_segpipe.py``.
"""
import argparse
import json
import os
import sys
import time

T0 = time.monotonic()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", required=True, help="e.g. Dataset520_HeadNeck20")
    ap.add_argument("--config", default="3d_fullres")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--batches", type=int, default=24, help="batches timed (after warm-up, drain and settle)")
    ap.add_argument("--settle", type=int, default=16, help="untimed batches after the drain (loading_timer.py)")
    ap.add_argument("--out", required=True, help="JSON file for the measurements")
    a = ap.parse_args()

    import torch
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from loading_timer import take_batches
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

    base = join(nnUNet_preprocessed, a.dataset)
    plans = load_json(join(base, "nnUNetPlans.json"))
    dataset_json = load_json(join(base, "dataset.json"))
    plans["continue_training"] = False  # as nnunetv2.run.run_training.get_trainer_from_args sets it
    trainer = nnUNetTrainer(plans, a.config, a.fold, dataset_json, device=torch.device("cpu"))
    trainer._set_batch_size_and_oversample()
    workers = get_allowed_n_proc_DA()
    t_setup = time.monotonic()
    dl_train, dl_val = trainer.get_dataloaders()  # takes the first training batch itself
    arrivals = [time.monotonic()]
    if hasattr(dl_val, "_finish"):
        dl_val._finish()
    shapes: dict = {}

    def first_shapes(b) -> None:
        if not shapes:
            tg = b["target"]
            shapes.update({"data": list(b["data"].shape),
                           "target": [list(x.shape) for x in tg] if isinstance(tg, list) else list(tg.shape)})

    t = take_batches(lambda: next(dl_train), workers, a.batches, a.settle, taken=arrivals, on_batch=first_shapes)
    arrivals = t.pop("arrivals")
    if hasattr(dl_train, "_finish"):
        dl_train._finish()  # stop the augmentation processes (os._exit below would leave them orphaned)
    tr_keys, val_keys = trainer.do_split()
    res = {"tool": "nnunet", "workers": workers, "batch_size": trainer.batch_size,
           "patch_size": [int(x) for x in trainer.configuration_manager.patch_size], "batch_shapes": shapes,
           "n_train_cases": len(tr_keys), "n_val_cases": len(val_keys), "import_and_setup_s": t_setup - T0,
           "first_batch_s": arrivals[0] - t_setup, "arrivals_s": [x - t_setup for x in arrivals], **t,
           "n_proc_DA": os.environ.get("nnUNet_n_proc_DA")}
    with open(a.out, "w") as f:
        json.dump(res, f, indent=2)
    print(json.dumps({k: v for k, v in res.items() if k != "arrivals_s"}), flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # do not wait for the augmenter's processes and threads


if __name__ == "__main__":
    main()
