"""The ``bcp`` trainer (Bidirectional Copy-Paste, semi-supervised) and its array functions."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_semi, make_tiny_workspace, write_attributes

from segpipe.cli import main
from segpipe.io.jsonio import read_json, write_json
from segpipe.training.checkpoint import load_checkpoint
from segpipe.training.copy_paste import box_mask, largest_components, mix_both_ways
from segpipe.training.data import CaseStore
from segpipe.training.loss import LOSSES, register_loss

TINY_TRAIN = ["--epochs", "2", "--iterations-per-epoch", "4", "--val-iterations", "1", "--workers", "0",
              "--threads", "1", "--no-validation"]


def test_box_mask_covers_two_thirds_of_every_axis_at_random_places() -> None:
    rng = np.random.default_rng(0)
    masks = [box_mask((12, 18, 9), rng) for _ in range(20)]
    for m in masks:
        idx = np.argwhere(m)
        assert (idx.max(0) - idx.min(0) + 1).tolist() == [8, 12, 6] and m.sum() == 8 * 12 * 6
    assert len({tuple(np.argwhere(m).min(0)) for m in masks}) > 3  # not always the same place
    assert box_mask((1, 5), rng).shape == (1, 5) and box_mask((1, 5), rng).sum() == 3  # a 2D slice box


def test_largest_components_keep_one_blob_per_class() -> None:
    lab = np.zeros((2, 10, 10), dtype=np.int64)
    lab[0, 1:5, 1:5] = 1  # 16 voxels
    lab[0, 7:9, 7:9] = 1  # 4 voxels: removed
    lab[0, 6, 1:4] = 2    # class 2: one blob, kept
    lab[1, 0, 0] = -1     # negative values untouched
    lab[1, 2:4, 2:4] = 1
    out = largest_components(lab, 3)
    assert (out[0] == 1).sum() == 16 and (out[0, 7:9, 7:9] == 0).all() and (out[0] == 2).sum() == 3
    assert out[1, 0, 0] == -1 and (out[1] == 1).sum() == 4
    assert (lab[0, 7:9, 7:9] == 1).all()  # the input is not changed


def test_copy_paste_mixes_both_ways_and_splits_the_targets() -> None:
    b, shape = 4, (6, 6, 6)
    lab_img, unl_img = torch.zeros(b, 1, *shape), torch.ones(b, 1, *shape)
    label = torch.full((b, 1, *shape), 1, dtype=torch.int16)
    pseudo = torch.full((b, 1, *shape), 2, dtype=torch.int16)
    pseudo[:, :, 0] = -1  # padding of the unlabelled image stays ignored
    masks = torch.from_numpy(np.stack([box_mask(shape, np.random.default_rng(i)) for i in range(b)]))
    images, reference, pseudo_target = mix_both_ways(lab_img, label, unl_img, pseudo, masks)
    for i in range(b):
        from_unlabelled = masks[i] if i < 2 else ~masks[i]  # inward: the unlabelled box; outward: around it
        assert torch.equal(images[i, 0] == 1, from_unlabelled)
        assert torch.equal(reference[i, 0] == -1, from_unlabelled)
        assert torch.equal(reference[i, 0] == 1, ~from_unlabelled)
        expected_pseudo = torch.where(from_unlabelled, pseudo[i, 0], torch.tensor(-1, dtype=torch.int16))
        assert torch.equal(pseudo_target[i, 0], expected_pseudo)


@pytest.fixture(scope="module")
def semi_ws(tmp_path_factory) -> Path:
    """A tiny-network workspace of 4 labelled and 4 unlabelled real hippocampus cases, with attributes."""
    root = tmp_path_factory.mktemp("semi")
    labelled, unlabelled = make_semi(root / "src", n_labelled=4, n_unlabelled=4)
    write_attributes(root / "attrs.csv", labelled + unlabelled)
    return make_tiny_workspace(root / "src", root / "ws", "semi",
                               onboard_args=["--attributes", str(root / "attrs.csv")])


def test_unlabelled_cases_read_as_unknown_labels_with_padding_marked(semi_ws: Path) -> None:
    spec = read_json(semi_ws / "semi" / "dataset.json", kind="dataset")
    cid = spec["unlabelled"][0]["id"]
    store = CaseStore(next((semi_ws / "semi" / "preprocessed").iterdir()), [cid], labelled=False)
    shape = store.info(cid).shape
    assert store.info(cid).class_locations == {}
    data, seg = store.read_patch(cid, [-2, 0, 0], [8, 8, 8])
    assert data.shape == (1, 8, 8, 8) and seg.shape == (1, 8, 8, 8) and shape[0] == 1
    assert (seg[:, :2] == -1).all() and (seg[:, 2:] == 0).all()
    with pytest.raises(Exception, match="no segmentation"):  # as labelled, it is refused
        CaseStore(store.folder, [cid]).read_patch(cid, [0, 0, 0], [4, 4, 4])


def test_bcp_trains_a_student_and_a_mean_teacher_from_unlabelled_images(semi_ws: Path, tmp_path: Path,
                                                                          capsys) -> None:
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(semi_ws, ws, symlinks=True)
    assert main(["train", "-w", str(ws), "-n", "semi", "-c", "3d_fullres", "-f", "0", "-tr", "bcp", *TINY_TRAIN]) == 0
    assert "bcp: warm-up done at iteration 2;" in capsys.readouterr().err  # 0.25 of 8 iterations
    fold = ws / "semi" / "results" / "3d_fullres" / "fold_0"
    st = load_checkpoint(fold / "checkpoint_final.pt")
    assert st["registry"]["trainer"] == "bcp" and st["iteration"] == 8
    teacher, student = st["teacher"], st["network"]
    assert teacher is not None and teacher.keys() == student.keys()
    # the teacher is an average of the student's recent weights: close to, but not equal to, the student
    diffs = [float((teacher[k].float() - student[k].float()).abs().max())
             for k in student if student[k].is_floating_point()]
    assert max(diffs) > 0 and max(diffs) < 0.1


def test_bcp_resumes_with_its_teacher(semi_ws: Path, tmp_path: Path) -> None:
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(semi_ws, ws, symlinks=True)
    fold = ws / "semi" / "results" / "3d_fullres" / "fold_0"
    args = ["train", "-w", str(ws), "-n", "semi", "-c", "3d_fullres", "-f", "0", "-tr", "bcp",
            "--iterations-per-epoch", "4", "--val-iterations", "1", "--workers", "0", "--threads", "1",
            "--no-validation"]
    assert main([*args, "--epochs", "2"]) == 0
    first = load_checkpoint(fold / "checkpoint_final.pt")
    (fold / "checkpoint_final.pt").unlink()  # an unfinished run: checkpoint_latest.pt of epoch 2 of 3
    assert main([*args, "--epochs", "3", "--resume"]) == 0
    resumed = load_checkpoint(fold / "checkpoint_final.pt")
    assert resumed["iteration"] == 12 and resumed["teacher"] is not None
    key = next(k for k in first["teacher"] if first["teacher"][k].is_floating_point())
    # the teacher went on from the saved one (an EMA step of 0.01 per iteration), not from a fresh copy
    drift = float((resumed["teacher"][key] - first["teacher"][key]).abs().max())
    assert 0 < drift < float((first["network"][key] - first["teacher"][key]).abs().max()) * 10 + 1e-3


def test_bcp_without_unlabelled_images_says_where_to_put_them(tiny_ws_template: Path, tmp_path: Path,
                                                              capsys) -> None:
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(tiny_ws_template, ws, symlinks=True)
    assert main(["train", "-w", str(ws), "-c", "3d_fullres", "-f", "0", "-tr", "bcp", *TINY_TRAIN]) == 2
    err = capsys.readouterr().err
    assert "has none" in err and "imagesUnlabelled/" in err


def test_bcp_options_come_from_the_plan(semi_ws: Path, tmp_path: Path, capsys) -> None:
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(semi_ws, ws, symlinks=True)
    plans_path = ws / "semi" / "plans.json"
    plans = read_json(plans_path, kind="plans")
    plans["configurations"]["3d_fullres"]["bcp"] = {"warmup": 0.9, "emaa": 0.5}
    write_json(plans_path, plans, kind="plans")
    assert main(["train", "-w", str(ws), "-n", "semi", "-c", "3d_fullres", "-f", "0", "-tr", "bcp",
                 *TINY_TRAIN]) == 2
    assert "unknown option(s) ['emaa']" in capsys.readouterr().err


def test_case_attributes_reach_the_loss_in_the_batch_metadata(semi_ws: Path, tmp_path: Path) -> None:
    import shutil

    from segpipe.training.loss import DiceCELoss

    seen: list = []

    class Recording(DiceCELoss):
        def forward(self, logits, target, meta=None):
            seen.append((list(meta["keys"]), list(meta["attributes"])))
            return super().forward(logits, target)

    register_loss("recording-test")(lambda config, regions: Recording())
    try:
        ws = tmp_path / "ws"
        shutil.copytree(semi_ws, ws, symlinks=True)
        plans_path = ws / "semi" / "plans.json"
        plans = read_json(plans_path, kind="plans")
        plans["configurations"]["3d_fullres"]["loss"] = "recording-test"
        write_json(plans_path, plans, kind="plans")
        assert main(["train", "-w", str(ws), "-n", "semi", "-c", "3d_fullres", "-f", "0", *TINY_TRAIN]) == 0
    finally:
        LOSSES.pop("recording-test", None)
    spec = read_json(ws / "semi" / "dataset.json", kind="dataset")
    expected = {c["id"]: c["attributes"] for c in spec["cases"]}
    assert seen and all(len(keys) == len(attrs) for keys, attrs in seen)
    assert all(attrs == [expected[k] for k in keys] for keys, attrs in seen)
    assert {a["site"] for _, attrs in seen for a in attrs} == {"north", "south"}
