"""Drives nnU-Net v2's trainer through its Python API for the benchmark (run with the nnU-Net venv's python).

Not part of segpipe; only imports nnU-Net (no nnU-Net code is copied). Two modes:

* ``throughput``: the default trainer with ``num_iterations_per_epoch = N``, ``num_val_iterations_per_epoch = 1``
  and ``num_epochs = E`` (epoch 0 is the warm-up); the time of each epoch's training iterations (from the
  start of the epoch to the end of its last ``train_step``, data loading waits included) is measured.
* ``budget``: the default trainer, everything default, stopped once ``--minutes`` of training have passed
  (checked before every training iteration, clock started when ``on_train_start`` has finished), then
  ``on_train_end`` writes ``checkpoint_final.pth`` as a normal end of training does.

The subclass is named ``nnUNetTrainer`` on purpose: its output folder is then
``nnUNetTrainer__nnUNetPlans__3d_fullres`` and the checkpoint's ``trainer_name`` is ``nnUNetTrainer``, so the
stock ``nnUNetv2_predict`` rebuilds the (unchanged) network with the stock class. Nothing is added to nnU-Net's
package (its trainer lookup would import every module there).
"""
import argparse
import json
import multiprocessing
import os
import sys
import time

import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer as _StockTrainer


class _BudgetReached(Exception):
    pass


SETTINGS: dict = {}


class nnUNetTrainer(_StockTrainer):  # noqa: N801 - same name as the stock class on purpose (see module doc)
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if SETTINGS.get("iterations"):
            self.num_iterations_per_epoch = SETTINGS["iterations"]
            self.num_val_iterations_per_epoch = 1
            self.num_epochs = SETTINGS["epochs"]
        self.bench_train_start = None
        self.bench_epoch_t0 = None
        self.bench_last_step_end = None
        self.bench_epochs = []  # per epoch: iterations, training seconds
        self.bench_iterations = 0
        self.bench_epoch_iterations = 0

    def _set_batch_size_and_oversample(self):
        super()._set_batch_size_and_oversample()
        if SETTINGS.get("batch_size"):
            self.batch_size = SETTINGS["batch_size"]

    def on_train_start(self):
        super().on_train_start()
        self.bench_train_start = time.monotonic()

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.bench_epoch_t0 = time.monotonic()
        self.bench_epoch_iterations = 0

    def train_step(self, batch: dict) -> dict:
        minutes = SETTINGS.get("minutes")
        if minutes is not None and time.monotonic() - self.bench_train_start >= minutes * 60:
            self._bench_close_epoch()
            raise _BudgetReached()
        out = super().train_step(batch)
        self.bench_last_step_end = time.monotonic()
        self.bench_iterations += 1
        self.bench_epoch_iterations += 1
        return out

    def _bench_close_epoch(self):
        if self.bench_epoch_iterations:
            self.bench_epochs.append({"iterations": self.bench_epoch_iterations,
                                      "train_seconds": self.bench_last_step_end - self.bench_epoch_t0})
            self.bench_epoch_iterations = 0

    def on_train_epoch_end(self, train_outputs):
        self._bench_close_epoch()
        super().on_train_epoch_end(train_outputs)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["throughput", "budget"])
    p.add_argument("--dataset", required=True, help="e.g. Dataset004_Hippocampus")
    p.add_argument("--config", default="3d_fullres")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--iterations", type=int, default=15)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--minutes", type=float, default=8.0)
    p.add_argument("--batch-size", type=int, default=0, help="throughput mode: batch size (0: the plan's)")
    p.add_argument("--out", required=True, help="JSON file for the measurements")
    a = p.parse_args()

    if a.mode == "throughput":
        SETTINGS.update(iterations=a.iterations, epochs=a.epochs, batch_size=a.batch_size)
    else:
        SETTINGS.update(minutes=a.minutes)

    # as nnUNetv2_train -device cpu does
    torch.set_num_threads(multiprocessing.cpu_count())
    base = join(nnUNet_preprocessed, a.dataset)
    plans = load_json(join(base, "nnUNetPlans.json"))
    dataset_json = load_json(join(base, "dataset.json"))
    plans["continue_training"] = False  # as nnunetv2.run.run_training.get_trainer_from_args sets it
    trainer = nnUNetTrainer(plans, a.config, a.fold, dataset_json, device=torch.device("cpu"))

    t0 = time.monotonic()
    stopped = False
    try:
        trainer.run_training()
    except _BudgetReached:
        stopped = True
        trainer.on_train_end()
    end = time.monotonic()
    res = {"mode": a.mode, "stopped_by_budget": stopped, "epochs": trainer.bench_epochs,
           "iterations": trainer.bench_iterations, "batch_size": trainer.batch_size,
           "patch_size": list(trainer.configuration_manager.patch_size),
           "num_iterations_per_epoch": trainer.num_iterations_per_epoch,
           "training_seconds": end - trainer.bench_train_start if trainer.bench_train_start else None,
           "run_training_seconds": end - t0, "torch_threads": torch.get_num_threads(),
           "n_proc_DA": os.environ.get("nnUNet_n_proc_DA"), "output_folder": trainer.output_folder}
    with open(a.out, "w") as f:
        json.dump(res, f, indent=2)
    print(json.dumps(res), flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # do not wait for data-augmentation threads


if __name__ == "__main__":
    main()
