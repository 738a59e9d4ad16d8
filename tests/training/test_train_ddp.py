"""Two training processes under torchrun with the gloo backend (CPU DDP)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import copy_ws

from segpipe.io.jsonio import read_json
from segpipe.training.checkpoint import load_checkpoint


def test_torchrun_two_processes_on_cpu(tiny_ws_template: Path, tmp_path: Path):
    ws = copy_ws(tiny_ws_template, tmp_path / "ws")
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun) if torchrun.exists() else shutil.which("torchrun"), "--standalone", "--nproc_per_node", "2",
           "-m", "segpipe", "train", "-w", str(ws), "--config", "3d_fullres", "--fold", "0", "--epochs", "2",
           "--iterations-per-epoch", "2", "--val-iterations", "1", "--workers", "0", "--threads", "1",
           "--device", "cpu"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = ws / "tiny" / "results" / "3d_fullres" / "fold_0"
    state = load_checkpoint(out / "checkpoint_final.pt")
    assert state["epoch"] == 2 and state["iteration"] == 4
    assert len((out / "log.jsonl").read_text().splitlines()) == 2
    assert read_json(out / "validation" / "summary.json", kind="validation_summary")["cases"]
