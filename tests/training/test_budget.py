"""The budget covers the whole train command: validation is sized to fit, nothing runs after the budget is
spent, impossible settings are refused, and progress is logged without a terminal."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import copy_ws

from segpipe.cli import main
from segpipe.errors import SegpipeError
from segpipe.training.budget import (
    FINAL_VALIDATION_SHARE_MAX,
    RESERVE_SAFETY,
    FinalValidationCost,
    count_windows,
    plan_budget,
)


def _cost(seconds_per_window: float, windows: int = 100, dims: int = 3) -> FinalValidationCost:
    return FinalValidationCost(n_cases=4, n_windows=windows, seconds_per_window=seconds_per_window,
                               mirrorings=2 ** dims, export_s=2.0)


def test_windows_are_counted_like_the_sliding_window():
    assert count_windows([40, 56, 40], [40, 56, 40]) == 1
    assert count_windows([80, 56, 40], [40, 56, 40]) == 3  # ceil((80-40)/20)+1
    assert count_windows([30, 100, 100], [64, 64]) == 30 * 3 * 3  # 2d: per slice


def test_mirrored_validation_is_reserved_when_it_fits():
    s = plan_budget(600, 5, 1.0, 0.3, _cost(0.05))  # 100 windows * 0.05 * 8 + 2 = 42 s < 20% of 600
    assert s.mirror_final and s.reserve_final_s == pytest.approx((100 * 0.05 * 1.2 * 8 + 2) * RESERVE_SAFETY)
    assert s.train_s == pytest.approx(600 - 5 - s.reserve_final_s)
    # per-epoch validation costs at most a tenth of an epoch
    assert s.val_iterations * 0.3 <= 0.1 * s.iterations_per_epoch * 1.0 + 1e-9
    assert 1 <= s.iterations_per_epoch <= 250 and s.expected_iterations > 0


def test_mirroring_is_dropped_then_the_budget_refused_when_validation_would_not_fit():
    s = plan_budget(600, 5, 1.0, 0.3, _cost(0.5))  # mirrored 402 s > 120 s; plain 52 s fits
    assert not s.mirror_final and s.reserve_final_s == pytest.approx((100 * 0.5 * 1.2 + 2) * RESERVE_SAFETY)
    with pytest.raises(SegpipeError, match="cannot hold the final validation") as e:
        plan_budget(100, 5, 1.0, 0.3, _cost(0.5))
    need = (100 * 0.5 * 1.2 + 2) / FINAL_VALIDATION_SHARE_MAX
    assert f"{int(need // 60)}m" in str(e.value) or f"{need:.0f}s" in str(e.value)


def test_a_budget_spent_before_training_is_refused():
    with pytest.raises(SegpipeError, match="less than one iteration"):
        plan_budget(60, 58, 5.0, 0.3, None)


TINY_TRAIN = ["train", "--config", "3d_fullres", "--fold", "0", "--workers", "0", "--threads", "1"]


@pytest.mark.parametrize("bad", [["--budget", "0s"], ["--epochs", "0"], ["--iterations-per-epoch", "0"],
                                 ["--lr", "nan"], ["--lr", "-0.01"], ["--budget", "1s"]])
def test_settings_that_cannot_train_are_refused_and_write_no_model(tiny_ws_template: Path, tmp_path: Path,
                                                                   bad: list[str], capsys):
    ws = copy_ws(tiny_ws_template, tmp_path / "ws")
    capsys.readouterr()
    assert main(["train", "-w", str(ws), *TINY_TRAIN[1:], *bad]) == 2
    err = capsys.readouterr().err
    assert "fix:" in err and "Traceback" not in err
    assert not list((ws / "tiny" / "results").rglob("checkpoint_final.pt"))


def test_budgeted_train_command_ends_within_its_budget_and_logs_progress(tiny_ws_template: Path, tmp_path: Path,
                                                                         monkeypatch, capsys):
    import segpipe.training.trainer as trainer

    monkeypatch.setattr(trainer, "PROGRESS_LINE_S", 1.0)
    ws = copy_ws(tiny_ws_template, tmp_path / "ws")
    budget = 25.0
    capsys.readouterr()
    t0 = time.monotonic()
    assert main(["train", "-w", str(ws), *TINY_TRAIN[1:], "--budget", f"{budget:g}s"]) == 0
    took = time.monotonic() - t0
    err = capsys.readouterr().err
    fold = ws / "tiny" / "results" / "3d_fullres" / "fold_0"
    # the whole command, final validation included, stayed within the budget (plus a second of slack for
    # writing the summary and the stage record after the last check)
    assert took <= budget + 1.5, err
    assert (fold / "validation" / "summary.json").is_file() and (fold / "checkpoint_final.pt").is_file()
    log = [json.loads(x) for x in (fold / "log.jsonl").read_text().splitlines()]
    assert sum(e["iterations"] for e in log) > 10
    assert log[-1]["elapsed_seconds"] <= budget
    # what it will do, within the first lines; then periodic progress lines (stderr is not a terminal here)
    assert "train 3d_fullres: 4 training / 2 validation cases, patch [16, 24, 16], batch 2" in err
    assert "device cpu" in err and f"budget {budget:.0f} s for the whole command" in err
    assert "budget: " in err and "to train at" in err
    lines = [line for line in err.splitlines() if "it/s" in line and "budget left" in line]
    assert lines, err


def test_epochs_still_mean_epochs_without_a_budget(tiny_ws_template: Path, tmp_path: Path):
    ws = copy_ws(tiny_ws_template, tmp_path / "ws")
    assert main(["train", "-w", str(ws), *TINY_TRAIN[1:], "--epochs", "2", "--iterations-per-epoch", "3",
                 "--val-iterations", "1", "--no-validation"]) == 0
    log = (ws / "tiny" / "results" / "3d_fullres" / "fold_0" / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["iterations"] for x in log] == [3, 3]
