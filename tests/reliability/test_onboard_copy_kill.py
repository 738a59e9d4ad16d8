"""kill -9 during ``onboard --copy --force`` never loses raw/: the new copy is built beside the old one and
swapped in only when complete; a re-run finishes the job, and never skips over an incomplete raw/."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import hippo_ids, make_msd, make_synthetic_dataset, tree_state

from segpipe.cli import main

# the copy is slowed down (50 ms a file) so that the kill lands while the new copy is being built
SLOW_ONBOARD = """
import shutil, sys, time
real = shutil.copy2
def slow(*a, **k):
    time.sleep(0.05)
    return real(*a, **k)
shutil.copy2 = slow
from segpipe.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_during_copy_force_keeps_the_old_raw_and_a_rerun_completes(tmp_path: Path, capsys):
    src = make_synthetic_dataset(tmp_path / "src", "msd", n_cases=30, shape=(8, 12, 10)).root  # 60 files to copy
    ws = tmp_path / "ws"
    argv = ["onboard", str(src), "--name", "d", "--workspace", str(ws), "--copy", "--workers", "1"]
    assert main(argv) == 0
    raw = ws / "d" / "raw"
    before = tree_state(raw)
    assert len(before) > 60

    proc = subprocess.Popen([sys.executable, "-c", SLOW_ONBOARD, *argv, "--force"], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    building = None
    for _ in range(600):
        building = next((p for p in (ws / "d").glob(".tmp-*-raw") if len(list(p.rglob("*.nii.gz"))) >= 10), None)
        if building is not None or proc.poll() is not None:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert building is not None, "the kill did not land while the new copy was being built"
    assert proc.returncode == -signal.SIGKILL

    assert tree_state(raw) == before  # the old copy is whole
    capsys.readouterr()
    assert main(argv) == 0  # unchanged inputs: skipping is right, raw/ is complete
    assert "unchanged, skipped" in capsys.readouterr().out
    assert main(argv + ["--force"]) == 0
    assert tree_state(raw) == before
    assert not list((ws / "d").glob(".tmp-*"))  # the dead run's half-built copy is gone


def test_a_damaged_raw_is_not_skipped_over(tmp_path: Path, capsys):
    src = make_msd(tmp_path / "src", hippo_ids(3))
    ws = tmp_path / "ws"
    argv = ["onboard", str(src), "--name", "d", "--workspace", str(ws), "--copy", "--workers", "1"]
    assert main(argv) == 0
    victim = next((ws / "d" / "raw" / "imagesTr").iterdir())
    victim.unlink()
    capsys.readouterr()
    assert main(argv) == 0
    assert "unchanged, skipped" not in capsys.readouterr().out
    assert victim.is_file()
