"""predict / evaluate / select from the command line on held-out real cases, with a tiny trained model."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_ws, hippo_file, hippo_ids

from segpipe.cli import main
from segpipe.io.images import read_image
from segpipe.io.jsonio import read_json

TRAIN = ["--config", "3d_fullres", "--epochs", "1", "--iterations-per-epoch", "4", "--val-iterations", "1",
         "--workers", "0", "--threads", "1"]


@pytest.fixture(scope="module")
def trained(tiny_ws_template: Path, tmp_path_factory) -> Path:
    ws = copy_ws(tiny_ws_template, tmp_path_factory.mktemp("pred") / "ws")
    assert main(["train", "-w", str(ws), *TRAIN, "--fold", "each"]) == 0
    return ws


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> tuple[Path, Path]:
    """4 hippocampus cases the tiny workspace never saw: images with nnU-Net naming, labels as they are."""
    root = tmp_path_factory.mktemp("held")
    img, lab = root / "images", root / "labels"
    img.mkdir()
    lab.mkdir()
    for cid in hippo_ids(10)[6:]:
        shutil.copy(hippo_file(cid), img / f"{cid}_0000.nii.gz")
        shutil.copy(hippo_file(cid, "labelsTr"), lab / f"{cid}.nii.gz")
    return img, lab


def _predict(ws: Path, img: Path, out: Path, *extra: str) -> None:
    assert main(["predict", "-w", str(ws), "--input", str(img), "--output", str(out), "--workers", "1",
                 *extra]) == 0


def test_predictions_have_input_geometry_and_evaluate_agrees_with_numpy(trained, held_out, tmp_path, capsys):
    img, lab = held_out
    out = tmp_path / "pred"
    _predict(trained, img, out, "--folds", "0")
    ids = hippo_ids(10)[6:]
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(f"{c}.nii.gz" for c in ids)
    for cid in ids:
        _, g_in = read_image(img / f"{cid}_0000.nii.gz")
        pred, g_out = read_image(out / f"{cid}.nii.gz")
        assert g_out.shape == g_in.shape and g_out.spacing == g_in.spacing
        assert g_out.origin == g_in.origin and g_out.direction == g_in.direction
        assert set(np.unique(pred)) <= {0, 1, 2}
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(out), "--ref", str(lab), "-w", str(trained)]) == 0
    ev = tmp_path / "pred_evaluation"  # the default output: a new folder beside --pred, never inside it
    summary = read_json(ev / "summary.json", kind="evaluation")
    for cid in ids:
        p, _ = read_image(out / f"{cid}.nii.gz")
        r, _ = read_image(lab / f"{cid}.nii.gz")
        for name, v in (("anterior", 1), ("posterior", 2)):
            inter = np.count_nonzero((p == v) & (r == v))
            expected = 2 * inter / (np.count_nonzero(p == v) + np.count_nonzero(r == v))
            assert summary["cases"][cid][name]["dice"] == pytest.approx(expected)
    rows = (ev / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("case,class,dice") and len(rows) == 1 + 2 * len(ids)
    assert "mean foreground Dice" in capsys.readouterr().out


def test_mirroring_single_fold_and_ensemble(trained, held_out, tmp_path):
    img, _ = held_out
    _predict(trained, img, tmp_path / "f0", "--folds", "0", "--save-probabilities")
    _predict(trained, img, tmp_path / "f1", "--folds", "1", "--save-probabilities")
    _predict(trained, img, tmp_path / "ens", "--folds", "0", "1", "--save-probabilities")
    _predict(trained, img, tmp_path / "nomirror", "--folds", "0", "--no-mirror")
    cid = hippo_ids(10)[6]
    p0 = np.load(tmp_path / "f0" / f"{cid}.npz")["probabilities"].astype(np.float32)
    p1 = np.load(tmp_path / "f1" / f"{cid}.npz")["probabilities"].astype(np.float32)
    pe = np.load(tmp_path / "ens" / f"{cid}.npz")["probabilities"].astype(np.float32)
    assert np.allclose(pe, (p0 + p1) / 2, atol=2e-3)
    assert np.allclose(pe.sum(0), 1, atol=5e-3)
    nm, _ = read_image(tmp_path / "nomirror" / f"{cid}.nii.gz")
    assert nm.shape == read_image(tmp_path / "f0" / f"{cid}.nii.gz")[0].shape


def test_select_then_predict_best(trained, held_out, tmp_path, capsys):
    capsys.readouterr()
    assert main(["select", "-w", str(trained)]) == 0
    out = capsys.readouterr().out
    assert "cross-validation Dice" in out and "best: 3d_fullres" in out
    sel = read_json(trained / "tiny" / "selection.json", kind="selection")
    assert sel["configs"] == ["3d_fullres"] and sel["folds"] == [0, 1, 2, 3, 4]
    assert set(sel["postprocessing"]) == {"foreground", "classes"}
    img, _ = held_out
    _predict(trained, img, tmp_path / "best", "--best", "--no-mirror")
    assert len(list((tmp_path / "best").glob("*.nii.gz"))) == 4


def test_predict_refuses_wrong_channel_count_and_missing_models(trained, held_out, tmp_path, capsys):
    img, _ = held_out
    bad = tmp_path / "two_channels"
    bad.mkdir()
    cid = hippo_ids(10)[6]
    for ch in ("0000", "0001"):
        shutil.copy(img / f"{cid}_0000.nii.gz", bad / f"{cid}_{ch}.nii.gz")
    assert main(["predict", "-w", str(trained), "-i", str(bad), "-o", str(tmp_path / "o")]) == 2
    assert "channel" in capsys.readouterr().err
    assert main(["predict", "-w", str(trained), "-i", str(img), "-o", str(tmp_path / "o2"), "--config", "2d"]) == 2
    assert "no trained fold of 2d" in capsys.readouterr().err
