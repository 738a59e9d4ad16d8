"""One writer per dataset: a second writing stage stops with a message naming the holder; a killed holder
leaves no lock behind; folds of one dataset can train at once, the same fold cannot."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import copy_ws

from segpipe.cli import main
from segpipe.errors import SegpipeError
from segpipe.locking import stage_lock

HOLD = """
import sys, time
from pathlib import Path
from segpipe.locking import stage_lock
with stage_lock(Path(sys.argv[1]), sys.argv[2], exclusive=sys.argv[3] == "x", own=sys.argv[4] or None):
    Path(sys.argv[5]).write_text("held")
    time.sleep(60)
"""


def _holder(dataset_dir: Path, tmp_path: Path, stage: str, mode: str, own: str = "") -> subprocess.Popen:
    flag = tmp_path / f"held-{stage}-{own}"
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(dataset_dir), stage, mode, own, str(flag)],
                         start_new_session=True)
    for _ in range(200):
        if flag.exists():
            return p
        time.sleep(0.05)
    p.kill()
    raise AssertionError("the holder never took its lock")


def test_replanning_while_a_writer_runs_is_refused_naming_the_holder(tiny_ws_template: Path, tmp_path: Path,
                                                                      capsys):
    ws = copy_ws(tiny_ws_template, tmp_path / "ws")
    plans = (ws / "tiny" / "plans.json").read_bytes()
    p = _holder(ws / "tiny", tmp_path, "preprocess", "x")
    try:
        capsys.readouterr()
        assert main(["plan", "-w", str(ws), "--force"]) == 2
        err = capsys.readouterr().err
        assert f"pid {p.pid}" in err and "preprocess" in err and "fix:" in err
        assert (ws / "tiny" / "plans.json").read_bytes() == plans
    finally:
        os.killpg(p.pid, signal.SIGKILL)  # killed holders leave no lock behind
        p.wait()
    assert p.returncode == -signal.SIGKILL
    assert main(["plan", "-w", str(ws), "--force"]) == 0


def test_folds_train_side_by_side_but_one_fold_has_one_writer(tmp_path: Path):
    d = tmp_path / "ds"
    d.mkdir()
    p = _holder(d, tmp_path, "train", "s", "train-3d_fullres-fold0")
    try:
        with stage_lock(d, "train", exclusive=False, own="train-3d_fullres-fold1"):
            pass  # another fold: fine
        with pytest.raises(SegpipeError, match=f"pid {p.pid}"):
            with stage_lock(d, "train", exclusive=False, own="train-3d_fullres-fold0"):
                pass
        with pytest.raises(SegpipeError, match="being written"):
            with stage_lock(d, "plan", exclusive=True):
                pass
    finally:
        p.kill()
        p.wait()
    with stage_lock(d, "plan", exclusive=True):
        with stage_lock(d, "preprocess", exclusive=True):  # nested in one process (segpipe run)
            with stage_lock(d, "train", exclusive=False, own="train-x-fold0"):
                pass
