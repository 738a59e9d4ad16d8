"""Registered metrics (segpipe/evaluation/metric_registry.py; a plug-in's, or one registered here) in `segpipe
evaluate`'s summary.json and metrics.csv: per case and class and in the means, by default when cheap, or chosen
with --metrics."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from segpipe import api, plugins
from segpipe.cli import main
from segpipe.evaluation import metric_registry
from segpipe.evaluation.metric_registry import expensive, register_metric
from segpipe.io.jsonio import read_json

SPACING = (2.0, 1.0, 1.0)  # (z, y, x) mm: a voxel is 2 mm^3
LABELS = ["--labels", "background=0", "a=1", "b=2"]


@pytest.fixture
def metrics(monkeypatch):
    """``volume-difference`` (cheap) and ``slow-one`` (expensive) registered for this test only."""
    plugins.load_plugins()
    monkeypatch.setattr(metric_registry, "METRICS", dict(metric_registry.METRICS))
    monkeypatch.setattr(plugins, "PROVIDERS", dict(plugins.PROVIDERS))

    @register_metric("volume-difference")
    def volume_difference(pred, ref, spacing):
        """Predicted minus reference volume, mm^3."""
        return float((int(pred.sum()) - int(ref.sum())) * np.prod(spacing))

    @register_metric("slow-one")
    @expensive
    def slow_one(pred, ref, spacing):
        return 1.0


def _write(arr: np.ndarray, path: Path) -> None:
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing(SPACING[::-1])
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path, dict[str, dict[str, float]]]:
    """pred/ and ref/ with two cases of classes a=1, b=2, and the volume difference of each (mm^3)."""
    want: dict[str, dict[str, float]] = {}
    for i, cid in enumerate(["c0", "c1"]):
        ref = np.zeros((4, 8, 8), np.uint8)
        ref[1:3, 2:6, 2:6] = 1  # 32 voxels
        ref[0, 0:2, 0:2] = 2    # 4 voxels
        pred = ref.copy()
        pred[3, 2:4 + i, 2:6] = 1  # 8 (c0) or 12 (c1) voxels more of a
        pred[0, 0, 0:2] = 0        # 2 voxels less of b
        _write(ref, tmp_path / "ref" / f"{cid}.nii.gz")
        _write(pred, tmp_path / "pred" / f"{cid}.nii.gz")
        want[cid] = {"a": (8 + 4 * i) * 2.0, "b": -2 * 2.0}
    return tmp_path / "pred", tmp_path / "ref", want


def test_a_registered_metric_is_in_summary_per_case_and_in_the_mean(metrics, folders, tmp_path: Path):
    pred, ref, want = folders
    out = tmp_path / "ev"
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ref), "-o", str(out), *LABELS, "--workers", "1"]) == 0
    summary = read_json(out / "summary.json", kind="evaluation")
    for cid, classes in want.items():
        for cls, value in classes.items():
            assert summary["cases"][cid][cls]["volume-difference"] == pytest.approx(value)
    assert summary["mean"]["a"]["volume-difference"] == pytest.approx((16 + 24) / 2)
    assert summary["mean"]["b"]["volume-difference"] == pytest.approx(-4.0)
    assert summary["mean"]["a"]["n_cases_per_metric"]["volume-difference"] == 2
    assert "slow-one" not in summary["registered_metrics"]  # expensive: only when asked for
    assert summary["registered_metrics"] == {"dice": "dice", "volume-difference": "volume-difference"}
    assert "slow-one" not in summary["cases"]["c0"]["a"]
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["volume-difference"]) for r in rows] == pytest.approx([16.0, -4.0, 24.0, -4.0])


def test_metrics_are_chosen_by_name_and_an_unknown_one_is_refused(metrics, folders, tmp_path: Path, capsys):
    pred, ref, _ = folders
    summary = api.evaluate(pred, ref, {"background": 0, "a": 1, "b": 2}, metrics=["slow-one", "hd95"],
                           surface=False)
    assert summary["registered_metrics"] == {"slow-one": "slow-one", "hd95": "hd95_mm"}
    assert summary["mean"]["a"]["slow-one"] == 1.0 and "volume-difference" not in summary["mean"]["a"]
    assert summary["cases"]["c0"]["a"]["hd95_mm"] == pytest.approx(2.0)  # one z slice (2 mm), though no surface
    assert "surface_dice" not in summary["cases"]["c0"]["a"]
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ref), "-o", str(tmp_path / "ev2"), *LABELS,
                 "--metrics", "volume-diference"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'volume-difference'" in err
    assert not (tmp_path / "ev2").exists()
