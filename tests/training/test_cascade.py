"""The cascade from the command line: 3d_lowres on every fold -> 3d_cascade_fullres -> predict -> select.

Small synthetic cases (40 x 64 x 64 voxels) planned for a tiny memory budget, so that the fullres patch covers
under a quarter of the image and the planner adds 3d_lowres and 3d_cascade_fullres, as it does for full-size CT.
Networks and patches are made tiny so that every fold trains in seconds.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_NETWORK, make_synthetic_dataset

from segpipe.cli import main
from segpipe.errors import SegpipeError
from segpipe.io.images import read_image
from segpipe.io.jsonio import read_json, write_json
from segpipe.planning.plans import read_plans
from segpipe.preprocessing.cascade import foreground_values, one_hot_channels, previous_stage_on_grid

TRAIN = ["--epochs", "1", "--iterations-per-epoch", "2", "--val-iterations", "1", "--workers", "0", "--threads", "1"]


@pytest.fixture(scope="module")
def cascade_ws(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cascade")
    ds = make_synthetic_dataset(root / "src", n_cases=3, shape=(40, 64, 64), n_classes=2)
    ws = root / "ws"
    assert main(["onboard", str(ds.root), "--name", "c", "--workspace", str(ws), "--workers", "1"]) == 0
    assert main(["fingerprint", "-w", str(ws), "--workers", "1"]) == 0
    assert main(["plan", "-w", str(ws), "--memory-gb", "0.01"]) == 0
    path = ws / "c" / "plans.json"
    doc = read_json(path, kind="plans")
    for name in ("3d_fullres", "3d_lowres", "3d_cascade_fullres"):
        doc["configurations"][name].update(patch_size=[8, 16, 16], batch_size=2, network=dict(TINY_NETWORK))
    write_json(path, doc, kind="plans")
    return ws, ds.root


def test_the_planner_adds_the_cascade_with_lowres(cascade_ws):
    plans = read_plans(cascade_ws[0] / "c" / "plans.json")
    cascade = plans.configuration("3d_cascade_fullres")
    assert cascade.previous_stage == "3d_lowres" and cascade.data_identifier == "3d_fullres"
    assert plans.cascade_stages() == {"3d_cascade_fullres": "3d_lowres"}
    assert cascade.spacing == plans.configuration("3d_fullres").spacing


def test_the_cascade_needs_every_lowres_fold_first(cascade_ws):
    from segpipe.preprocessing.run import run_preprocess
    from segpipe.workspace import Workspace

    with pytest.raises(SegpipeError) as info:
        run_preprocess(Workspace(cascade_ws[0], "c"), "3d_cascade_fullres")
    (p,) = info.value.problems
    assert "fold(s) [0, 1, 2] of 3d_lowres are not trained" in p.problem
    assert "segpipe train --config 3d_lowres --fold each" in p.fix


def test_lowres_cascade_predict_select_end_to_end(cascade_ws, tmp_path: Path, capsys):
    ws, src = cascade_ws
    for config in ("3d_lowres", "3d_cascade_fullres"):
        # for the cascade, preprocess also moves 3d_lowres's cross-validation predictions onto the fullres grid
        assert main(["preprocess", "-w", str(ws), "--config", config, "--workers", "1"]) == 0
        for fold in ("0", "1", "2"):
            assert main(["train", "-w", str(ws), "--config", config, "--fold", fold, *TRAIN]) == 0
    prev = ws / "c" / "preprocessed" / "3d_fullres" / "previous_stage" / "3d_lowres"
    assert sorted(p.name[:-len("_prev.b2nd")] for p in prev.glob("*_prev.b2nd")) == [
        "case_000", "case_001", "case_002"]
    # the cascade network takes the image plus one channel per foreground label
    from segpipe.training.checkpoint import load_checkpoint

    state = load_checkpoint(ws / "c" / "results" / "3d_cascade_fullres" / "fold_0" / "checkpoint_final.pt")
    assert state["n_channels"] == 1 + 2
    out = tmp_path / "pred"
    capsys.readouterr()
    assert main(["predict", "-w", str(ws), "-i", str(src / "imagesTr"), "-o", str(out), "--config",
                 "3d_cascade_fullres", "--no-mirror", "--workers", "1"]) == 0
    assert "3d_lowres" in capsys.readouterr().out  # the chain is named
    for cid in ("case_000", "case_001", "case_002"):
        label, geo = read_image(out / f"{cid}.nii.gz")
        ref, ref_geo = read_image(src / "labelsTr" / f"{cid}.nii.gz")
        assert label.shape == ref.shape and not geo.mismatches(ref_geo)
    assert main(["select", "-w", str(ws), "--config", "3d_lowres", "3d_cascade_fullres"]) == 0
    sel = read_json(ws / "c" / "selection.json", kind="selection")
    assert "3d_cascade_fullres" in sel["candidates"] and "3d_lowres" in sel["candidates"]


def test_previous_stage_segmentation_lands_on_the_preprocessed_grid():
    from fixtures.plans import make_configuration

    from segpipe.io.images import Geometry
    from segpipe.preprocessing.case import preprocess_case

    rng = np.random.default_rng(0)
    shape = (12, 30, 28)
    label = np.zeros(shape, np.int16)
    label[3:9, 8:20, 6:18] = 1
    label[5:7, 10:14, 8:12] = 2
    image = (rng.normal(0, 1, shape) + 3 * label).astype(np.float32)
    geo = Geometry(shape, (3.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    cfg = make_configuration([3.0, 2.0, 2.0])
    _, seg, props = preprocess_case(image[None], label, geo, cfg)
    on_grid = previous_stage_on_grid(label, props, cfg)
    # the previous stage's map goes through the same crop and resampling as the case's own label did
    assert on_grid.shape == seg.shape[1:]
    np.testing.assert_array_equal(on_grid, np.where(seg[0] < 0, 0, seg[0]))
    channels = one_hot_channels(on_grid, foreground_values({"background": 0, "a": 1, "b": 2}))
    assert channels.shape == (2, *on_grid.shape) and channels.dtype == np.float32
    np.testing.assert_array_equal(channels[1], (on_grid == 2).astype(np.float32))
