"""Training end to end on a tiny network: logs, checkpoints, validation export, and exact resume after kill -9."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import copy_ws

from segpipe.cli import main
from segpipe.errors import SegpipeError
from segpipe.io.images import read_image
from segpipe.io.jsonio import read_json
from segpipe.planning.plans import NetworkPlan
from segpipe.training.checkpoint import check_compatible, load_checkpoint

ARGS = ["--config", "3d_fullres", "--fold", "0", "--epochs", "4", "--iterations-per-epoch", "3",
        "--val-iterations", "1", "--workers", "0", "--threads", "1", "--seed", "3"]


def _log(ws: Path) -> list[dict]:
    path = ws / "tiny" / "results" / "3d_fullres" / "fold_0" / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_train_writes_artifacts_and_validates_in_original_geometry(tiny_ws_template: Path, tmp_path: Path, capsys):
    ws = copy_ws(tiny_ws_template, tmp_path / "ws")
    assert main(["train", "-w", str(ws), *ARGS]) == 0
    out = ws / "tiny" / "results" / "3d_fullres" / "fold_0"
    for name in ("checkpoint_latest.pt", "checkpoint_best.pt", "checkpoint_final.pt", "log.jsonl", "progress.png"):
        assert (out / name).is_file(), name
    log = _log(ws)
    assert [e["epoch"] for e in log] == [0, 1, 2, 3] and all(e["iterations"] == 3 for e in log)
    assert log[0]["lr"] > log[-1]["lr"] > 0 and {"train_loss", "val_loss", "pseudo_dice"} <= set(log[0])
    state = load_checkpoint(out / "checkpoint_final.pt")
    assert state["epoch"] == 4 and state["iteration"] == 12
    summary = read_json(out / "validation" / "summary.json", kind="validation_summary")
    splits = read_json(ws / "tiny" / "splits.json", kind="splits")["folds"]
    assert sorted(summary["cases"]) == sorted(splits[0]["val"])
    assert set(summary["mean"]) == {"anterior", "posterior"}
    cid = splits[0]["val"][0]
    pred, geo = read_image(out / "validation" / f"{cid}.nii.gz")
    _, raw_geo = read_image(ws / "tiny" / "raw" / "labelsTr" / f"{cid}.nii.gz")
    assert not geo.mismatches(raw_geo)
    assert "validation Dice" in capsys.readouterr().out
    # a finished fold is not trained again
    assert main(["train", "-w", str(ws), *ARGS]) == 0
    assert load_checkpoint(out / "checkpoint_final.pt")["iteration"] == 12


def test_kill_9_then_rerun_reproduces_uninterrupted_losses(tiny_ws_template: Path, tmp_path: Path):
    ref_ws = copy_ws(tiny_ws_template, tmp_path / "ref")
    assert main(["train", "-w", str(ref_ws), *ARGS, "--no-validation"]) == 0
    reference = _log(ref_ws)

    ws = copy_ws(tiny_ws_template, tmp_path / "killed")
    cmd = [sys.executable, "-m", "segpipe", "train", "-w", str(ws), *ARGS, "--no-validation"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(_log(ws)) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 2 <= len(_log(ws)) < 4
    assert not (ws / "tiny" / "results" / "3d_fullres" / "fold_0" / "checkpoint_final.pt").exists()
    # re-running the same command resumes automatically
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    resumed = _log(ws)
    assert [e["epoch"] for e in resumed] == [0, 1, 2, 3]
    for a, b in zip(reference, resumed):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5, abs=1e-6)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5, abs=1e-6)


def test_explicit_resume_and_no_resume_flags(tiny_ws_template: Path, tmp_path: Path, capsys):
    ws = copy_ws(tiny_ws_template, tmp_path / "ws")
    assert main(["train", "-w", str(ws), *ARGS, "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    few = [a if a != "4" else "1" for a in ARGS]
    assert main(["train", "-w", str(ws), *few, "--no-validation"]) == 0
    out = ws / "tiny" / "results" / "3d_fullres" / "fold_0"
    (out / "checkpoint_final.pt").unlink()
    assert main(["train", "-w", str(ws), *ARGS, "--no-resume", "--no-validation"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "-w", str(ws), *ARGS, "--resume", "--no-validation"]) == 0
    assert [e["epoch"] for e in _log(ws)] == [0, 1, 2, 3]


def test_checkpoint_from_another_plan_is_refused(tiny_ws_template: Path, tmp_path: Path):
    ws = copy_ws(tiny_ws_template, tmp_path / "ws")
    few = [a if a != "4" else "1" for a in ARGS]
    assert main(["train", "-w", str(ws), *few, "--no-validation"]) == 0
    ckpt = ws / "tiny" / "results" / "3d_fullres" / "fold_0" / "checkpoint_final.pt"
    state = load_checkpoint(ckpt)
    other = NetworkPlan.from_json(dict(state["network_plan"], features_per_stage=[8, 16, 32]))
    with pytest.raises(SegpipeError, match="different network"):
        check_compatible(state, other, ckpt)
    ckpt.write_bytes(b"garbage")
    with pytest.raises(SegpipeError, match="cannot load checkpoint"):
        load_checkpoint(ckpt)


def test_checkpoints_hold_no_pickled_objects(tiny_ws_template: Path, tmp_path: Path):
    ws = copy_ws(tiny_ws_template, tmp_path / "ws")
    few = [a if a != "4" else "1" for a in ARGS]
    assert main(["train", "-w", str(ws), *few, "--no-validation"]) == 0
    ckpt = ws / "tiny" / "results" / "3d_fullres" / "fold_0" / "checkpoint_final.pt"
    state = torch.load(ckpt, weights_only=True)  # would raise on arbitrary objects
    assert isinstance(state["network"], dict) and isinstance(state["history"], list)
    assert np.isfinite(state["history"][0]["train_loss"])
