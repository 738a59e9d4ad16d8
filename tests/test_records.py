"""Stage records: workspace-relative (a moved workspace still skips), trained folds tied to their plan and
preprocessing, and artifacts of a newer segpipe never read or overwritten."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import copy_ws, tree_state

from segpipe.cli import main
from segpipe.io.jsonio import SCHEMA_VERSION, read_json, write_json
from segpipe.records import TRAIN_ORIGIN, content_hash, record_hash, write_record
from segpipe.workspace import Workspace

TRAIN = ["--config", "3d_fullres", "--epochs", "1", "--iterations-per-epoch", "2", "--val-iterations", "1",
         "--workers", "0", "--threads", "1", "--device", "cpu"]


def _records_text(ws: Path) -> str:
    return "".join(p.read_text() for p in sorted((ws / "tiny" / "records").glob("*.json")))


@pytest.fixture(scope="module")
def trained(tiny_ws_template: Path, tmp_path_factory) -> Path:
    """The tiny workspace with fold 0 trained and validated."""
    ws = copy_ws(tiny_ws_template, tmp_path_factory.mktemp("rec") / "ws")
    assert main(["train", "-w", str(ws), *TRAIN, "--fold", "0"]) == 0
    return ws


def test_records_hold_no_absolute_workspace_paths(trained: Path):
    text = _records_text(trained)
    assert str(trained) not in text
    rec = read_json(trained / "tiny" / "records" / "preprocess_3d_fullres.json", kind="stage_record")
    assert "dataset.json" in rec["inputs"] and any(k.startswith("raw/") for k in rec["inputs"])
    train = read_json(trained / "tiny" / "records" / "train_3d_fullres_fold_0.json", kind="stage_record")
    assert set(train["outputs"]) == {"results/3d_fullres/fold_0/checkpoint_final.pt",
                                     "results/3d_fullres/fold_0/validation/summary.json"}


@pytest.mark.parametrize("copy", [shutil.copy2, shutil.copy], ids=["cp -a", "cp -r (new mtimes)"])
def test_moved_workspace_skips_every_up_to_date_stage(trained: Path, tmp_path: Path, capsys, copy):
    moved = tmp_path / "elsewhere" / "ws"
    moved.parent.mkdir()
    shutil.copytree(trained, moved, symlinks=True, copy_function=copy)  # raw/ stays a link to the source
    before = tree_state(moved / "tiny")
    capsys.readouterr()
    dataset = read_json(moved / "tiny" / "dataset.json", kind="dataset")
    assert main(["onboard", dataset["source"], "--name", "tiny", "-w", str(moved), "--workers", "1"]) == 0
    assert main(["fingerprint", "-w", str(moved), "--workers", "1"]) == 0
    assert main(["preprocess", "-w", str(moved), "--config", "3d_fullres", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("unchanged, skipped") == 3, out
    fold = moved / "tiny" / "results" / "3d_fullres" / "fold_0"
    stamps = {p: p.stat().st_mtime_ns for p in fold.rglob("*") if p.is_file()}
    assert main(["train", "-w", str(moved), *TRAIN, "--fold", "0"]) == 0  # neither trains nor validates again
    assert {p: p.stat().st_mtime_ns for p in fold.rglob("*") if p.is_file()} == stamps
    after = tree_state(moved / "tiny")
    assert after == before


def test_records_of_older_versions_with_absolute_paths_still_match(trained: Path, tmp_path: Path, capsys):
    ws = copy_ws(trained, tmp_path / "ws")
    path = ws / "tiny" / "records" / "fingerprint.json"
    rec = read_json(path, kind="stage_record")
    rec["inputs"] = {str(ws / "tiny" / k): v for k, v in rec["inputs"].items()}
    rec["outputs"] = {str(ws / "tiny" / k): v for k, v in rec["outputs"].items()}
    write_json(path, rec, kind="stage_record")
    capsys.readouterr()
    assert main(["fingerprint", "-w", str(ws), "--workers", "1"]) == 0
    assert "unchanged, skipped" in capsys.readouterr().out


def _set_batch(ws: Path, batch: int) -> None:
    plans_path = ws / "tiny" / "plans.json"
    plans = read_json(plans_path, kind="plans")
    plans["configurations"]["3d_fullres"]["batch_size"] = batch
    write_json(plans_path, plans, kind="plans")


def test_fold_trained_with_another_plan_is_refused_until_forced(trained: Path, tmp_path: Path, capsys):
    ws = copy_ws(trained, tmp_path / "ws")
    fold = ws / "tiny" / "results" / "3d_fullres" / "fold_0"
    assert (fold / TRAIN_ORIGIN).is_file()
    _set_batch(ws, 3)
    ckpt = content_hash(fold / "checkpoint_final.pt")
    capsys.readouterr()
    # the batch size does not change the preprocessed data (only spacing, normalization and resampling do)
    assert main(["preprocess", "-w", str(ws), "--workers", "1"]) == 0
    assert "unchanged, skipped" in capsys.readouterr().out
    assert main(["train", "-w", str(ws), *TRAIN, "--fold", "0"]) == 2
    err = capsys.readouterr().err
    assert "this fold was trained with another plan" in err and "--force" in err and TRAIN_ORIGIN in err
    assert content_hash(fold / "checkpoint_final.pt") == ckpt
    # prediction with that fold is refused too
    img = ws / "in"
    img.mkdir()
    raw = ws / "tiny" / "raw" / "imagesTr"
    first = sorted(raw.iterdir())[0]
    shutil.copy(first, img / first.name.replace(".nii.gz", "_0000.nii.gz"))
    assert main(["predict", "-w", str(ws), "-i", str(img), "-o", str(tmp_path / "pred"), "--folds", "0",
                 "--workers", "1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "fold 0 of 3d_fullres was trained with another plan" in err
    assert not (tmp_path / "pred").exists() or not any((tmp_path / "pred").iterdir())
    # --force retrains with the new plan; then both work again
    assert main(["train", "-w", str(ws), *TRAIN, "--fold", "0", "--force"]) == 0
    assert main(["train", "-w", str(ws), *TRAIN, "--fold", "0"]) == 0
    assert main(["predict", "-w", str(ws), "-i", str(img), "-o", str(tmp_path / "pred"), "--folds", "0",
                 "--workers", "1", "--device", "cpu", "--no-mirror"]) == 0
    # the prediction's record is in the workspace, not in the user's output folder
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == [first.name]
    recs = list((ws / "tiny" / "records").glob("predict_*.json"))
    assert len(recs) == 1
    rec = read_json(recs[0], kind="stage_record")
    assert rec["info"]["output"] == str((tmp_path / "pred").absolute())
    assert str(tmp_path / "pred" / first.name) in rec["outputs"]


def test_fold_trained_on_other_preprocessed_data_is_refused(trained: Path, tmp_path: Path, capsys):
    ws = copy_ws(trained, tmp_path / "ws")
    w = Workspace(ws, "tiny")
    stage = "preprocess_3d_fullres"
    before = record_hash(w, stage)
    rec = read_json(w.record(stage), kind="stage_record")
    rec["inputs"]["raw/imagesTr/extra.nii.gz"] = "stat:1:2"  # as if the raw data had changed and been redone
    write_record(w, stage, rec["inputs"], rec["settings"], [])
    assert record_hash(w, stage) != before
    capsys.readouterr()
    assert main(["train", "-w", str(ws), *TRAIN, "--fold", "0"]) == 2
    err = capsys.readouterr().err
    assert "this fold was trained with another plan" in err and "preprocessed data" in err


def test_unfinished_fold_of_another_plan_is_not_resumed(trained: Path, tmp_path: Path, capsys):
    ws = copy_ws(trained, tmp_path / "ws")
    fold = ws / "tiny" / "results" / "3d_fullres" / "fold_0"
    shutil.copy(fold / "checkpoint_final.pt", fold / "checkpoint_latest.pt")
    (fold / "checkpoint_final.pt").unlink()
    _set_batch(ws, 3)
    assert main(["preprocess", "-w", str(ws), "--workers", "1"]) == 0
    capsys.readouterr()
    assert main(["train", "-w", str(ws), *TRAIN, "--fold", "0", "--resume"]) == 2
    assert "this fold was trained with another plan" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ newer schema
def _make_newer(path: Path) -> None:
    obj = json.loads(path.read_text())
    obj["schema_version"] = SCHEMA_VERSION + 1
    path.write_text(json.dumps(obj))


def test_newer_artifact_is_refused_when_read(trained: Path, tmp_path: Path, capsys):
    ws = copy_ws(trained, tmp_path / "ws")
    _make_newer(ws / "tiny" / "plans.json")
    before = tree_state(ws)
    capsys.readouterr()
    assert main(["preprocess", "-w", str(ws), "--config", "3d_fullres", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "written by a newer segpipe" in err and "upgrade segpipe" in err and "plans.json" in err
    assert tree_state(ws) == before


@pytest.mark.parametrize("target", ["plans.json", "records/plan.json"])
def test_newer_artifact_is_never_overwritten_even_with_force(trained: Path, tmp_path: Path, target: str, capsys):
    ws = copy_ws(trained, tmp_path / "ws")
    _make_newer(ws / "tiny" / target)
    before = tree_state(ws)
    capsys.readouterr()
    assert main(["plan", "-w", str(ws), "--force"]) == 2
    err = capsys.readouterr().err
    assert "written by a newer segpipe" in err and "use a newer segpipe or another workspace" in err
    assert tree_state(ws) == before


def test_write_json_refuses_to_replace_a_newer_file(tmp_path: Path):
    from segpipe.errors import SegpipeError

    path = tmp_path / "x.json"
    path.write_text(json.dumps({"schema_version": SCHEMA_VERSION + 5, "kind": "plans", "future": True}))
    with pytest.raises(SegpipeError, match="use a newer segpipe or another workspace"):
        write_json(path, {"a": 1}, kind="plans")
    assert json.loads(path.read_text())["future"] is True
    with pytest.raises(SegpipeError, match="upgrade segpipe"):
        read_json(path, kind="plans")
    path.write_text("not json")  # a damaged file may be replaced
    write_json(path, {"a": 1}, kind="plans")
    assert read_json(path, kind="plans")["a"] == 1


def test_a_damaged_record_means_run_again(trained: Path, tmp_path: Path, capsys):
    ws = copy_ws(trained, tmp_path / "ws")
    (ws / "tiny" / "records" / "fingerprint.json").write_text("{ damaged")
    capsys.readouterr()
    assert main(["fingerprint", "-w", str(ws), "--workers", "1"]) == 0
    assert "unchanged, skipped" not in capsys.readouterr().out
    assert read_json(ws / "tiny" / "records" / "fingerprint.json", kind="stage_record")["stage"] == "fingerprint"
