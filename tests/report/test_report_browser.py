"""The report in a real browser: headless Chromium opens report/index.html from disk; the page reports no script
or console error, every image loads, every sortable table sorts both ways, and a screenshot is written.

Two workspaces, built with every stage and a tiny network so that they train in seconds: the demo's (the 20
hippocampus MRI cases shipped with segpipe, planned for a time budget, the 2d configuration trained on 5 folds,
selected) and a 2D one of real HC18 fetal head ultrasound frames (PNGs; marked ``real_data``). Screenshots go to
``$SEGPIPE_REPORT_SCREENSHOTS`` when set (docs/images for docs/report.md), else to the test's temporary folder.

Chromium is Debian's ``chromium`` package: ``make test`` runs ``.ci/ensure_chromium``, which installs it where it
can; without it these tests are skipped, saying why.
"""
from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import pytest
from browser import check_page, find_browser, screenshot
from conftest import EXAMPLE, FETAL

from segpipe.cli import main
from segpipe.io.jsonio import read_json, write_json

TINY_2D = {"name": "plain", "n_stages": 3, "features_per_stage": [4, 8, 16], "kernel_sizes": [[3, 3]] * 3,
           "strides": [[1, 1], [2, 2], [2, 2]], "n_conv_per_stage": [1, 1, 1], "n_conv_per_stage_decoder": [1, 1]}
# training batches of 2; the final validation keeps the plan's batch size (fewer, larger sliding-window batches)
TRAIN = ["--epochs", "1", "--iterations-per-epoch", "2", "--val-iterations", "1", "--batch-size", "2", "--workers", "0",
         "--threads", "2", "--device", "cpu"]
FETAL_FRAMES = 3  # 3 folds of one frame each: best, median and worst are all shown


@pytest.fixture(scope="module")
def browser() -> str:
    path = find_browser()
    if path is None:
        pytest.skip("no headless Chromium: `chromium` is not on PATH and .ci/ensure_chromium could not install "
                    "Debian's chromium package here (it needs root and apt-get)")
    return path


def screenshot_dir(tmp_path: Path) -> Path:
    return Path(os.environ.get("SEGPIPE_REPORT_SCREENSHOTS") or tmp_path)


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def build_2d(ws: Path, name: str, onboard: list[str], patch: list[int], plan: list[str] = ()) -> Path:
    """Every stage on a 2d configuration with a tiny network and ``patch`` (y, x): onboard, fingerprint, plan,
    preprocess, train every fold (2 iterations), select, report. Returns report/index.html."""
    assert main(["onboard", *onboard, "--name", name, "-w", str(ws), "--workers", "2"]) == 0
    assert main(["fingerprint", "-w", str(ws), "--workers", "2"]) == 0
    assert main(["plan", "-w", str(ws), *plan]) == 0
    plans_path = ws / name / "plans.json"
    plans = read_json(plans_path, kind="plans")
    config = plans["configurations"]["2d"]
    config.update({"patch_size": patch, "network": dict(TINY_2D)})
    config["why"].update({"patch_size": f"set by the test to {patch} (a tiny, fast plan)",
                          "topology": "set by the test: 3 stages, features [4, 8, 16] (a tiny, fast network)"})
    write_json(plans_path, plans, kind="plans")
    assert main(["preprocess", "-w", str(ws), "--config", "2d", "--workers", "2"]) == 0
    assert main(["train", "-w", str(ws), "--config", "2d", "--fold", "each", *TRAIN]) == 0
    assert main(["select", "-w", str(ws), "--config", "2d"]) == 0
    assert main(["report", "-w", str(ws)]) == 0
    return ws / name / "report" / "index.html"


def check_in_browser(browser: str, index: Path, shot: Path, n_images: int) -> None:
    check = check_page(browser, index)
    assert check.checked, f"the page's check script did not run: {check}"
    assert check.errors == 0, f"errors in the page: {check.error_list}; console: {check.console}"
    assert check.images == check.images_loaded >= n_images, check
    assert check.sorted_tables >= 2 and check.sort_errors == 0, check
    screenshot(browser, index, shot)
    assert png_size(shot) == (1280, 4000)
    assert shot.stat().st_size > 50_000  # a page, not a blank screen


def test_demo_workspace_report_renders(browser: str, tmp_path: Path):
    index = build_2d(tmp_path / "ws", "hippocampus_example", [str(EXAMPLE)], [56, 40],
                     plan=["--budget", "20s", "--device", "cpu"])
    page = index.read_text(encoding="utf-8")
    for section in ("data", "plans", "training", "cross-validation", "selection", "cases"):
        assert f'<section id="{section}">' in page
    assert "Time budget" in page  # plan --budget's candidates and choice
    # geometry, intensities, budget, training, box plots, 3 cases
    check_in_browser(browser, index, screenshot_dir(tmp_path) / "report_demo.png", n_images=8)


@pytest.mark.real_data("fetal_head_us_2d")
def test_fetal_head_2d_report_renders(browser: str, tmp_path: Path):
    src = tmp_path / "hc18"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    for name in sorted(p.name for p in (FETAL / "images").iterdir())[:FETAL_FRAMES]:
        shutil.copy(FETAL / "images" / name, src / "images" / name)
        shutil.copy(FETAL / "masks_filled_derived" / name.replace(".png", "_Mask.png"), src / "masks")
    shutil.copy(FETAL / "training_set_pixel_size_and_HC.csv", src / "pixel_size.csv")
    onboard = [str(src), "--image-glob", "images/*.png", "--label-glob", "masks/*_Mask.png", "--spacing-csv",
               str(src / "pixel_size.csv"), "--channels", "US", "--labels", "background=0", "head=1"]
    index = build_2d(tmp_path / "ws", "fetal_head", onboard, [128, 192])
    page = index.read_text(encoding="utf-8")
    assert "the whole image; rows: axis y, columns: axis x" in page.lower()  # 2D cases are not sliced
    check_in_browser(browser, index, screenshot_dir(tmp_path) / "report_fetal_head_2d.png", n_images=7)
