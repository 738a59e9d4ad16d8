"""Sparse annotations with nnU-Net's ``ignore`` label: real hippocampus cases of which only every third slice is
labelled, the rest marked ``ignore`` (value 3, the highest). Onboarding accepts them, preprocessing marks the
unannotated voxels as left out (-1), training masks them, predictions are dense (classes 0..2 only) and metrics
count annotated voxels only."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from conftest import hippo_ids, make_msd, make_tiny_workspace

from segpipe.cli import main
from segpipe.dataset.model import DatasetSpec
from segpipe.evaluation.metrics import case_metrics, class_counts
from segpipe.evaluation.summary import summarize
from segpipe.io.jsonio import read_json
from segpipe.preprocessing.store import load_case

LABELS = {"background": 0, "anterior": 1, "posterior": 2, "ignore": 3}
EVERY = 3  # every third z slice (array axis 0) keeps its labels


def _sparsify(folder: Path, ignore_value: int = 3) -> None:
    """Rewrite an MSD folder's labels: slices z % EVERY != 0 become ``ignore``; dataset.json declares it."""
    for path in sorted((folder / "labelsTr").glob("*.nii.gz")):
        img = sitk.ReadImage(str(path))
        arr = sitk.GetArrayFromImage(img)
        keep = np.arange(arr.shape[0]) % EVERY == 0
        arr[~keep] = ignore_value
        out = sitk.GetImageFromArray(arr.astype(np.uint8))
        out.CopyInformation(img)
        sitk.WriteImage(out, str(path))
    meta = json.loads((folder / "dataset.json").read_text())
    meta["labels"][str(ignore_value)] = "ignore"
    (folder / "dataset.json").write_text(json.dumps(meta))


def test_metrics_count_only_annotated_voxels():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 3, size=(9, 12, 10)).astype(np.int16)
    sparse = ref.copy()
    sparse[1::3] = 3
    pred = ref.copy()
    pred[1::3] = 2  # wrong only where nothing is annotated
    record = case_metrics(pred, sparse, LABELS, (1.0, 1.0, 1.0), surface=False)
    assert set(record) == {"anterior", "posterior"}  # ignore is no class
    assert record["anterior"]["dice"] == 1.0 and record["posterior"]["dice"] == 1.0
    assert class_counts(pred, sparse, LABELS)["posterior"][1] == 0  # no false positives counted there
    pred[0, 0, 0] = 1 if ref[0, 0, 0] != 1 else 2  # one wrong annotated voxel does count
    assert min(r["dice"] for r in case_metrics(pred, sparse, LABELS, (1, 1, 1), surface=False).values()) < 1
    assert case_metrics(pred, sparse, LABELS, (1, 1, 1), surface=False) != case_metrics(
        pred, ref, LABELS, (1, 1, 1), surface=False)  # without ignore voxels in the reference, all voxels count
    assert set(summarize({"a": record}, LABELS)["mean"]) == {"anterior", "posterior"}


def test_the_ignore_label_is_no_output_class():
    spec = DatasetSpec("d", "/x", "msd", {"0": "MRI"}, dict(LABELS), ".nii.gz", [])
    assert spec.n_classes == 3 and spec.ignore_value == 3 and "ignore" not in spec.classes


def test_onboarding_refuses_an_ignore_label_that_is_not_the_highest(tmp_path: Path, capsys):
    src = make_msd(tmp_path / "src", hippo_ids(2))
    meta = json.loads((src / "dataset.json").read_text())
    meta["labels"] = {"0": "background", "1": "ignore", "2": "posterior"}
    (src / "dataset.json").write_text(json.dumps(meta))
    assert main(["onboard", str(src), "--name", "s", "--workspace", str(tmp_path / "ws"), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "'ignore' label (unannotated voxels) has value 1, but 2 is higher" in err and "highest value" in err
    assert not (tmp_path / "ws" / "s" / "dataset.json").exists()


def test_sparse_labels_train_and_predict_dense(tmp_path: Path):
    src = make_msd(tmp_path / "src", hippo_ids(6))
    _sparsify(src)
    ws = make_tiny_workspace(src, tmp_path / "ws", "sparse", workers=2)

    pre = ws / "sparse" / "preprocessed" / "3d_fullres"
    cid = hippo_ids(6)[0]
    _, seg, props = load_case(pre, cid)
    assert seg is not None and 3 not in np.unique(seg) and (seg == -1).mean() > 0.5  # 2 of 3 slices left out
    assert set(np.unique(seg)) <= {-1, 0, 1, 2} and "3" not in props["class_locations"]

    assert main(["train", "-w", str(ws), "--config", "3d_fullres", "--fold", "0", "--epochs", "1",
                 "--iterations-per-epoch", "3", "--val-iterations", "1", "--workers", "0", "--threads", "1"]) == 0
    fold = ws / "sparse" / "results" / "3d_fullres" / "fold_0"
    log = [json.loads(line) for line in (fold / "log.jsonl").read_text().splitlines() if line.strip()]
    assert all(np.isfinite(e["train_loss"]) for e in log if "train_loss" in e)
    summary = read_json(fold / "validation" / "summary.json")
    assert set(summary["mean"]) == {"anterior", "posterior"}

    out = tmp_path / "pred"
    assert main(["predict", "-w", str(ws), "-i", str(src / "imagesTr"), "-o", str(out), "--config",
                 "3d_fullres", "--folds", "0", "--no-mirror"]) == 0
    for p in sorted(out.glob("*.nii.gz")):
        values = set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(p)))).tolist())
        assert values <= {0, 1, 2}, (p.name, values)  # dense: the network never predicts 'ignore'
