"""The training loop, and the registry of trainers (variants are subclasses registered by name).

One run trains one fold of one configuration: SGD with Nesterov momentum, poly learning-rate decay over the
run (epochs x iterations, or the wall-clock budget), Dice + cross-entropy with deep supervision, gradient
clipping, AMP on CUDA, and after every epoch a pseudo-Dice on validation patches and an atomic checkpoint.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypedDict, cast

import numpy as np
import torch
from tqdm import tqdm

from segpipe import plugins
from segpipe.dataset.regions import region_targets
from segpipe.devices import autocast_dtype, pick_device
from segpipe.errors import SegpipeError, fail
from segpipe.io.jsonio import read_json
from segpipe.networks.registry import build_from_spec, check_device, network_capabilities, network_spec
from segpipe.planning.plans import Configuration
from segpipe.progress import Heartbeat
from segpipe.training import distributed as dist
from segpipe.training.budget import BudgetSchedule, FinalValidationCost, final_validation_cost, plan_budget
from segpipe.training.checkpoint import check_compatible, load_checkpoint, save_checkpoint
from segpipe.training.data import BatchStream, CascadeInput, CaseStore, make_batch, make_loader
from segpipe.training.logs import plot_progress, write_log
from segpipe.training.loss import (
    BatchMeta,
    DeepSupervisionLoss,
    choose_loss,
    deep_supervision_weights,
    downsample_targets,
    get_loss,
)
from segpipe.training.schedule import poly_lr, training_progress

log = logging.getLogger(__name__)

DEFAULT_EPOCHS = 1000
DEFAULT_ITERATIONS = 250
EMA_WEIGHT = 0.9  # pseudo-Dice EMA: ema = 0.9 * ema + 0.1 * new
PROGRESS_LINE_S = 30.0  # without a terminal, a progress line at least this often


@dataclass
class TrainSettings:
    """How long and how to train. Without ``epochs`` and ``budget_s``, trains ``DEFAULT_EPOCHS`` epochs.

    ``budget_s`` (seconds) covers the whole ``train`` command: start-up, training, per-epoch validation and
    the final validation (see :mod:`segpipe.training.budget`); ``started_at`` is the ``time.monotonic()`` at
    which the command started (default: when training starts). ``iterations_per_epoch`` and
    ``val_iterations`` default to 250 and iterations/5 (2..50), or with a budget to what fits it.
    """

    epochs: int | None = None
    iterations_per_epoch: int | None = None
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
    final_validation: bool = True
    started_at: float | None = None
    extra: dict = field(default_factory=dict)

    def check(self) -> TrainSettings:
        """Refuse settings that cannot train (a user error naming the option and the fix)."""
        bad: list[tuple[str, object, str]] = []
        if self.budget_s is not None and not (math.isfinite(self.budget_s) and self.budget_s > 0):
            bad.append(("--budget", f"{self.budget_s} s", "give a positive duration, e.g. 20m"))
        for name, v in (("--epochs", self.epochs), ("--iterations-per-epoch", self.iterations_per_epoch),
                        ("--batch-size", self.batch_size)):
            if v is not None and int(v) < 1:
                bad.append((name, v, "give a whole number of at least 1"))
        if self.val_iterations is not None and self.val_iterations < 1:
            bad.append(("--val-iterations", self.val_iterations, "give at least 1"))
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            bad.append(("--lr", self.lr, "give a positive learning rate, e.g. 0.01"))
        if bad:
            from segpipe.errors import Problem, SegpipeError

            raise SegpipeError([Problem(f"{n} {v} cannot train", fix) for n, v, fix in bad])
        return self

    def resolved_epochs(self) -> int | None:
        if self.epochs is None and self.budget_s is None:
            return DEFAULT_EPOCHS
        return self.epochs

    def resolved_iterations_per_epoch(self) -> int:
        return int(self.iterations_per_epoch or DEFAULT_ITERATIONS)

    def resolved_val_iterations(self) -> int:
        if self.val_iterations is not None:
            return self.val_iterations
        return int(min(50, max(2, self.resolved_iterations_per_epoch() // 5)))


class TrainState(TypedDict):
    """The loop's state, saved in every checkpoint beside the weights; ``history`` has one entry per epoch (as in
    log.jsonl). Times in seconds; the pseudo-Dice EMAs are None before the first epoch."""

    epoch: int
    iteration: int
    elapsed_s: float
    val_seconds: float
    ema_pseudo_dice: float | None
    best_ema_pseudo_dice: float | None
    history: list[dict[str, Any]]


TRAINERS: dict[str, type[Trainer]] = {}


register_trainer: plugins.Registrar[type[Trainer]] = plugins.Registrar("trainer")
"""Decorator: ``@register_trainer(name)`` registers a :class:`Trainer` subclass (plug-ins: through
``segpipe.plugins``)."""


def get_trainer(name: str) -> type[Trainer]:
    cls: type[Trainer] = plugins.lookup("trainer", name,
                                        "use one of: {names} (or install the plug-in that provides it)")
    return cls


def trainer_name(cls: type[Trainer]) -> str:
    """The name ``cls`` is registered under (its class name when it is not registered)."""
    return next((k for k, c in TRAINERS.items() if c is cls), cls.__name__)


@register_trainer("default")
class Trainer:
    """Trains one fold. ``config`` is the plan's configuration; arrays come from ``preprocessed``.

    ``loss_name`` (a registered loss, :data:`segpipe.training.loss.LOSSES`) is this trainer's loss unless the
    configuration names one (``"loss"`` in plans.json); None: ``dice-ce``, or ``region-dice-bce`` for regions."""

    loss_name: str | None = None

    def __init__(self, config: Configuration, n_channels: int, n_classes: int, preprocessed: Path,
                 train_ids: list[str], val_ids: list[str], out_dir: Path, settings: TrainSettings,
                 cascade: CascadeInput | None = None, regions: Sequence[Sequence[int]] | None = None,
                 unlabelled_ids: Sequence[str] = (), attributes: Mapping[str, Mapping[str, str]] | None = None):
        """``n_channels`` counts every network input channel: for a cascade stage (``cascade`` given), the image
        channels plus one per foreground label of the previous stage's segmentation. ``n_classes`` is the
        number of network outputs: classes (softmax) or, with ``regions`` (region-based training, one sigmoid
        output per region: the label values that make it up), ``len(regions)``. ``unlabelled_ids``: the data
        set's unlabelled images (preprocessed beside the others), for trainers that learn from them.
        ``attributes``: case id -> the case's attributes (``onboard --attributes``), given to the loss in every
        batch's metadata (``meta["attributes"]``)."""
        self.config, self.settings = config, settings
        self.unlabelled_ids = list(unlabelled_ids)
        self.attributes = {str(k): dict(v) for k, v in (attributes or {}).items()}
        self.progress = 0.0  # share of the training done (iterations or budget), set before every step
        self.cascade = cascade
        self.regions = [tuple(int(v) for v in r) for r in regions] if regions is not None else None
        if self.regions is not None and len(self.regions) != n_classes:
            raise ValueError(f"{n_classes} network outputs for {len(self.regions)} regions")
        self.n_channels, self.n_classes = n_channels, n_classes
        self.preprocessed, self.train_ids, self.val_ids = Path(preprocessed), train_ids, val_ids
        self.out = Path(out_dir)
        self.config_name = config.name
        self.patch = list(config.patch_size)
        self.device = pick_device(settings.device)
        self.rank, self.world, _ = dist.init(self.device.type)
        self.batch_size = dist.share(int(settings.batch_size or config.batch_size), self.rank, self.world)
        if settings.threads:
            torch.set_num_threads(settings.threads)
        torch.manual_seed(settings.seed)
        check_device(config.network.name, self.device)
        self.network_spec = network_spec(config, n_channels, n_classes, deep_supervision=True)
        # outputs the loss weighs: the network's deep-supervision levels (1 for a network without)
        self.n_levels = network_capabilities(config.network.name).output_levels(self.network_spec)
        self.network = build_from_spec(self.network_spec).to(self.device)
        self.model = self.network
        if self.world > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.network, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.optimizer = torch.optim.SGD(self.network.parameters(), lr=settings.lr, momentum=settings.momentum,
                                         nesterov=True, weight_decay=settings.weight_decay)
        self.amp_dtype = autocast_dtype(self.device, settings.precision)
        self.amp = self.amp_dtype is not None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.loss_key = choose_loss(config, self.regions, self.loss_name)
        base_loss = get_loss(self.loss_key)(config, self.regions)
        self.loss = DeepSupervisionLoss(base_loss, deep_supervision_weights(self.n_levels))
        self.strides = [list(s) for s in config.network.topology.strides]
        self.state: TrainState = {"epoch": 0, "iteration": 0, "elapsed_s": 0.0, "val_seconds": 0.0,
                                  "ema_pseudo_dice": None, "best_ema_pseudo_dice": None, "history": []}

    # ---------------------------------------------------------------- checkpoints
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def registry_keys(self) -> dict[str, str | list[str]]:
        """The registered components this fold is trained with: ``{kind: name}`` (normalizers: one per channel)."""
        return {"network": self.config.network.name, "trainer": trainer_name(type(self)), "loss": self.loss_key,
                "normalizer": sorted({n.scheme for n in self.config.normalization})}

    def checkpoint_state(self) -> dict:
        """What a checkpoint holds: weights, optimizer and loop state, the plan entry, and the registry keys with
        the package and version that provided each (``registry``, ``plugins``)."""
        keys = self.registry_keys()
        return {"network": self.network.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "torch_rng": torch.get_rng_state(),
                "network_plan": self.config.network.to_json(), "config_name": self.config_name,
                "patch_size": self.patch, "n_channels": self.n_channels, "n_classes": self.n_classes,
                "registry": keys, "plugins": plugins.provenance(keys),
                "settings": {k: v for k, v in asdict(self.settings).items() if k != "extra"}, **self.state}

    def load(self, path: Path) -> None:
        """Continue from the checkpoint at ``path`` (read once; :meth:`restore` applies it)."""
        st = load_checkpoint(path, map_location=self.device)
        check_compatible(st, self.config.network, path)
        self.restore(st)
        log.info("resumed from %s (epoch %d, iteration %d)", path, st["epoch"], st["iteration"])

    def restore(self, st: dict) -> None:
        """Apply a checkpoint's contents (:meth:`checkpoint_state`'s dict): weights, optimizer, scaler, RNG and loop
        state. A subclass that saves more in :meth:`checkpoint_state` restores it here."""
        self.network.load_state_dict(st["network"])
        self.optimizer.load_state_dict(st["optimizer"])
        self.scaler.load_state_dict(st["scaler"])
        torch.set_rng_state(st["torch_rng"].cpu())
        # every key of this trainer's state that the checkpoint has (a subclass may keep more keys than
        # TrainState's; a checkpoint of an older segpipe may lack newer ones, which keep their start values)
        self.state = cast(TrainState, {**self.state, **{k: st[k] for k in self.state if k in st}})

    def save(self, name: str) -> None:
        if self.is_main:
            save_checkpoint(self.out / name, self.checkpoint_state())

    # ---------------------------------------------------------------- loop
    def transforms_enabled(self) -> bool:
        return self.settings.augment

    def batch_meta(self, batch: dict) -> BatchMeta:
        """The metadata the loss gets besides logits and targets (the mask and level are added per level): the
        case ids (``"keys"``) and, when the data set has attributes, each sample's (``"attributes"``, a list
        of column -> value mappings, empty for a case without)."""
        keys = batch.get("keys")
        if keys is None:
            return {}
        ids = [str(k) for k in keys]
        if not self.attributes:
            return {"keys": ids}
        return {"keys": ids, "attributes": [self.attributes.get(k, {}) for k in ids]}

    def compute_loss(self, out: torch.Tensor | list[torch.Tensor], target: torch.Tensor, meta: BatchMeta
                     ) -> torch.Tensor:
        """The loss of the network's output(s) against the label ``target`` ``(B, 1, *patch)``, over the levels
        the network returns."""
        targets = downsample_targets(target, self.strides)[: self.n_levels]
        if isinstance(out, (list, tuple)):
            out = list(out)[: self.n_levels]
        return self.loss(out, targets, meta)

    def batch_loss(self, batch: dict) -> torch.Tensor:
        """The loss of one training batch: the forward pass (under autocast) and :meth:`compute_loss`."""
        data = torch.as_tensor(batch["data"]).to(self.device, non_blocking=True)
        target = torch.as_tensor(batch["seg"]).to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            out = self.model(data)
            return self.compute_loss(out, target, self.batch_meta(batch))

    def train_step(self, batch: dict, lr: float) -> float:
        """One optimizer step on :meth:`batch_loss` at learning rate ``lr`` (gradient scaling, clipping)."""
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.batch_loss(batch)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.settings.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach().item())

    def validate_patches(self, store: CaseStore, n_batches: int | None = None) -> tuple[float, list[float]]:
        """Loss and per-class pseudo-Dice on ``n_batches`` fixed validation batches (no augmentation)."""
        self.network.eval()
        n_fg = len(self.regions) if self.regions is not None else self.n_classes - 1
        tp = torch.zeros(n_fg, dtype=torch.float64)
        fp, fn = tp.clone(), tp.clone()
        losses = []
        with torch.inference_mode():
            for v in range(self.settings.resolved_val_iterations() if n_batches is None else n_batches):
                b = make_batch(store, v, self.settings.seed, self.batch_size, self.patch, augment=False,
                               stream=1 + 2 * self.rank)
                data = torch.from_numpy(b["data"]).to(self.device)
                target = torch.from_numpy(b["seg"]).to(self.device)
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
                    out = self.network(data)
                    losses.append(float(self.compute_loss(out, target, self.batch_meta(b)).item()))
                logits = out[0] if isinstance(out, (list, tuple)) else out
                ref = target[:, 0]
                valid = ref >= 0
                if self.regions is not None:  # a voxel is in a region where its logit is > 0 (sigmoid > 0.5)
                    masks = region_targets(ref, self.regions).bool()
                    pairs = [(logits[:, r] > 0, masks[:, r]) for r in range(n_fg)]
                else:
                    pred = logits.argmax(1)
                    pairs = [(pred == c, ref == c) for c in range(1, self.n_classes)]
                for i, (p, r) in enumerate(pairs):
                    p, r = p & valid, r & valid
                    tp[i] += float((p & r).sum())
                    fp[i] += float((p & ~r).sum())
                    fn[i] += float((~p & r).sum())
        stats = dist.sum_tensor(torch.stack([tp, fp, fn]).to(self.device)).cpu()
        tp, fp, fn = stats
        dice = [float(2 * a / (2 * a + b + c)) if (2 * a + b + c) > 0 else float("nan")
                for a, b, c in zip(tp, fp, fn)]
        loss = float(np.mean(losses)) if losses else float("nan")
        self.network.train()
        return loss, dice

    def time_forward(self, store: CaseStore) -> float:
        """Seconds for one forward pass of a validation batch (eval mode, as in validation and inference)."""
        b = make_batch(store, 0, self.settings.seed, self.batch_size, self.patch, augment=False, stream=1)
        data = torch.from_numpy(b["data"]).to(self.device)
        self.network.eval()
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            times = []
            for _ in range(2):  # the first pass includes one-off allocations; the second is the one that counts
                t = time.monotonic()
                self.network(data)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                times.append(time.monotonic() - t)
        self.network.train()
        return times[-1]

    def final_validation_cost(self, seconds_per_batch: float) -> FinalValidationCost:
        """Estimated cost of validating this fold's held-out cases (from their preprocessed properties)."""
        shapes, raw = [], []
        for cid in self.val_ids:
            props = read_json(self.preprocessed / f"{cid}.json", kind="case_properties")
            shapes.append(props["shape_after_resampling"])
            raw.append(int(np.prod(props["geometry"]["shape"])))
        return final_validation_cost(shapes, raw, self.patch, self.n_classes, seconds_per_batch / self.batch_size)

    def describe(self, total_iterations: int | None) -> str:
        s = self.settings
        length = (f"budget {s.budget_s:.0f} s for the whole command" if s.budget_s is not None else
                  f"{s.resolved_epochs()} epochs x {s.resolved_iterations_per_epoch()} iterations")
        if s.budget_s is not None and total_iterations:
            length += f" (at most {total_iterations} iterations)"
        return (f"train {self.config_name}: {len(self.train_ids)} training / {len(self.val_ids)} validation cases, "
                f"patch {self.patch}, batch {self.batch_size}, {self.config.network.name} "
                f"network {list(self.config.network.topology.features_per_stage)}, device {self.device}, precision "
                f"{self.amp_dtype or torch.float32}, {length}, {s.workers} augmentation worker(s) -> {self.out}")

    def run(self) -> TrainState:
        """Train until the epochs or the budget are used up; returns the final state."""
        s = self.settings
        self.out.mkdir(parents=True, exist_ok=True)
        started = s.started_at if s.started_at is not None else time.monotonic()
        spent_before = float(self.state["elapsed_s"])  # budget used by earlier, interrupted runs of this fold

        def spent() -> float:
            return spent_before + time.monotonic() - started

        epochs = s.resolved_epochs()
        ipe = s.resolved_iterations_per_epoch()
        # with a budget and no --val-iterations, validation batches are sized once iterations have been timed
        val_batches = s.resolved_val_iterations() if s.budget_s is None or s.val_iterations else 1
        total_iterations = epochs * ipe if epochs else None
        if self.is_main:
            log.info("%s", self.describe(total_iterations))
        stream = BatchStream(self.preprocessed, self.train_ids, s.seed, self.batch_size, self.patch,
                             augment=self.transforms_enabled(), start=self.state["iteration"], stream=2 * self.rank,
                             cascade=self.cascade)
        loader = iter(make_loader(stream, s.workers))
        val_store = CaseStore(self.preprocessed, self.val_ids, cascade=self.cascade)
        self.schedule: BudgetSchedule | None = None
        seconds_per_val_batch = 0.0  # measured when there is a budget (only budgets use it)
        final: FinalValidationCost | None = None
        if s.budget_s is not None:
            seconds_per_val_batch = self.time_forward(val_store)
            if s.final_validation and self.val_ids:
                final = self.final_validation_cost(seconds_per_val_batch)
        self.deadline = None if s.budget_s is None else started + s.budget_s - spent_before
        if s.budget_s is not None:  # refuse a budget that cannot hold the final validation before training
            plan_budget(s.budget_s, spent(), 1e-6, seconds_per_val_batch, final, s.iterations_per_epoch,
                        s.val_iterations)
        iteration_times: list[float] = []
        start_iteration = self.state["iteration"]
        self.network.train()

        def status() -> str:
            done = self.state["iteration"] - start_iteration
            rate = done / max(sum(iteration_times), 1e-9)
            left = (f", budget left {s.budget_s - spent():.0f} s" if s.budget_s is not None else
                    f", {total_iterations - self.state['iteration']} iterations left" if total_iterations else "")
            return (f"epoch {self.state['epoch']}, iteration {self.state['iteration']}: loss {last_loss:.4f}, "
                    f"{rate:.2f} it/s, {spent():.0f} s elapsed{left}")

        last_loss = float("nan")
        with Heartbeat(status, PROGRESS_LINE_S) if self.is_main else contextlib.nullcontext() as hb:
            stop = False
            while not stop:
                if epochs is not None and self.state["epoch"] >= epochs:
                    break
                t0 = time.monotonic()
                losses: list[float] = []
                lr = s.lr
                bar = tqdm(total=ipe, desc=f"epoch {self.state['epoch']}", unit="it",
                           disable=None if self.is_main else True, leave=False)
                while len(losses) < ipe:
                    if s.budget_s is not None:
                        per_iter = float(np.median(iteration_times[1:][-50:])) if len(iteration_times) > 1 else (
                            iteration_times[0] if iteration_times else 0.0)
                        if self.schedule is None and len(iteration_times) >= 4:
                            self.schedule = plan_budget(s.budget_s, spent(), per_iter, seconds_per_val_batch, final,
                                                        s.iterations_per_epoch, s.val_iterations)
                            ipe, val_batches = self.schedule.iterations_per_epoch, self.schedule.val_iterations
                            bar.total = ipe
                            if self.is_main:
                                log.info("budget: %s", self.schedule.why)
                        reserve = self.schedule.reserve_final_s if self.schedule else 0.0
                        room = s.budget_s - reserve - spent() - val_batches * seconds_per_val_batch
                        if dist.any_true(room < per_iter, self.device):
                            stop = True  # the next iteration and this epoch's validation would not fit
                            break
                        progress = min(1.0, spent() / max(s.budget_s - reserve, 1e-6))
                        if total_iterations:
                            progress = max(progress, self.state["iteration"] / total_iterations)
                    else:
                        progress = training_progress(self.state["iteration"], total_iterations, 0.0, None)
                    lr = poly_lr(s.lr, progress)
                    self.progress = progress
                    ti = time.monotonic()
                    losses.append(self.train_step(next(loader), lr))
                    iteration_times.append(time.monotonic() - ti)
                    self.state["iteration"] += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses[-1]:.3f}")
                    last_loss = losses[-1]
                bar.close()
                if not losses:
                    break
                train_s = time.monotonic() - t0
                val_loss, dice = self.validate_patches(val_store, val_batches)
                val_s = time.monotonic() - t0 - train_s
                if s.budget_s is not None and seconds_per_val_batch:
                    seconds_per_val_batch = max(seconds_per_val_batch, val_s / max(1, val_batches))
                    if self.schedule is not None and len(iteration_times) > 5:  # re-size epochs with what was measured
                        try:
                            self.schedule = plan_budget(s.budget_s, spent(), float(np.median(iteration_times[-50:])),
                                                        seconds_per_val_batch, final, s.iterations_per_epoch,
                                                        s.val_iterations)
                            ipe, val_batches = self.schedule.iterations_per_epoch, self.schedule.val_iterations
                        except SegpipeError:
                            pass  # nearly spent: keep the sizes; the checks below stop training in time
                valid = [d for d in dice if not math.isnan(d)]
                mean_dice = float(np.mean(valid)) if valid else float("nan")
                ema = self.state["ema_pseudo_dice"]
                ema = mean_dice if ema is None or math.isnan(ema) else EMA_WEIGHT * ema + (1 - EMA_WEIGHT) * mean_dice
                self.state["ema_pseudo_dice"] = ema
                self.state["epoch"] += 1
                self.state["val_seconds"] = val_s
                self.state["elapsed_s"] = spent() if s.budget_s is not None else self.state["elapsed_s"] + (
                    time.monotonic() - t0)
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
                    if hb is not None:
                        hb.beat()
                    log.info("epoch %d: %d iterations, train loss %.4f, val loss %.4f, pseudo Dice %s (EMA %.4f), "
                             "lr %.5f, %.1f s", entry["epoch"], len(losses), entry["train_loss"], val_loss,
                             [round(d, 4) for d in dice], ema, lr, entry["epoch_seconds"])
        if self.state["iteration"] == 0:
            raise fail("no training iteration fitted in the budget, so no model was written",
                       "give a larger --budget, or plan a cheaper configuration (segpipe plan --budget ...)",
                       file=self.out)
        self.save("checkpoint_final.pt")
        dist.barrier()
        return self.state


@register_trainer("noaug")
class NoAugmentationTrainer(Trainer):
    """The default trainer without data augmentation (for debugging and very small budgets)."""

    def transforms_enabled(self) -> bool:
        return False
