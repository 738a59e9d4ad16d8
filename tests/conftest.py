"""Shared fixtures: paths to the real data in ../shared/data and small case folders built from it."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
HIPPO = DATA / "hippocampus_mri"
FETAL = DATA / "fetal_head_us_2d"
sys.path.insert(0, str(REPO / "tests"))  # for tests/fixtures helpers


def require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"real test data missing: {path} (see ../shared/data/README.md)")
    return path


def hippo_ids(n: int) -> list[str]:
    names = sorted(p.name for p in require(HIPPO / "imagesTr").iterdir() if p.name.endswith(".nii.gz"))
    return [n_[: -len(".nii.gz")] for n_ in names[:n]]


def make_msd(dst: Path, ids: list[str], with_json: bool = True, copy: bool = True) -> Path:
    """An MSD task folder with the given hippocampus cases (copies, so tests may damage them)."""
    for sub in ("imagesTr", "labelsTr"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
        for cid in ids:
            src = HIPPO / sub / f"{cid}.nii.gz"
            (shutil.copy2 if copy else os.symlink)(src, dst / sub / f"{cid}.nii.gz")
    if with_json:
        (dst / "dataset.json").write_text(json.dumps({
            "name": "Hippocampus", "modality": {"0": "MRI"},
            "labels": {"0": "background", "1": "anterior", "2": "posterior"}, "numTraining": len(ids),
            "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in ids]}))
    return dst


@pytest.fixture
def msd4(tmp_path: Path) -> Path:
    """A writable MSD folder with 4 real hippocampus cases."""
    return make_msd(tmp_path / "Task04", hippo_ids(4))


def tree_state(root: Path) -> dict[str, str]:
    """Content hash of every file under ``root`` (symlinks by target): to show a command changed nothing."""
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if ".locks" in p.relative_to(root).parts:  # lock files (segpipe/locking.py) are not artifacts
            continue
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


TINY_NETWORK = {"name": "plain", "n_stages": 3, "features_per_stage": [4, 8, 16],
                "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                "n_conv_per_stage": [1, 1, 1], "n_conv_per_stage_decoder": [1, 1]}


@pytest.fixture(scope="session")
def tiny_ws_template(tmp_path_factory) -> Path:
    """A workspace (6 real hippocampus cases, 3d_fullres preprocessed) whose plan uses a tiny network and
    patch, so training runs in seconds. Copy it (``copy_ws``) before changing anything."""
    from segpipe.cli import main
    from segpipe.io.jsonio import read_json, write_json

    root = tmp_path_factory.mktemp("tiny")
    src = make_msd(root / "src", hippo_ids(6))
    ws = root / "ws"
    assert main(["onboard", str(src), "--name", "tiny", "--workspace", str(ws), "--workers", "1"]) == 0
    assert main(["fingerprint", "-w", str(ws), "--workers", "1"]) == 0
    assert main(["plan", "-w", str(ws)]) == 0
    plans_path = ws / "tiny" / "plans.json"
    plans = read_json(plans_path, kind="plans")
    cfg = plans["configurations"]["3d_fullres"]
    cfg.update({"patch_size": [16, 24, 16], "batch_size": 2, "network": dict(TINY_NETWORK)})
    write_json(plans_path, plans, kind="plans")
    assert main(["preprocess", "-w", str(ws), "--config", "3d_fullres", "--workers", "1"]) == 0
    return ws


@pytest.fixture(scope="session")
def tiny_one_fold(tiny_ws_template: Path, tmp_path_factory) -> Path:
    """A copy of the tiny workspace with fold 0 of 3d_fullres trained for 2 iterations: a model to predict with.
    Tests only predict with it (prediction records are keyed by their output folder); copy it to change it."""
    from segpipe.cli import main

    ws = copy_ws(tiny_ws_template, tmp_path_factory.mktemp("one_fold") / "ws")
    assert main(["train", "-w", str(ws), "--config", "3d_fullres", "--fold", "0", "--epochs", "1",
                 "--iterations-per-epoch", "2", "--val-iterations", "1", "--workers", "0", "--threads", "1",
                 "--no-validation"]) == 0
    return ws


def copy_ws(template: Path, dst: Path) -> Path:
    shutil.copytree(template, dst, symlinks=True)
    return dst
