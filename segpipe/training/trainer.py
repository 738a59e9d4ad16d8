"""The training loop, and the registry of trainers (variants are subclasses registered by name).

One run trains one fold of one configuration: SGD with Nesterov momentum, poly learning-rate decay over the
run (epochs x iterations, or the wall-clock budget), Dice + cross-entropy with deep supervision, gradient
clipping, AMP on CUDA, and after every epoch a pseudo-Dice on validation patches and an atomic checkpoint.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from segpipe.devices import autocast_dtype, pick_device
from segpipe.errors import did_you_mean, fail
from segpipe.networks import build_network
from segpipe.training import distributed as dist
from segpipe.training.checkpoint import check_compatible, load_checkpoint, save_checkpoint
from segpipe.training.data import BatchStream, CaseStore, make_batch, make_loader
from segpipe.training.logs import plot_progress, write_log
from segpipe.training.loss import DeepSupervisionLoss, DiceCELoss, deep_supervision_weights, downsample_targets
from segpipe.training.schedule import poly_lr, training_progress

log = logging.getLogger(__name__)

DEFAULT_EPOCHS = 1000
DEFAULT_ITERATIONS = 250
EMA_WEIGHT = 0.9  # pseudo-Dice EMA: ema = 0.9 * ema + 0.1 * new


@dataclass
class TrainSettings:
    """How long and how to train. Without ``epochs`` and ``budget_s``, trains ``DEFAULT_EPOCHS`` epochs."""

    epochs: int | None = None
    iterations_per_epoch: int = DEFAULT_ITERATIONS
    val_iterations: int | None = None
    budget_s: float | None = None
    lr: float = 1e-2
    momentum: float = 0.99
    weight_decay: float = 3e-5
    grad_clip: float = 12.0
    seed: int = 0
    workers: int = 1
    device: str = "auto"
    augment: bool = True
    threads: int | None = None
    batch_size: int | None = None
    precision: str = "auto"
    extra: dict = field(default_factory=dict)

    def resolved_epochs(self) -> int | None:
        if self.epochs is None and self.budget_s is None:
            return DEFAULT_EPOCHS
        return self.epochs

    def resolved_val_iterations(self) -> int:
        if self.val_iterations is not None:
            return self.val_iterations
        return int(min(50, max(2, self.iterations_per_epoch // 5)))


TRAINERS: dict[str, type["Trainer"]] = {}


def register_trainer(name: str) -> Callable[[type["Trainer"]], type["Trainer"]]:
    def deco(cls: type["Trainer"]) -> type["Trainer"]:
        TRAINERS[name] = cls
        return cls
    return deco


def get_trainer(name: str) -> type["Trainer"]:
    if name not in TRAINERS:
        raise fail(f"unknown trainer '{name}'{did_you_mean(name, TRAINERS)}",
                   f"use one of: {', '.join(sorted(TRAINERS))}")
    return TRAINERS[name]


@register_trainer("default")
class Trainer:
    """Trains one fold. ``config`` is the plan's configuration entry; arrays come from ``preprocessed``."""

    def __init__(self, config: dict, n_channels: int, n_classes: int, preprocessed: Path, train_ids: list[str],
                 val_ids: list[str], out_dir: Path, settings: TrainSettings, config_name: str = ""):
        self.config, self.settings = config, settings
        self.n_channels, self.n_classes = n_channels, n_classes
        self.preprocessed, self.train_ids, self.val_ids = Path(preprocessed), train_ids, val_ids
        self.out = Path(out_dir)
        self.config_name = config_name
        self.patch = list(config["patch_size"])
        self.device = pick_device(settings.device)
        self.rank, self.world, _ = dist.init(self.device.type)
        self.batch_size = dist.share(int(settings.batch_size or config["batch_size"]), self.rank, self.world)
        if settings.threads:
            torch.set_num_threads(settings.threads)
        torch.manual_seed(settings.seed)
        self.network = build_network(config["network"], n_channels, n_classes, deep_supervision=True).to(self.device)
        self.model = self.network
        if self.world > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.network, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.optimizer = torch.optim.SGD(self.network.parameters(), lr=settings.lr, momentum=settings.momentum,
                                         nesterov=True, weight_decay=settings.weight_decay)
        self.amp_dtype = autocast_dtype(self.device, settings.precision)
        self.amp = self.amp_dtype is not None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        n_out = config["network"]["n_stages"] - 1
        self.loss = DeepSupervisionLoss(DiceCELoss(batch_dice=bool(config.get("batch_dice", False))),
                                        deep_supervision_weights(n_out))
        self.strides = config["network"]["strides"]
        self.state = {"epoch": 0, "iteration": 0, "elapsed_s": 0.0, "val_seconds": 0.0, "ema_pseudo_dice": None,
                      "best_ema_pseudo_dice": None, "history": []}

    # ---------------------------------------------------------------- checkpoints
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def checkpoint_state(self) -> dict:
        return {"network": self.network.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "torch_rng": torch.get_rng_state(),
                "network_plan": self.config["network"], "config_name": self.config_name,
                "patch_size": self.patch, "n_channels": self.n_channels, "n_classes": self.n_classes,
                "settings": {k: v for k, v in asdict(self.settings).items() if k != "extra"}, **self.state}

    def load(self, path: Path) -> None:
        st = load_checkpoint(path, map_location=self.device)
        check_compatible(st, self.config["network"], path)
        self.network.load_state_dict(st["network"])
        self.optimizer.load_state_dict(st["optimizer"])
        self.scaler.load_state_dict(st["scaler"])
        torch.set_rng_state(st["torch_rng"].cpu())
        for k in self.state:
            self.state[k] = st[k]
        log.info("resumed from %s (epoch %d, iteration %d)", path, st["epoch"], st["iteration"])

    def save(self, name: str) -> None:
        if self.is_main:
            save_checkpoint(self.out / name, self.checkpoint_state())

    # ---------------------------------------------------------------- loop
    def transforms_enabled(self) -> bool:
        return self.settings.augment

    def train_step(self, batch: dict, lr: float) -> float:
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        data = torch.as_tensor(batch["data"]).to(self.device, non_blocking=True)
        target = torch.as_tensor(batch["seg"]).to(self.device, non_blocking=True)
        targets = downsample_targets(target, self.strides)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            out = self.model(data)
            loss = self.loss(out, targets)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.settings.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach().item())

    def validate_patches(self, store: CaseStore) -> tuple[float, list[float]]:
        """Loss and per-class pseudo-Dice on fixed validation patches (no augmentation)."""
        self.network.eval()
        n_fg = self.n_classes - 1
        tp = torch.zeros(n_fg, dtype=torch.float64)
        fp, fn = tp.clone(), tp.clone()
        losses = []
        with torch.inference_mode():
            for v in range(self.settings.resolved_val_iterations()):
                b = make_batch(store, v, self.settings.seed, self.batch_size, self.patch, augment=False,
                               stream=1 + 2 * self.rank)
                data = torch.from_numpy(b["data"]).to(self.device)
                target = torch.from_numpy(b["seg"]).to(self.device)
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                    out = self.network(data)
                    losses.append(float(self.loss(out, downsample_targets(target, self.strides)).item()))
                pred = out[0].argmax(1) if isinstance(out, (list, tuple)) else out.argmax(1)
                ref = target[:, 0]
                valid = ref >= 0
                for c in range(1, self.n_classes):
                    p, r = (pred == c) & valid, (ref == c) & valid
                    tp[c - 1] += float((p & r).sum())
                    fp[c - 1] += float((p & ~r).sum())
                    fn[c - 1] += float((~p & r).sum())
        stats = dist.sum_tensor(torch.stack([tp, fp, fn]).to(self.device)).cpu()
        tp, fp, fn = stats
        dice = [float(2 * a / (2 * a + b + c)) if (2 * a + b + c) > 0 else float("nan")
                for a, b, c in zip(tp, fp, fn)]
        loss = float(np.mean(losses)) if losses else float("nan")
        self.network.train()
        return loss, dice

    def run(self) -> dict:
        """Train until the epochs or the budget are used up; returns the final state."""
        s = self.settings
        self.out.mkdir(parents=True, exist_ok=True)
        epochs = s.resolved_epochs()
        total_iterations = epochs * s.iterations_per_epoch if epochs else None
        stream = BatchStream(self.preprocessed, self.train_ids, s.seed, self.batch_size, self.patch,
                             augment=self.transforms_enabled(), start=self.state["iteration"], stream=2 * self.rank)
        loader = iter(make_loader(stream, s.workers))
        val_store = CaseStore(self.preprocessed, self.val_ids)
        self.network.train()
        while True:
            if epochs is not None and self.state["epoch"] >= epochs:
                break
            if s.budget_s is not None and dist.any_true(
                    self.state["elapsed_s"] + self.state["val_seconds"] >= s.budget_s, self.device):
                break
            t0 = time.monotonic()
            losses, lr = [], s.lr
            bar = tqdm(range(s.iterations_per_epoch), desc=f"epoch {self.state['epoch']}", unit="it",
                       disable=None if self.is_main else True, leave=False)
            for _ in bar:
                # with a budget, stop early enough that this epoch's validation still fits in it
                elapsed = self.state["elapsed_s"] + time.monotonic() - t0 + self.state.get("val_seconds", 0.0)
                progress = training_progress(self.state["iteration"], total_iterations, elapsed, s.budget_s)
                if s.budget_s is not None and dist.any_true(progress >= 1.0, self.device):
                    break
                lr = poly_lr(s.lr, progress)
                losses.append(self.train_step(next(loader), lr))
                self.state["iteration"] += 1
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            bar.close()
            train_s = time.monotonic() - t0
            val_loss, dice = self.validate_patches(val_store)
            self.state["val_seconds"] = time.monotonic() - t0 - train_s
            valid = [d for d in dice if not math.isnan(d)]
            mean_dice = float(np.mean(valid)) if valid else float("nan")
            ema = self.state["ema_pseudo_dice"]
            ema = mean_dice if ema is None or math.isnan(ema) else EMA_WEIGHT * ema + (1 - EMA_WEIGHT) * mean_dice
            self.state["ema_pseudo_dice"] = ema
            self.state["epoch"] += 1
            self.state["elapsed_s"] += time.monotonic() - t0
            entry = {"epoch": self.state["epoch"] - 1, "iterations": len(losses),
                     "train_loss": float(np.mean(losses)) if losses else float("nan"), "val_loss": val_loss,
                     "pseudo_dice": mean_dice, "pseudo_dice_per_class": dice, "ema_pseudo_dice": ema, "lr": lr,
                     "train_seconds": round(train_s, 3), "epoch_seconds": round(time.monotonic() - t0, 3),
                     "elapsed_seconds": round(self.state["elapsed_s"], 3)}
            self.state["history"].append(entry)
            best = self.state["best_ema_pseudo_dice"]
            if not math.isnan(ema) and (best is None or ema > best):
                self.state["best_ema_pseudo_dice"] = ema
                self.save("checkpoint_best.pt")
            self.save("checkpoint_latest.pt")
            if self.is_main:
                write_log(self.out / "log.jsonl", self.state["history"])
                plot_progress(self.out / "progress.png", self.state["history"])
                log.info("epoch %d: train loss %.4f, val loss %.4f, pseudo Dice %s (EMA %.4f), lr %.5f, %.1f s",
                         entry["epoch"], entry["train_loss"], val_loss, [round(d, 4) for d in dice], ema, lr,
                         entry["epoch_seconds"])
        self.save("checkpoint_final.pt")
        dist.barrier()
        return self.state


@register_trainer("noaug")
class NoAugmentationTrainer(Trainer):
    """The default trainer without data augmentation (for debugging and very small budgets)."""

    def transforms_enabled(self) -> bool:
        return False
