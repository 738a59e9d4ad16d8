import subprocess
import sys
from pathlib import Path

from segpipe.cli import main
from segpipe.io.images import read_image
from segpipe.io.jsonio import read_json
from segpipe.training.checkpoint import load_checkpoint


def test_demo_runs_every_stage_on_packaged_data(tmp_path: Path, capsys):
    # 45 s per fold: room for the final validation's reserve (at most 40% of the budget) and for slow loader start-up
    # on a loaded machine, where 20 s was refused (~8.4 s of validation windows) and 30 s too (3 first iterations
    # of a fold at ~6 s each while its 2 augmentation workers started)
    assert main(["demo", "--workspace", str(tmp_path / "demo"), "--workers", "2", "--budget", "45s",
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
    # the demo ends with the Dice and the report's path (`make demo`'s last lines)
    index = ds / "report" / "index.html"
    lines = out.strip().splitlines()
    assert "cross-validation Dice" in lines[-2] and lines[-1] == f"report: {index}"
    page = index.read_text(encoding="utf-8")
    for section in ("data", "plans", "training", "cross-validation", "selection", "cases"):
        assert f'<section id="{section}">' in page
    from report.browser import check_page, find_browser  # tests/report/browser.py

    browser = find_browser()  # where there is none, tests/report/test_report_browser.py is skipped, saying why
    if browser is not None:
        check = check_page(browser, index)
        assert check.checked and check.errors == 0 and check.images == check.images_loaded > 0, check


def test_console_script_reports_bad_input_without_traceback(tmp_path: Path):
    r = subprocess.run([sys.executable, "-m", "segpipe", "onboard", str(tmp_path / "missing"), "--name", "x",
                        "--workspace", str(tmp_path / "ws")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert str(tmp_path / "missing") in r.stderr and "fix:" in r.stderr
