from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import hippo_ids, make_msd

from segpipe.cli import main
from segpipe.fingerprint.aggregate import intensity_stats
from segpipe.fingerprint.case import fingerprint_case
from segpipe.io.images import Geometry
from segpipe.io.jsonio import read_json
from segpipe.workspace import Workspace


def _case(seed: int = 0):
    rng = np.random.default_rng(seed)
    data = np.zeros((2, 20, 30, 40), np.float32)
    data[:, 3:15, 5:25, 10:30] = rng.normal(100, 10, size=(2, 12, 20, 20))
    label = np.zeros((20, 30, 40), np.int16)
    label[5:10, 8:20, 12:25] = 1
    geo = Geometry((20, 30, 40), (2.0, 1.0, 1.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    return data, label, geo


def test_crop_box_and_foreground_samples():
    data, label, geo = _case()
    fp = fingerprint_case(data, label, geo, n_samples=10**9, seed=1)
    assert fp["crop_bbox"] == [[3, 15], [5, 25], [10, 30]] and fp["shape_after_crop"] == [12, 20, 20]
    assert fp["relative_size_after_crop"] == pytest.approx(12 * 20 * 20 / (20 * 30 * 40))
    n_fg = 5 * 12 * 13
    assert fp["foreground_voxels"] == n_fg
    # under the cap every foreground voxel is used: statistics are exact
    assert np.array_equal(np.sort(fp["samples"][1]), np.sort(data[1][label > 0]))
    assert fp["orientation"] in ("LPS", "RAI") or len(fp["orientation"]) == 3


def test_sampling_is_capped_seeded_and_without_replacement():
    data, label, geo = _case()
    a = fingerprint_case(data, label, geo, n_samples=100, seed=7)["samples"][0]
    b = fingerprint_case(data, label, geo, n_samples=100, seed=7)["samples"][0]
    c = fingerprint_case(data, label, geo, n_samples=100, seed=8)["samples"][0]
    assert a.size == 100 and np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.unique(a).size == 100


def test_intensity_stats_match_numpy():
    v = np.random.default_rng(3).gamma(2.0, 50.0, size=5000).astype(np.float32)
    st = intensity_stats(v)
    assert st["mean"] == pytest.approx(v.mean(), rel=1e-6) and st["median"] == pytest.approx(np.median(v))
    assert st["percentile_99_5"] == pytest.approx(np.percentile(v.astype(np.float64), 99.5))
    assert intensity_stats(np.zeros(0))["mean"] is None


def test_cli_parallel_equals_serial_and_skips_when_unchanged(tmp_path: Path, capsys):
    src = make_msd(tmp_path / "T", hippo_ids(12))
    ws_root = tmp_path / "ws"
    assert main(["onboard", str(src), "--name", "h", "--workspace", str(ws_root)]) == 0
    ws = Workspace(ws_root, "h")
    assert main(["fingerprint", "-w", str(ws_root), "--workers", "1"]) == 0
    serial = read_json(ws.fingerprint_json, kind="fingerprint")
    assert main(["fingerprint", "-w", str(ws_root), "--workers", "2", "--force"]) == 0
    parallel = read_json(ws.fingerprint_json, kind="fingerprint")
    assert json.dumps(serial, sort_keys=True) == json.dumps(parallel, sort_keys=True)
    assert serial["n_cases"] == 12 and serial["intensity"]["0"]["n_samples"] > 0
    capsys.readouterr()
    assert main(["fingerprint", "-w", str(ws_root)]) == 0
    assert "unchanged, skipped" in capsys.readouterr().out
    (ws.raw / "imagesTr").resolve()  # the source is untouched; touching a case re-runs the stage
    import os
    os.utime(src / "imagesTr" / f"{hippo_ids(1)[0]}.nii.gz", ns=(5, 5))
    assert main(["fingerprint", "-w", str(ws_root)]) == 0
    assert "written" in capsys.readouterr().out


def test_fingerprint_without_onboarding_says_what_to_do(tmp_path: Path, capsys):
    assert main(["fingerprint", "-w", str(tmp_path / "nowhere")]) == 2
    assert "segpipe onboard" in capsys.readouterr().err
