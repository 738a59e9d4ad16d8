"""Onboarding each supported layout as it is, without touching the user's files."""
from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import FETAL, hippo_file, hippo_ids, make_hc18_like, make_msd, tree_state

from segpipe.cli import main
from segpipe.dataset.formats import detect_format
from segpipe.dataset.formats.common import OnboardOptions
from segpipe.dataset.reading import read_case
from segpipe.dataset.store import load_dataset
from segpipe.workspace import Workspace

LABELS = ["--labels", "background=0", "anterior=1", "posterior=2"]


def _run(*args: str) -> int:
    return main(["onboard", *args, "--workers", "1"])


def test_msd_with_dataset_json_links_and_never_writes_source(tmp_path: Path):
    src = make_msd(tmp_path / "Task04", hippo_ids(5))
    before = tree_state(src)
    assert _run(str(src), "--name", "hip", "--workspace", str(tmp_path / "ws")) == 0
    ws = Workspace(tmp_path / "ws", "hip")
    spec = load_dataset(ws)
    assert spec.format == "msd" and spec.labels == {"background": 0, "anterior": 1, "posterior": 2}
    assert spec.channels == {"0": "MRI"} and [c.id for c in spec.cases] == hippo_ids(5)
    assert ws.raw.is_symlink() and ws.raw.resolve() == src.resolve()
    assert tree_state(src) == before
    data, label, geo = read_case(spec, ws.raw, spec.cases[0])
    assert data.shape[0] == 1 and data.shape[1:] == label.shape == geo.shape
    assert set(np.unique(label)) == {0, 1, 2}


def test_msd_without_dataset_json_takes_labels_from_flag_or_data(tmp_path: Path, capsys):
    src = make_msd(tmp_path / "T", hippo_ids(3), with_json=False, copy=False)
    assert detect_format(src, OnboardOptions(name="x")) == "msd"
    assert _run(str(src), "--name", "a", "--workspace", str(tmp_path / "ws"), *LABELS) == 2
    assert "outside the data set folder" in capsys.readouterr().err
    assert _run(str(src), "--name", "a", "--workspace", str(tmp_path / "ws"), *LABELS,
                "--allow-external-links") == 0
    assert load_dataset(Workspace(tmp_path / "ws", "a")).labels["posterior"] == 2
    assert _run(str(src), "--name", "b", "--workspace", str(tmp_path / "ws"), "--copy") == 2
    assert _run(str(src), "--name", "b", "--workspace", str(tmp_path / "ws"), "--copy",
                "--allow-external-links") == 0
    assert not any(p.is_symlink() for p in (tmp_path / "ws" / "b" / "raw").rglob("*"))
    assert load_dataset(Workspace(tmp_path / "ws", "b")).labels == {"background": 0, "label_1": 1, "label_2": 2}
    assert "no label names given" in capsys.readouterr().err


def test_nnunet_raw_layout_with_two_channels(tmp_path: Path):
    src = tmp_path / "Dataset001"
    (src / "imagesTr").mkdir(parents=True)
    (src / "labelsTr").mkdir()
    for cid in hippo_ids(3):
        for ch in ("0000", "0001"):
            os.symlink(hippo_file(cid), src / "imagesTr" / f"{cid}_{ch}.nii.gz")
        os.symlink(hippo_file(cid, "labelsTr"), src / "labelsTr" / f"{cid}.nii.gz")
    (src / "imagesTr" / "._hidden_0000.nii.gz").write_bytes(b"macOS resource fork")
    (src / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1", "1": "FLAIR"}, "labels": {
        "background": 0, "anterior": 1, "posterior": 2}, "numTraining": 3, "file_ending": ".nii.gz"}))
    ws_root = tmp_path / "ws"
    # the symlinks point outside the folder: refused unless copied
    assert _run(str(src), "--name", "nn", "--workspace", str(ws_root)) == 2
    assert _run(str(src), "--name", "nn", "--workspace", str(ws_root), "--format", "nnunet", "--copy") == 2
    for p in list((src / "imagesTr").iterdir()) + list((src / "labelsTr").iterdir()):
        if p.is_symlink():
            target = p.resolve()
            p.unlink()
            shutil.copy(target, p)
    assert _run(str(src), "--name", "nn", "--workspace", str(ws_root)) == 0
    spec = load_dataset(Workspace(ws_root, "nn"))
    assert spec.format == "nnunet" and spec.n_channels == 2 and len(spec.cases) == 3
    assert spec.cases[0].images == [f"imagesTr/{spec.cases[0].id}_0000.nii.gz",
                                    f"imagesTr/{spec.cases[0].id}_0001.nii.gz"]
    data, _, _ = read_case(spec, Workspace(ws_root, "nn").raw, spec.cases[0])
    assert data.shape[0] == 2


