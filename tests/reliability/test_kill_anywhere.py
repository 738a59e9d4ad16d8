"""Crash safety: each stage is SIGKILLed at seeded random moments; re-running the same command completes and
produces the same artifacts as an uninterrupted run."""
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
from conftest import copy_ws, hippo_file, hippo_ids, make_msd

from segpipe.cli import main

KILLS_PER_STAGE = 2
SEED = 20261125


def _segpipe(*args: str) -> list[str]:
    return [sys.executable, "-m", "segpipe", *args]


def _kill_after(cmd: list[str], delay: float) -> None:
    """Run ``cmd`` and SIGKILL it (with its workers) after ``delay`` seconds; asserts that the kill landed
    before the command finished."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"{cmd[3]} finished in under {delay:.1f} s: the kill did not land"


def _finish(cmd: list[str]) -> float:
    """Run ``cmd`` to completion; its wall time in seconds."""
    t = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return time.monotonic() - t


def _delay(rng: np.random.Generator, duration: float) -> float:
    """A kill time inside an uninterrupted run of ``duration`` seconds (past interpreter start-up)."""
    return float(rng.uniform(0.45, 0.8)) * duration


def _files(root: Path, pattern: str) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob(pattern)) if ".tmp-" not in p.name}


def _same_b2nd(a: Path, b: Path) -> bool:
    import blosc2

    x, y = blosc2.open(str(a), mode="r"), blosc2.open(str(b), mode="r")
    return x.dtype == y.dtype and np.array_equal(x[...], y[...])


@pytest.fixture
def onboarded(tmp_path: Path):
    def make(name: str) -> Path:
        ws = tmp_path / name
        src = tmp_path / "src"
        if not src.exists():
            make_msd(src, hippo_ids(8))
        assert main(["onboard", str(src), "--name", "k", "--workspace", str(ws)]) == 0
        return ws
    return make


def test_fingerprint_and_preprocess_survive_kills(onboarded):
    rng = np.random.default_rng(SEED)
    ref = onboarded("ref")
    stages = (["fingerprint", "--workers", "2"], ["plan"], ["preprocess", "--workers", "2"])
    took = [_finish(_segpipe(stage[0], "-w", str(ref), *stage[1:])) for stage in stages]
    for k in range(KILLS_PER_STAGE):
        ws = onboarded(f"killed{k}")
        for stage, duration in zip(stages, took):
            cmd = _segpipe(stage[0], "-w", str(ws), *stage[1:])
            _kill_after(cmd, _delay(rng, duration))
            _finish(cmd)
        for name in ("fingerprint.json", "plans.json"):
            a = json.loads((ref / "k" / name).read_text())
            b = json.loads((ws / "k" / name).read_text())
            assert a == b, name
        ref_files = _files(ref / "k" / "preprocessed", "*")
        got = _files(ws / "k" / "preprocessed", "*")
        assert len([p for p in ref_files.values() if p.name.endswith("_data.b2nd")]) == 8  # one per case
        assert sorted(ref_files) == sorted(got)
        for rel, p in ref_files.items():
            if p.suffix == ".b2nd":
                assert _same_b2nd(p, got[rel]), rel
            elif p.suffix == ".json" and not p.name.startswith("."):
                assert json.loads(p.read_text()) == json.loads(got[rel].read_text()), rel


TRAIN = ["train", "--config", "3d_fullres", "--fold", "0", "--epochs", "3", "--iterations-per-epoch", "3",
         "--val-iterations", "1", "--workers", "0", "--threads", "1", "--no-validation"]


def test_train_and_predict_survive_kills(tiny_ws_template: Path, tmp_path: Path):
    rng = np.random.default_rng(SEED + 1)
    ref = copy_ws(tiny_ws_template, tmp_path / "ref")
    train_took = _finish(_segpipe(TRAIN[0], "-w", str(ref), *TRAIN[1:]))
    inp = tmp_path / "in"
    inp.mkdir()
    for cid in hippo_ids(10)[6:9]:
        os.symlink(hippo_file(cid), inp / f"{cid}.nii.gz")
    predict = ["predict", "-i", str(inp), "--workers", "1", "--no-mirror"]
    predict_took = _finish(_segpipe(predict[0], "-w", str(ref), "-o", str(tmp_path / "out_ref"), *predict[1:]))
    ref_log = [json.loads(x) for x in (ref / "tiny/results/3d_fullres/fold_0/log.jsonl").read_text().splitlines()]
    for k in range(KILLS_PER_STAGE):
        ws = copy_ws(tiny_ws_template, tmp_path / f"killed{k}")
        cmd = _segpipe(TRAIN[0], "-w", str(ws), *TRAIN[1:])
        _kill_after(cmd, _delay(rng, train_took))
        _finish(cmd)
        log = [json.loads(x) for x in (ws / "tiny/results/3d_fullres/fold_0/log.jsonl").read_text().splitlines()]
        assert [e["epoch"] for e in log] == [0, 1, 2]
        for a, b in zip(ref_log, log):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5, abs=1e-6)
        out = tmp_path / f"out{k}"
        pcmd = _segpipe(predict[0], "-w", str(ws), "-o", str(out), *predict[1:])
        _kill_after(pcmd, _delay(rng, predict_took))
        _finish(pcmd)
        ref_out = _files(tmp_path / "out_ref", "*.nii.gz")
        got = _files(out, "*.nii.gz")
        assert len(ref_out) == 3 and sorted(ref_out) == sorted(got)
        for rel in ref_out:
            assert ref_out[rel].read_bytes() == got[rel].read_bytes() or _same_image(ref_out[rel], got[rel])
        assert not list(out.glob(".tmp-*"))


def _same_image(a: Path, b: Path) -> bool:
    from segpipe.io.images import read_image

    (x, gx), (y, gy) = read_image(a), read_image(b)
    return np.array_equal(x, y) and not gx.mismatches(gy)
