"""Fitting a ``train`` command into its time budget: training, per-epoch validation and the final validation.

The budget covers the whole command. Before training, the cost of the final full-volume validation is
estimated (sliding-window windows of the held-out cases x measured seconds per window x mirrorings, plus the
export) and reserved; mirroring is dropped from the final validation when it would take too large a share, and
a budget that cannot hold the validation at all is refused with the figure needed. Epochs are sized from the
measured seconds per iteration so that the per-epoch validation costs at most a tenth of an epoch. Training
stops when the next iteration and the epoch's validation would no longer fit before the reserve.

Pure functions on numbers: the trainer measures, this module decides.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from segpipe.errors import fail

FINAL_VALIDATION_SHARE_MIRRORED = 0.20   # mirrored final validation allowed up to this share of the budget
FINAL_VALIDATION_SHARE_MAX = 0.40        # unmirrored: up to this share; beyond it the budget is refused
RESERVE_SAFETY = 1.3                     # reserve 30% more than the estimate (measured: 62 s taken for 50 s estimated)
EPOCH_VALIDATION_SHARE = 0.10            # per-epoch patch validation: at most this share of an epoch
EPOCH_TARGET_S = (30.0, 300.0)           # epoch length in seconds: budget/20 within these bounds
MAX_ITERATIONS_PER_EPOCH = 250
DEFAULT_MAX_VAL_ITERATIONS = 50
EXPORT_S_PER_VOXEL_CLASS = 2e-8          # resampling + argmax + writing, per raw voxel and class (measured ~1-2e-8)
EXPORT_S_PER_CASE = 0.3
WINDOW_OVERHEAD = 1.2                    # Gaussian weighting and accumulation on top of the network's forward pass


def count_windows(shape: Sequence[int], patch: Sequence[int], step: float = 0.5) -> int:
    """Sliding windows for one case of spatial ``shape`` ``(Z, Y, X)`` with ``patch`` of 3 (3D) or 2 entries
    (2D: every slice along Z)."""
    slide = list(shape)[-len(patch):]
    n = 1
    for s, p in zip(slide, patch):
        n *= 1 if s <= p else int(math.ceil((s - p) / (p * step))) + 1
    return n * (int(shape[0]) if len(patch) == 2 and len(shape) == 3 else 1)


@dataclass(frozen=True)
class FinalValidationCost:
    """Estimated seconds of the final validation with and without mirroring."""

    n_cases: int
    n_windows: int
    seconds_per_window: float
    mirrorings: int
    export_s: float

    def seconds(self, mirror: bool) -> float:
        return (self.n_windows * self.seconds_per_window * WINDOW_OVERHEAD * (self.mirrorings if mirror else 1)
                + self.export_s)


def final_validation_cost(resampled_shapes: list[Sequence[int]], raw_voxels: list[int], patch: Sequence[int],
                          n_classes: int, seconds_per_window: float) -> FinalValidationCost:
    """The cost of validating the held-out cases (shapes at the target spacing, voxels of the raw images)."""
    windows = sum(count_windows(s, patch) for s in resampled_shapes)
    export = sum(EXPORT_S_PER_CASE + EXPORT_S_PER_VOXEL_CLASS * v * n_classes for v in raw_voxels)
    return FinalValidationCost(len(resampled_shapes), windows, seconds_per_window, 2 ** len(patch), export)


@dataclass(frozen=True)
class BudgetSchedule:
    """How a budgeted ``train`` command spends its time (seconds)."""

    budget_s: float
    reserve_final_s: float
    mirror_final: bool
    train_s: float
    iterations_per_epoch: int
    val_iterations: int
    expected_iterations: int
    why: str

    def to_dict(self) -> dict:
        return asdict(self)


def final_validation_reserve(budget_s: float, final: FinalValidationCost) -> tuple[float, bool] | None:
    """``(seconds reserved, mirrored)`` for the final validation within ``budget_s``: mirrored when that fits in
    ``FINAL_VALIDATION_SHARE_MIRRORED`` of the budget, else unmirrored when that fits in
    ``FINAL_VALIDATION_SHARE_MAX``, else None (the budget cannot hold it). The one rule the trainer keeps and the
    budget planner predicts with."""
    if final.seconds(True) <= FINAL_VALIDATION_SHARE_MIRRORED * budget_s:
        return final.seconds(True) * RESERVE_SAFETY, True
    if final.seconds(False) <= FINAL_VALIDATION_SHARE_MAX * budget_s:
        return final.seconds(False) * RESERVE_SAFETY, False
    return None


def plan_budget(budget_s: float, spent_s: float, seconds_per_iteration: float, seconds_per_val_batch: float,
                final: FinalValidationCost | None, iterations_per_epoch: int | None = None,
                val_iterations: int | None = None) -> BudgetSchedule:
    """Split ``budget_s`` (``spent_s`` of it already used) between training and validation.

    ``final`` is None when the command does no final validation. Raises a user error when the budget cannot
    hold the final validation or a single training iteration.
    """
    left = budget_s - spent_s
    fits = None if final is None else final_validation_reserve(budget_s, final)
    if final is None:
        reserve, mirror, vwhy = 0.0, False, "no final validation"
    elif fits is not None and fits[1]:
        reserve, mirror = fits
        vwhy = f"final validation with mirroring reserved: ~{reserve:.0f} s"
    elif fits is not None:
        reserve, mirror = fits
        vwhy = (f"final validation without mirroring reserved: ~{reserve:.0f} s (with mirroring it would take "
                f"~{final.seconds(True):.0f} s, over {FINAL_VALIDATION_SHARE_MIRRORED:.0%} of the budget)")
    else:
        need = final.seconds(False) / FINAL_VALIDATION_SHARE_MAX
        raise fail(f"a budget of {_fmt(budget_s)} cannot hold the final validation: predicting the "
                   f"{final.n_cases} held-out case(s) ({final.n_windows} windows) takes ~{_fmt(final.seconds(False))} "
                   "on this device", f"give --budget {_fmt(need)} or more, train with --no-validation, or plan a "
                   "cheaper configuration (segpipe plan --budget ...)")
    train_s = left - reserve
    per_iter = max(seconds_per_iteration, 1e-6)
    if train_s < per_iter:
        raise fail(f"the budget of {_fmt(budget_s)} leaves {_fmt(max(train_s, 0))} for training, less than one "
                   f"iteration (~{_fmt(per_iter)})", "give a larger --budget, or plan a cheaper configuration "
                   "(segpipe plan --budget ...)")
    if iterations_per_epoch is None:
        epoch_s = min(max(train_s / 20, EPOCH_TARGET_S[0]), EPOCH_TARGET_S[1])
        iterations_per_epoch = int(min(MAX_ITERATIONS_PER_EPOCH, max(1, round(epoch_s / per_iter))))
    if val_iterations is None:
        default = int(min(DEFAULT_MAX_VAL_ITERATIONS, max(2, iterations_per_epoch // 5)))
        fit = int(EPOCH_VALIDATION_SHARE * iterations_per_epoch * per_iter / max(seconds_per_val_batch, 1e-6))
        val_iterations = max(1, min(default, fit))
    epoch_s = iterations_per_epoch * per_iter + val_iterations * seconds_per_val_batch
    expected = int(train_s / epoch_s * iterations_per_epoch)
    why = (f"{_fmt(budget_s)} budget: {_fmt(spent_s)} spent so far, {vwhy}, ~{_fmt(train_s)} left to train "
           f"at ~{per_iter:.2f} s/iteration -> ~{expected} iterations in epochs of {iterations_per_epoch} "
           f"(+ {val_iterations} validation batches)")
    return BudgetSchedule(budget_s, reserve, mirror, train_s, iterations_per_epoch, val_iterations, expected, why)


def _fmt(seconds: float) -> str:
    seconds = float(seconds)
    if seconds >= 90:
        m, s = divmod(int(round(seconds)), 60)
        return f"{m}m{s:02d}s"
    return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
