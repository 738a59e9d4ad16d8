import subprocess
import sys
from pathlib import Path

from segpipe.cli import main
from segpipe.io.jsonio import read_json


def test_demo_runs_onboard_fingerprint_plan_on_packaged_data(tmp_path: Path, capsys):
    assert main(["demo", "--workspace", str(tmp_path / "demo"), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "3d_fullres" in out and "why patch_size" in out
    plans = read_json(tmp_path / "demo" / "hippocampus_example" / "plans.json", kind="plans")
    assert plans["configurations"]["3d_fullres"]["spacing"] == [1.0, 1.0, 1.0]
    assert plans["labels"] == {"background": 0, "Anterior": 1, "Posterior": 2}


def test_console_script_reports_bad_input_without_traceback(tmp_path: Path):
    r = subprocess.run([sys.executable, "-m", "segpipe", "onboard", str(tmp_path / "missing"), "--name", "x",
                        "--workspace", str(tmp_path / "ws")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert str(tmp_path / "missing") in r.stderr and "fix:" in r.stderr
