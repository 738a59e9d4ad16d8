"""End-to-end planning on real data, compared with nnU-Net v2 2.8.1's default planner on the same data
(reference plans and the commands that made them: tests/fixtures/nnunet_reference/README.md). The full hippocampus
and HC18 sets come from ../shared/data (tests marked real_data); the 20-case anisotropic set is built from the
shipped example cases, which are the same files as the first 20 real ones."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLE, FETAL, HIPPO, REPO, hippo_file, hippo_ids, require
from fixtures.anisotropic import make_anisotropic_cases

from segpipe.cli import main
from segpipe.dataset.model import CaseEntry, DatasetSpec
from segpipe.io.jsonio import read_json
from segpipe.planning.planner import plan_dataset
from segpipe.workspace import Workspace

REF = REPO / "tests" / "fixtures" / "nnunet_reference"
LABELS = ["--labels", "background=0", "anterior=1", "posterior=2", "--channels", "MRI"]


def _nnunet(name: str) -> dict:
    return json.loads((REF / f"{name}_plans.json").read_text())["configurations"]


def _chain(src: Path, ws: Path, name: str, *onboard_args: str, plan_args: tuple = ()) -> dict:
    assert main(["onboard", str(src), "--name", name, "--workspace", str(ws), *onboard_args]) == 0
    assert main(["fingerprint", "--workspace", str(ws), "--name", name]) == 0
    assert main(["plan", "--workspace", str(ws), "--name", name, *plan_args]) == 0
    return read_json(Workspace(ws, name).plans_json, kind="plans")


def _assert_same_as_nnunet(ours: dict, ref: dict) -> None:
    arch = ref["architecture"]["arch_kwargs"]
    assert ours["spacing"] == pytest.approx(ref["spacing"], abs=1e-4)
    assert ours["patch_size"] == ref["patch_size"]
    assert ours["batch_size"] == ref["batch_size"]
    assert ours["network"]["strides"] == arch["strides"]
    assert ours["network"]["kernel_sizes"] == arch["kernel_sizes"]
    assert ours["network"]["features_per_stage"] == arch["features_per_stage"]


@pytest.mark.real_data("hippocampus_mri")
def test_hippocampus_260_cases_match_nnunet(tmp_path: Path):
    plans = _chain(require(HIPPO), tmp_path / "ws", "hippo", *LABELS, "--allow-external-links")
    ref = _nnunet("hippocampus")
    cfgs = plans["configurations"]
    assert set(cfgs) == {"3d_fullres", "2d"}  # nnU-Net drops 3d_lowres here too
    assert cfgs["3d_fullres"]["spacing"] == [1.0, 1.0, 1.0]
    _assert_same_as_nnunet(cfgs["3d_fullres"], ref["3d_fullres"])
    _assert_same_as_nnunet(cfgs["2d"], ref["2d"])
    assert cfgs["3d_fullres"]["normalization"] == [{"channel": "MRI", "scheme": "zscore", "use_mask": False}]
    assert all(cfgs[c]["why"][k] for c in cfgs for k in ("spacing", "patch_size", "batch_size", "topology"))


def test_anisotropic_cases_get_10th_percentile_and_kernel_1(tmp_path: Path):
    src = tmp_path / "aniso"
    make_anisotropic_cases(EXAMPLE, src)  # the first 20 cases, as for the nnU-Net reference
    plans = _chain(src, tmp_path / "ws", "aniso", *LABELS)
    full = plans["configurations"]["3d_fullres"]
    fp = read_json(Workspace(tmp_path / "ws", "aniso").fingerprint_json, kind="fingerprint")
    z = [s[0] for s in fp["spacings"]]
    assert np.median(z) == 5.0 and full["spacing"][0] == pytest.approx(np.percentile(z, 10)) == 3.0
    assert full["network"]["kernel_sizes"][0] == [1, 3, 3]
    assert "10th percentile" in full["why"]["spacing"]
    ref = _nnunet("aniso")
    _assert_same_as_nnunet(full, ref["3d_fullres"])
    _assert_same_as_nnunet(plans["configurations"]["2d"], ref["2d"])


@pytest.mark.real_data("fetal_head_us_2d")
def test_fetal_head_pngs_get_a_2d_configuration(tmp_path: Path, capsys):
    require(FETAL)
    plans = _chain(FETAL, tmp_path / "ws", "hc18", "--image-glob", "images/*.png", "--label-glob",
                   "masks_filled_derived/*_Mask.png", "--spacing-csv",
                   str(FETAL / "training_set_pixel_size_and_HC.csv"), "--labels", "background=0", "head=1")
    assert list(plans["configurations"]) == ["2d"] and plans["default_configuration"] == "2d"
    cfg = plans["configurations"]["2d"]
    fp = read_json(Workspace(tmp_path / "ws", "hc18").fingerprint_json, kind="fingerprint")
    assert fp["ndim"] == 2 and fp["n_cases"] == 97
    assert cfg["spacing"] == pytest.approx(np.median(fp["spacings"], axis=0).tolist())
    total = np.prod(np.asarray(cfg["network"]["strides"]), axis=0)
    assert all(p % t == 0 for p, t in zip(cfg["patch_size"], total))
    assert max(cfg["network"]["features_per_stage"]) <= 512
    assert cfg["memory"]["feature_map_voxels"] / 12 * 2 <= 85e6


def _synthetic(shape, spacing, n: int = 10, ch=("CT",)) -> tuple[dict, DatasetSpec]:
    fp = {"ndim": len(shape), "n_cases": n, "spacings": [list(spacing)] * n, "shapes_after_crop": [list(shape)] * n,
          "median_relative_size_after_crop": 0.6,
          "intensity": {str(i): {"mean": 40.0, "std": 100.0, "percentile_00_5": -900.0, "percentile_99_5": 300.0}
                        for i in range(len(ch))}}
    spec = DatasetSpec("syn", "/x", "msd", {str(i): c for i, c in enumerate(ch)}, {"background": 0, "organ": 1},
                       ".nii.gz", [CaseEntry(f"c{i}", [f"c{i}.nii.gz"]) for i in range(n)])
    return fp, spec


def test_large_images_get_lowres_and_shrunk_patch():
    fp, spec = _synthetic([400, 512, 512], [1.0, 0.8, 0.8], ch=("CT", "PET"))
    plans = plan_dataset(fp, spec)
    cfgs = plans["configurations"]
    full, low = cfgs["3d_fullres"], cfgs["3d_lowres"]
    assert np.all(np.asarray(low["spacing"]) > np.asarray(full["spacing"]))
    assert np.prod(low["patch_size"]) / np.prod(low["median_shape"]) >= 0.25
    assert "shrunk" in full["why"]["patch_size"] and full["batch_size"] == 2
    assert full["memory"]["feature_map_voxels"] / 2 * 2 <= 560e6
    assert full["batch_dice"] and not low["batch_dice"]
    ct, pet = full["normalization"]
    assert ct["scheme"] == "ct" and ct["clip"] == [-900.0, 300.0] and pet == {"channel": "PET", "scheme": "zscore",
                                                                               "use_mask": True}


def test_smaller_memory_budget_gives_smaller_patch():
    fp, spec = _synthetic([400, 512, 512], [1.0, 0.8, 0.8])
    big = plan_dataset(fp, spec, memory_gb=8)["configurations"]["3d_fullres"]
    small = plan_dataset(fp, spec, memory_gb=2)["configurations"]["3d_fullres"]
    assert np.prod(small["patch_size"]) < np.prod(big["patch_size"])
    assert small["memory"]["feature_map_voxels"] <= 560e6 * 2 / 8
    assert plan_dataset(fp, spec, memory_gb=2)["memory_budget"]["gb"] == 2


def test_overrides_are_applied_and_explained(tmp_path: Path, capsys):
    src = tmp_path / "T"
    (src / "imagesTr").mkdir(parents=True)
    (src / "labelsTr").mkdir()
    for cid in hippo_ids(6):
        shutil.copy(hippo_file(cid), src / "imagesTr" / f"{cid}.nii.gz")
        shutil.copy(hippo_file(cid, "labelsTr"), src / "labelsTr" / f"{cid}.nii.gz")
    plans = _chain(src, tmp_path / "ws", "o", *LABELS, plan_args=("--patch-size", "32", "48", "32",
                                                                 "--batch-size", "3", "--spacing", "1.5", "1", "1"))
    full = plans["configurations"]["3d_fullres"]
    assert full["patch_size"] == [32, 48, 32] and full["batch_size"] == 3 and full["spacing"] == [1.5, 1.0, 1.0]
    assert "set by the user" in full["why"]["batch_size"]
    capsys.readouterr()
    assert main(["plan", "--workspace", str(tmp_path / "ws"), "--explain", "--batch-size", "3", "--patch-size", "32",
                 "48", "32", "--spacing", "1.5", "1", "1"]) == 0
    out = capsys.readouterr().out
    assert "unchanged, skipped" in out and "why batch_size" in out
    assert main(["plan", "--workspace", str(tmp_path / "ws"), "--network", "plian"]) == 2
    assert "did you mean 'plain'" in capsys.readouterr().err
    assert main(["plan", "--workspace", str(tmp_path / "ws"), "--patch-size", "32", "48"]) == 2