def test_flat_layout_with_globs_and_copy(tmp_path: Path):
    src = tmp_path / "flat"
    (src / "scans").mkdir(parents=True)
    (src / "masks").mkdir()
    ids = hippo_ids(3)
    for cid in ids:
        shutil.copy(hippo_file(cid), src / "scans" / f"{cid}_t1.nii.gz")
        shutil.copy(hippo_file(cid, "labelsTr"), src / "masks" / f"{cid}_seg.nii.gz")
    ws_root = tmp_path / "ws"
    assert _run(str(src), "--name", "flat", "--workspace", str(ws_root), "--image-glob", "scans/*_t1.nii.gz",
                "--label-glob", "masks/*_seg.nii.gz", "--channels", "T1", *LABELS, "--copy") == 0
    ws = Workspace(ws_root, "flat")
    spec = load_dataset(ws)
    assert [c.id for c in spec.cases] == ids and spec.raw_mode == "copy"
    assert not ws.raw.is_symlink() and (ws.raw / "scans" / f"{ids[0]}_t1.nii.gz").is_file()


HC18_SOURCES = ["synthetic", pytest.param("real", marks=pytest.mark.real_data("fetal_head_us_2d"))]


def _fetal_subset(dst: Path, n: int = 6, source: str = "synthetic") -> Path:
    """``n`` HC18 frames (images/, masks/ with RGB 0/255 masks) and their pixel_size.csv: HC18-like synthetic ones
    (540x800 PNGs), or the first ``n`` real ones from ../shared/data (tests marked real_data)."""
    if source == "synthetic":
        make_hc18_like(dst, [f"{i:03d}_HC" for i in range(n)])
        return dst
    (dst / "images").mkdir(parents=True)
    (dst / "masks").mkdir()
    names = sorted(p.name for p in (FETAL / "images").iterdir())[:n]
    for name in names:
        shutil.copy(FETAL / "images" / name, dst / "images" / name)
        shutil.copy(FETAL / "masks_filled_derived" / name.replace(".png", "_Mask.png"), dst / "masks")
    shutil.copy(FETAL / "training_set_pixel_size_and_HC.csv", dst / "pixel_size.csv")
    return dst


@pytest.mark.parametrize("source", HC18_SOURCES)
def test_png_2d_with_0_255_masks_and_spacing_csv(tmp_path: Path, source: str):
    src = _fetal_subset(tmp_path / "hc18", source=source)
    ws_root = tmp_path / "ws"
    assert _run(str(src), "--name", "hc", "--workspace", str(ws_root), "--image-glob", "images/*.png",
                "--label-glob", "masks/*_Mask.png", "--spacing-csv", str(src / "pixel_size.csv"),
                "--channels", "US", "--labels", "background=0", "head=1") == 0
    ws = Workspace(ws_root, "hc")
    spec = load_dataset(ws)
    assert spec.label_value_map == {"255": 1} and spec.labels == {"background": 0, "head": 1}
    with open(src / "pixel_size.csv") as fh:
        sizes = {r["filename"]: float(r["pixel size(mm)"]) for r in csv.DictReader(fh)}
    case = spec.cases[0]
    assert case.spacing == [sizes[f"{case.id}.png"]] * 2
    data, label, geo = read_case(spec, ws.raw, case)
    assert data.shape == (1, 540, 800) and label.shape == (540, 800)
    assert set(np.unique(label)) == {0, 1} and geo.spacing == pytest.approx(tuple(case.spacing))


@pytest.mark.parametrize("source", HC18_SOURCES)
def test_png_without_spacing_warns(tmp_path: Path, capsys, source: str):
    src = _fetal_subset(tmp_path / "hc18", 2, source)
    assert _run(str(src), "--name", "hc", "--workspace", str(tmp_path / "ws"), "--image-glob", "images/*.png",
                "--label-glob", "masks/*_Mask.png") == 0
    assert "carry no pixel spacing" in capsys.readouterr().err
    spec = load_dataset(Workspace(tmp_path / "ws", "hc"))
    assert spec.labels == {"background": 0, "label_1": 1} and spec.cases[0].spacing == [1.0, 1.0]


def test_unchanged_source_is_skipped_and_changed_one_redone(tmp_path: Path, capsys):
    src = make_msd(tmp_path / "T", hippo_ids(3))
    args = [str(src), "--name", "s", "--workspace", str(tmp_path / "ws")]
    assert _run(*args) == 0
    assert _run(*args) == 0 and "unchanged, skipped" in capsys.readouterr().out
    dj = json.loads((src / "dataset.json").read_text())
    dj["training"] = dj["training"][:2]
    (src / "dataset.json").write_text(json.dumps(dj))
    os.utime(src / "imagesTr" / f"{hippo_ids(1)[0]}.nii.gz", ns=(1, 1))
    assert _run(*args) == 0 and "onboarded: 2 cases" in capsys.readouterr().out


def test_other_source_under_same_name_needs_force(tmp_path: Path, capsys):
    a = make_msd(tmp_path / "A", hippo_ids(2))
    b = make_msd(tmp_path / "B", hippo_ids(3))
    assert _run(str(a), "--name", "x", "--workspace", str(tmp_path / "ws")) == 0
    assert _run(str(b), "--name", "x", "--workspace", str(tmp_path / "ws")) == 2
    assert "--force" in capsys.readouterr().err
    assert _run(str(b), "--name", "x", "--workspace", str(tmp_path / "ws"), "--force") == 0


def test_workspace_inside_source_is_refused(tmp_path: Path, capsys):
    src = make_msd(tmp_path / "T", hippo_ids(2))
    before = tree_state(src)
    assert _run(str(src), "--name", "x", "--workspace", str(src / "ws")) == 2
    assert "never writes into the user's folder" in capsys.readouterr().err
    assert tree_state(src) == before
