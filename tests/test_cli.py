import subprocess
import sys
from pathlib import Path

from segpipe.cli import main
from segpipe.io.images import read_image
from segpipe.io.jsonio import read_json
from segpipe.training.checkpoint import load_checkpoint


def test_demo_runs_every_stage_on_packaged_data(tmp_path: Path, capsys):
    # 20 s per fold: room for the final validation's reserve even on a loaded machine
    assert main(["demo", "--workspace", str(tmp_path / "demo"), "--workers", "2", "--budget", "20s",
                 "--device", "cpu", "--precision", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "3d_fullres" in out and "cross-validation Dice" in out and "demo finished" in out
    ds = tmp_path / "demo" / "hippocampus_example"
    plans = read_json(ds / "plans.json", kind="plans")
    assert plans["configurations"]["3d_fullres"]["spacing"] == [1.0, 1.0, 1.0]
    assert plans["labels"] == {"background": 0, "Anterior": 1, "Posterior": 2}
    sel = read_json(ds / "selection.json", kind="selection")
    assert sel["configs"] == ["2d"] and 0 <= sel["cv_dice"]["foreground_mean_dice"] <= 1
    for k in range(5):
        assert (ds / "results" / "2d" / f"fold_{k}" / "checkpoint_final.pt").is_file()
    settings = load_checkpoint(ds / "results" / "2d" / "fold_0" / "checkpoint_final.pt")["settings"]
    assert settings["device"] == "cpu" and settings["precision"] == "bf16"  # demo's --device/--precision used
    preds = sorted((ds / "predictions" / "demo_best").glob("*.nii.gz"))
    assert len(preds) == 4
    _, g = read_image(preds[0])
    _, g_raw = read_image(ds / "raw" / "imagesTr" / preds[0].name)
    assert not g.mismatches(g_raw)


def test_console_script_reports_bad_input_without_traceback(tmp_path: Path):
    r = subprocess.run([sys.executable, "-m", "segpipe", "onboard", str(tmp_path / "missing"), "--name", "x",
                        "--workspace", str(tmp_path / "ws")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert str(tmp_path / "missing") in r.stderr and "fix:" in r.stderr
