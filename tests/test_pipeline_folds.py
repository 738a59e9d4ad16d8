"""`segpipe run` and `segpipe train --fold each` use the folds of splits.json, call the stages as functions
(so --quiet holds throughout) and take onboarding options."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
from conftest import hippo_ids, make_msd

from segpipe.cli import main
from segpipe.io.jsonio import read_json

RUN = ["--config", "2d", "--epochs", "1", "--iterations-per-epoch", "2", "--batch-size", "2", "--device", "cpu",
       "--workers", "1"]


@pytest.fixture(scope="module")
def three(tmp_path_factory) -> tuple[Path, Path, str, str]:
    """`segpipe --quiet run` on a 3-case data set; returns (workspace, source, stdout, stderr)."""
    import sys
    from io import StringIO

    root = tmp_path_factory.mktemp("three")
    src = make_msd(root / "src", hippo_ids(3))
    ws = root / "ws"
    out, err = StringIO(), StringIO()
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        code = main(["--quiet", "run", str(src), "--name", "three", "-w", str(ws), *RUN, "--onboard-args", "--copy"])
        level = logging.getLogger().level
    finally:
        sys.stdout, sys.stderr = old
    assert code == 0, err.getvalue()
    assert level == logging.WARNING  # onboarding no longer goes through the CLI, which reset logging to INFO
    return ws, src, out.getvalue(), err.getvalue()


def test_run_trains_the_folds_of_splits_json(three):
    ws, _, out, _ = three
    d = ws / "three"
    assert len(read_json(d / "splits.json", kind="splits")["folds"]) == 3
    assert sorted(p.name for p in (d / "results" / "2d").iterdir()) == ["fold_0", "fold_1", "fold_2"]
    assert read_json(d / "selection.json", kind="selection")["folds"] == [0, 1, 2]
    assert "cross-validation Dice" in out
    index = d / "report" / "index.html"  # written at the end, its path printed last
    assert index.is_file() and out.strip().splitlines()[-1] == f"report: {index}"
    for stage in ("onboard", "fingerprint", "plan", "preprocess_2d", "train_2d_fold_0", "train_2d_fold_1",
                  "train_2d_fold_2", "select"):
        assert (d / "records" / f"{stage}.json").is_file(), stage


def test_run_keeps_quiet_and_applies_onboard_args(three):
    ws, _, _, err = three
    assert "plans for" not in err and "validation Dice" not in err and "onboarded" not in err
    raw = ws / "three" / "raw"
    assert raw.is_dir() and not raw.is_symlink()  # --onboard-args --copy reached onboarding


def test_train_fold_each_uses_splits_json(three, capsys):
    ws, _, _, _ = three
    capsys.readouterr()
    assert main(["train", "-w", str(ws), *RUN[:-2], "--fold", "each"]) == 0
    out = capsys.readouterr().out
    assert "2d fold 2:" in out and "fold 3" not in out
    assert not (ws / "three" / "results" / "2d" / "fold_3").exists()


def test_rerun_skips_everything(three, capsys):
    ws, src, _, _ = three
    d = ws / "three"
    stamps = {p: p.stat().st_mtime_ns for p in d.rglob("*") if p.is_file() and "records" not in p.parts}
    capsys.readouterr()
    assert main(["--quiet", "run", str(src), "--name", "three", "-w", str(ws), *RUN, "--onboard-args", "--copy"]) == 0
    assert "cross-validation Dice" in capsys.readouterr().out
    now = {p: p.stat().st_mtime_ns for p in d.rglob("*") if p.is_file() and "records" not in p.parts}
    assert now == stamps  # nothing retrained, revalidated, re-preprocessed, re-selected or reported again


def test_invalid_onboard_args_are_a_user_error(tmp_path: Path, capsys):
    src = make_msd(tmp_path / "src", hippo_ids(2))
    ws = tmp_path / "ws"
    assert main(["run", str(src), "--name", "x", "-w", str(ws), *RUN, "--onboard-args", "--no-such-option"]) == 2
    err = capsys.readouterr().err
    assert "--onboard-args" in err and "segpipe onboard --help" in err
    assert not ws.exists()


def test_an_unknown_trainer_is_refused_before_anything_is_written(tmp_path: Path, capsys):
    src = make_msd(tmp_path / "src", hippo_ids(2))
    ws = tmp_path / "ws"
    assert main(["run", str(src), "--name", "x", "-w", str(ws), *RUN, "--trainer", "bcpp"]) == 2
    err = capsys.readouterr().err
    assert "unknown trainer 'bcpp'" in err and "bcp" in err
    assert not ws.exists()


def test_run_trains_with_the_trainer_given(tmp_path: Path):
    """`segpipe run --trainer bcp` on a folder with unlabelled images: the folds are trained by bcp."""
    from conftest import make_semi

    from segpipe.training.checkpoint import load_checkpoint

    make_semi(tmp_path / "src", n_labelled=3, n_unlabelled=2)
    ws = tmp_path / "ws"
    assert main(["run", str(tmp_path / "src"), "--name", "semi", "-w", str(ws), *RUN, "--folds", "0",
                 "--trainer", "bcp"]) == 0
    st = load_checkpoint(ws / "semi" / "results" / "2d" / "fold_0" / "checkpoint_final.pt")
    assert st["registry"]["trainer"] == "bcp" and st["teacher"] is not None
    assert read_json(ws / "semi" / "records" / "train_2d_fold_0.json", kind="stage_record")["info"]["trainer"] == "bcp"
