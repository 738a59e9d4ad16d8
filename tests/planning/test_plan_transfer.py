"""`segpipe plan --like WORKSPACE/DATASET`: another data set's plans used unchanged (nnU-Net's
move_plans_between_datasets), refused where the networks could not fit, recorded, and redone when the source
plans change."""
from __future__ import annotations

from pathlib import Path

from conftest import copy_ws, hippo_ids, make_msd, make_synthetic_dataset

from segpipe.cli import main
from segpipe.io.jsonio import read_json, write_json


def _onboard(src: Path, ws: Path, name: str, *extra: str) -> None:
    assert main(["onboard", str(src), "--name", name, "--workspace", str(ws), "--workers", "1", *extra]) == 0
    assert main(["fingerprint", "-w", str(ws), "-n", name, "--workers", "1"]) == 0


def test_plans_of_another_dataset_are_used_unchanged(tiny_ws_template: Path, tmp_path: Path):
    source = copy_ws(tiny_ws_template, tmp_path / "source")
    src_plans = read_json(source / "tiny" / "plans.json", kind="plans")
    ws = tmp_path / "ws"
    _onboard(make_msd(tmp_path / "other", hippo_ids(8)[4:]), ws, "target")
    assert main(["plan", "-w", str(ws), "-n", "target", "--like", str(source / "tiny")]) == 0
    plans = read_json(ws / "target" / "plans.json", kind="plans")
    assert plans["dataset"] == "target" and plans["configurations"] == src_plans["configurations"]
    assert plans["configurations"]["3d_fullres"]["patch_size"] == [16, 24, 16]  # the source's hand-made plan
    assert plans["transferred_from"]["dataset"] == "tiny" and len(plans["transferred_from"]["sha256"]) == 64
    assert main(["preprocess", "-w", str(ws), "-n", "target", "--config", "3d_fullres", "--workers", "1"]) == 0

    # unchanged source: skipped; changed source plans: planned again from them
    assert main(["plan", "-w", str(ws), "-n", "target", "--like", str(source / "tiny")]) == 0
    src_plans["configurations"]["3d_fullres"]["batch_size"] = 3
    write_json(source / "tiny" / "plans.json", src_plans, kind="plans")
    assert main(["plan", "-w", str(ws), "-n", "target", "--like", str(source / "tiny" / "plans.json")]) == 0
    assert read_json(ws / "target" / "plans.json", kind="plans")["configurations"]["3d_fullres"]["batch_size"] == 3


def test_plans_for_other_channels_or_with_overrides_are_refused(tiny_ws_template: Path, tmp_path: Path, capsys):
    ws = tmp_path / "ws"
    data = make_synthetic_dataset(tmp_path / "two", layout="nnunet", n_channels=2)
    _onboard(data.root, ws, "two")
    assert main(["plan", "-w", str(ws), "-n", "two", "--like", str(tiny_ws_template / "tiny")]) == 2
    err = capsys.readouterr().err
    assert "1 input channel(s)" in err and "has 2" in err and "same channels" in err
    assert not (ws / "two" / "plans.json").exists()

    _onboard(make_msd(tmp_path / "other", hippo_ids(4)), ws, "one")
    assert main(["plan", "-w", str(ws), "-n", "one", "--like", str(tiny_ws_template / "tiny"),
                 "--patch-size", "16", "16", "16"]) == 2
    assert "--patch-size cannot change them" in capsys.readouterr().err
    assert main(["plan", "-w", str(ws), "-n", "one", "--like", str(tmp_path / "nowhere")]) == 2
    assert "no plans.json to transfer from" in capsys.readouterr().err


def test_like_refuses_options_it_would_ignore(tiny_ws_template: Path, tmp_path: Path, capsys):
    ws = tmp_path / "ws"
    _onboard(make_msd(tmp_path / "other", hippo_ids(4)), ws, "one")
    for extra in (["--preset", "resenc-m"], ["--memory-gb", "24"], ["--network", "residual"], ["--config", "2d"]):
        capsys.readouterr()
        assert main(["plan", "-w", str(ws), "-n", "one", "--like", str(tiny_ws_template / "tiny"), *extra]) == 2
        assert f"{extra[0]} cannot change them" in capsys.readouterr().err
