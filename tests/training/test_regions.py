"""Region-based training (nnU-Net's dataset.json convention): a region data set built from real hippocampus
cases (``whole = [1, 2]``, ``posterior = [2]``, ``regions_class_order = [1, 2]``) onboards unchanged, trains one
sigmoid output per region with BCE + Dice, predicts label maps painted in ``regions_class_order`` and is scored,
selected and post-processed on the regions."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import hippo_file, hippo_ids, make_tiny_workspace

from segpipe.cli import main
from segpipe.dataset.regions import class_mask, region_problems, region_targets
from segpipe.dataset.store import load_dataset
from segpipe.evaluation.metrics import case_metrics
from segpipe.evaluation.postprocessing import apply_postprocessing
from segpipe.inference.export import ensemble_label_map, export_prediction, label_map, save_probabilities_npz
from segpipe.io.jsonio import read_json
from segpipe.training.loss import RegionDiceBCELoss
from segpipe.workspace import Workspace

REGIONS = {"background": 0, "whole": [1, 2], "posterior": [2]}


def make_hippo_regions(dst: Path, ids: list[str], labels: dict | None = None, order: list | None = None) -> Path:
    """An nnU-Net raw folder of hippocampus cases (copies) declaring regions: ``whole`` =
    anterior + posterior (1, 2), ``posterior`` (2), painted back in the order [1, 2]."""
    for sub in ("imagesTr", "labelsTr"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    for cid in ids:
        shutil.copy2(hippo_file(cid), dst / "imagesTr" / f"{cid}_0000.nii.gz")
        shutil.copy2(hippo_file(cid, "labelsTr"), dst / "labelsTr" / f"{cid}.nii.gz")
    meta = {"channel_names": {"0": "MRI"}, "labels": labels or REGIONS, "file_ending": ".nii.gz",
            "numTraining": len(ids)}
    if order is not False:
        meta["regions_class_order"] = order or [1, 2]
    (dst / "dataset.json").write_text(json.dumps(meta))
    return dst


# --- the pieces ------------------------------------------------------------------------------------------------

def test_region_masks_in_arrays_and_tensors():
    lab = np.array([[0, 1, 2, 3]])
    assert class_mask(lab, (1, 2)).tolist() == [[False, True, True, False]]
    assert class_mask(lab, 2).tolist() == [[False, False, True, False]]
    t = region_targets(torch.tensor([[0, 1, 2, -1]]), [(1, 2), (2,)])
    assert t.shape == (1, 2, 4) and t[0].tolist() == [[0, 1, 1, 0], [0, 0, 1, 0]]


def test_region_declarations_are_checked():
    assert region_problems(REGIONS, [1, 2], "dj") == []
    assert "regions_class_order" in region_problems(REGIONS, None, "dj")[0].problem
    assert "one positive integer per foreground region" in region_problems(REGIONS, [1], "dj")[0].problem
    assert "non-empty list" in region_problems({"background": 0, "whole": []}, [1], "dj")[0].problem


def test_region_loss_is_lowest_for_the_right_masks_and_ignores_left_out_voxels():
    target = torch.tensor([[[0, 1, 2, 2, -1]]])  # (B=1, 1, 5)
    loss = RegionDiceBCELoss([(1, 2), (2,)])
    right = torch.tensor([[[-9., 9, 9, 9, 0], [-9, -9, 9, 9, 0]]])
    wrong = -right
    assert float(loss(right, target)) < -0.95 < float(loss(wrong, target))
    # the left-out voxel (-1) does not count: changing its logits changes nothing
    other = right.clone()
    other[..., 4] = 50.0
    assert torch.isclose(loss(other, target), loss(right, target))
    logits = torch.zeros(1, 2, 5, requires_grad=True)
    loss(logits, target).backward()
    assert logits.grad is not None and float(logits.grad[..., 4].abs().sum()) == 0.0


def test_region_probabilities_are_painted_in_regions_class_order(tmp_path: Path):
    # whole (channel 0) and posterior (channel 1), nested: posterior painted over whole
    probs = np.array([[[0.1, 0.9, 0.9, 0.4]], [[0.0, 0.2, 0.8, 0.9]]], dtype=np.float32)  # (2, 1, 4)
    assert label_map(probs, [1, 2]).tolist() == [[0, 1, 2, 2]]
    assert label_map(probs, [2, 1]).tolist() == [[0, 2, 1, 1]]  # the order decides which region wins
    # an ensemble of saved region probabilities paints their mean
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    save_probabilities_npz(a, probs)
    save_probabilities_npz(b, np.zeros_like(probs) + 0.3)
    mean = (probs.astype(np.float16).astype(np.float32) + np.float32(np.float16(0.3))) / 2
    assert np.array_equal(ensemble_label_map([a, b], [1, 2]), label_map(mean, [1, 2]))


def test_region_export_puts_no_region_outside_the_crop():
    probs = torch.full((2, 2, 3, 3), 0.9)  # both regions everywhere inside the crop box
    props = {"shape_before_crop": [4, 5, 5], "shape_after_crop": [2, 3, 3], "crop_bbox": [[1, 3], [1, 4], [1, 4]],
             "shape_after_resampling": [2, 3, 3], "spacing": [1.0, 1.0, 1.0], "target_spacing": [1.0, 1.0, 1.0],
             "geometry": {"shape": [4, 5, 5], "spacing": [1.0, 1.0, 1.0], "origin": [0.0, 0.0, 0.0],
                          "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}}
    seg = export_prediction([(probs, props)], region_order=[1, 2])
    assert seg.shape == (4, 5, 5) and int((seg == 2).sum()) == 18 and int((seg != 0).sum()) == 18


def test_region_metrics_and_postprocessing_work_on_regions():
    ref = np.zeros((1, 12), np.uint8)
    ref[0, 2:6] = 1
    ref[0, 4:6] = 2
    pred = ref.copy()
    pred[0, 9] = 2  # a stray posterior voxel, away from the structure
    m = case_metrics(pred, ref, REGIONS, (1.0, 1.0), surface=False)
    assert set(m) == {"whole", "posterior"}
    assert m["whole"]["tp"] == 4 and m["whole"]["fp"] == 1 and m["posterior"]["tp"] == 2
    fixed = apply_postprocessing(pred, {"foreground": False, "classes": ["whole"]}, REGIONS)
    assert fixed.tolist() == ref.tolist()


# --- from the CLI, on real cases -------------------------------------------------------------------------------

def test_onboarding_without_regions_class_order_says_what_to_add(tmp_path: Path, capsys):
    src = make_hippo_regions(tmp_path / "src", hippo_ids(2), order=False)
    assert main(["onboard", str(src), "--name", "r", "-w", str(tmp_path / "ws")]) == 2
    err = capsys.readouterr().err
    assert "regions_class_order" in err and str(src / "dataset.json") in err


@pytest.fixture(scope="module")
def region_ws(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("regions")
    src = make_hippo_regions(root / "src", hippo_ids(6))
    ws = make_tiny_workspace(src, root / "ws", "regions")
    assert main(["train", "-w", str(ws), "--config", "3d_fullres", "--fold", "each", "--epochs", "1",
                 "--iterations-per-epoch", "3", "--val-iterations", "1", "--workers", "0", "--threads", "1"]) == 0
    return ws


def test_a_region_data_set_trains_one_sigmoid_output_per_region(region_ws: Path):
    spec = load_dataset(Workspace.locate(str(region_ws), "regions"))
    assert spec.regions == [(1, 2), (2,)] and spec.region_order == [1, 2] and spec.n_outputs == 2
    plans = read_json(region_ws / "regions" / "plans.json", kind="plans")
    assert plans["labels"] == REGIONS
    fold = region_ws / "regions" / "results" / "3d_fullres" / "fold_0"
    state = torch.load(fold / "checkpoint_final.pt", weights_only=True, map_location="cpu")
    heads = [v for k, v in state["network"].items() if k.endswith("weight") and v.shape[0] == 2 and v.shape[2:] ==
             (1, 1, 1)]
    assert heads and state["n_classes"] == 2  # two outputs: the regions, no background channel
    log = [json.loads(x) for x in (fold / "log.jsonl").read_text().splitlines() if x.strip()]
    assert any(len(e.get("pseudo_dice_per_class", [])) == 2 for e in log)
    summary = read_json(fold / "validation" / "summary.json")
    assert set(summary["mean"]) == {"whole", "posterior"}
    for p in (fold / "validation").glob("*.nii.gz"):
        assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(p))))) <= {0, 1, 2}


def test_regions_predict_evaluate_and_select_from_the_cli(region_ws: Path, tmp_path: Path):
    ids = hippo_ids(6)
    out = tmp_path / "pred"
    images = region_ws / "regions" / "raw" / "imagesTr"
    assert main(["predict", "-w", str(region_ws), "-i", str(images), "-o", str(out), "-c", "3d_fullres",
                 "-f", "0", "--disable-tta", "--save-probabilities"]) == 0
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{ids[0]}.nii.gz")))
    probs = np.load(out / f"{ids[0]}.npz")["probabilities"].astype(np.float32)
    assert probs.shape == (2, *pred.shape)  # region probabilities, no background channel
    painted = label_map(probs, [1, 2])  # painted in regions_class_order (the file keeps float16: near 0.5 may flip)
    differ = pred != painted
    assert differ.mean() < 0.01 and np.all(np.abs(probs[:, differ] - 0.5).min(axis=0) < 2e-3)
    from segpipe import Predictor  # the Python API paints the regions the same way

    api = Predictor(region_ws, "regions", configs=["3d_fullres"], folds=[0], mirror=False)
    assert np.array_equal(api.predict_file(images / f"{ids[0]}_0000.nii.gz"), pred)
    ev = tmp_path / "ev"
    assert main(["evaluate", "-w", str(region_ws), "--pred", str(out), "--ref",
                 str(region_ws / "regions" / "raw" / "labelsTr"), "-o", str(ev)]) == 0
    summary = read_json(ev / "summary.json")
    assert set(summary["mean"]) == {"whole", "posterior"}
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(hippo_file(ids[0], "labelsTr"))))
    whole = case_metrics(pred, ref, {"whole": (1, 2)}, (1.0, 1.0, 1.0), surface=False)["whole"]
    assert summary["cases"][ids[0]]["whole"]["dice"] == pytest.approx(whole["dice"])
    assert main(["select", "-w", str(region_ws)]) == 0
    selection = read_json(region_ws / "regions" / "selection.json", kind="selection")
    assert set(selection["cv_dice"]["dice"]) == {"whole", "posterior"}
    assert set(selection["postprocessing"]["classes"]) <= {"whole", "posterior"}
