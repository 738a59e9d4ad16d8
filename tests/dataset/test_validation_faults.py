"""One test per onboarding validation fault: non-zero exit, the message names the file, nothing written."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import hippo_file, hippo_ids, make_msd, tree_state

from segpipe.cli import main


def _edit(path: Path, fn) -> None:
    img = sitk.ReadImage(str(path))
    out = fn(img)
    sitk.WriteImage(out, str(path))


def _array_edit(path: Path, fn) -> None:
    def apply(img):
        arr = fn(sitk.GetArrayFromImage(img))
        new = sitk.GetImageFromArray(arr)
        new.CopyInformation(img) if arr.shape == sitk.GetArrayFromImage(img).shape else (
            new.SetSpacing(img.GetSpacing()), new.SetOrigin(img.GetOrigin()), new.SetDirection(img.GetDirection()))
        return new
    _edit(path, apply)


def _onboard(src: Path, ws: Path, capsys, *extra: str) -> tuple[int, str]:
    code = main(["onboard", str(src), "--name", "d", "--workspace", str(ws), "--workers", "1", *extra])
    out = capsys.readouterr()
    return code, out.out + out.err


def _case_files(src: Path, i: int = 1) -> tuple[str, Path, Path]:
    cid = sorted(p.name for p in (src / "imagesTr").iterdir())[i][: -len(".nii.gz")]
    return cid, src / "imagesTr" / f"{cid}.nii.gz", src / "labelsTr" / f"{cid}.nii.gz"


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _garbage(p: Path) -> None:
    p.write_bytes(b"this is not an image at all" * 10)


def _label_shape(p: Path) -> None:
    _array_edit(p, lambda a: a[:-2])


def _spacing(p: Path) -> None:
    _edit(p, lambda img: (img.SetSpacing((1.0, 1.0, 1.5)), img)[1])


def _origin(p: Path) -> None:
    _edit(p, lambda img: (img.SetOrigin((5.0, 0.0, 0.0)), img)[1])


def _direction(p: Path) -> None:
    _edit(p, lambda img: (img.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1)), img)[1])


def _undeclared(p: Path) -> None:
    _array_edit(p, lambda a: np.where(a == 2, 3, a).astype(a.dtype))


def _nan(p: Path) -> None:
    _array_edit(p, lambda a: np.where(np.arange(a.size).reshape(a.shape) == 7, np.nan, a.astype(np.float32)))


def _inf(p: Path) -> None:
    _array_edit(p, lambda a: np.where(np.arange(a.size).reshape(a.shape) == 7, np.inf, a.astype(np.float32)))


def _float_label(p: Path) -> None:
    _array_edit(p, lambda a: a.astype(np.float32) + (a > 0) * 0.5)


# fault name -> (which file of case 1 to damage, how, text expected in the message)
FILE_FAULTS = {
    "truncated_image": ("image", _truncate, "truncated"),
    "unreadable_label": ("label", _garbage, "cannot read image"),
    "label_shape_mismatch": ("label", _label_shape, "shape"),
    "spacing_mismatch": ("label", _spacing, "spacing"),
    "origin_mismatch": ("label", _origin, "origin"),
    "direction_mismatch": ("label", _direction, "direction"),
    "undeclared_label_value": ("label", _undeclared, "not declared"),
    "nan_intensity": ("image", _nan, "NaN/Inf"),
    "inf_intensity": ("image", _inf, "NaN/Inf"),
    "non_integer_label": ("label", _float_label, "non-integer"),
}


@pytest.mark.parametrize("fault", sorted(FILE_FAULTS))
def test_file_fault_is_reported_and_nothing_written(fault, msd4: Path, tmp_path: Path, capsys):
    which, damage, expected = FILE_FAULTS[fault]
    cid, img, lab = _case_files(msd4)
    target = img if which == "image" else lab
    damage(target)
    before = tree_state(msd4)
    ws = tmp_path / "ws"
    code, msg = _onboard(msd4, ws, capsys)
    assert code == 2
    assert str(target) in msg and expected in msg and cid in msg
    assert "fix:" in msg
    assert not ws.exists()
    assert tree_state(msd4) == before


def test_all_problems_are_reported_at_once(msd4: Path, tmp_path: Path, capsys):
    _, img1, _ = _case_files(msd4, 1)
    _, _, lab2 = _case_files(msd4, 2)
    _truncate(img1)
    _undeclared(lab2)
    code, msg = _onboard(msd4, tmp_path / "ws", capsys)
    assert code == 2 and str(img1) in msg and str(lab2) in msg and "2 problem(s)" in msg


def test_failed_reonboard_leaves_existing_workspace_unchanged(msd4: Path, tmp_path: Path, capsys):
    ws = tmp_path / "ws"
    assert _onboard(msd4, ws, capsys)[0] == 0
    before = tree_state(ws)
    _truncate(_case_files(msd4)[1])
    code, _ = _onboard(msd4, ws, capsys, "--force")
    assert code == 2 and tree_state(ws) == before


def test_channel_count_mismatch_nnunet_layout(tmp_path: Path, capsys):
    src = tmp_path / "raw"
    (src / "imagesTr").mkdir(parents=True)
    (src / "labelsTr").mkdir()
    ids = hippo_ids(3)
    for cid in ids:
        shutil.copy(hippo_file(cid), src / "imagesTr" / f"{cid}_0000.nii.gz")
        shutil.copy(hippo_file(cid, "labelsTr"), src / "labelsTr" / f"{cid}.nii.gz")
        if cid != ids[1]:
            shutil.copy(hippo_file(cid), src / "imagesTr" / f"{cid}_0001.nii.gz")
    (src / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1", "1": "T2"}, "labels": {
        "background": 0, "anterior": 1, "posterior": 2}, "numTraining": 3, "file_ending": ".nii.gz"}))
    code, msg = _onboard(src, tmp_path / "ws", capsys)
    assert code == 2 and f"{ids[1]}_0001.nii.gz" in msg and "missing channel" in msg
    assert not (tmp_path / "ws").exists()


def test_channel_count_mismatch_msd_4d_expected(msd4: Path, tmp_path: Path, capsys):
    dj = json.loads((msd4 / "dataset.json").read_text())
    dj["modality"] = {"0": "T1", "1": "T2"}
    (msd4 / "dataset.json").write_text(json.dumps(dj))
    code, msg = _onboard(msd4, tmp_path / "ws", capsys)
    assert code == 2 and "4D file with 2 channels" in msg and str(_case_files(msd4)[1]) in msg


def test_empty_label_map_is_a_warning(msd4: Path, tmp_path: Path, capsys):
    cid, _, lab = _case_files(msd4)
    _array_edit(lab, lambda a: np.zeros_like(a))
    code, msg = _onboard(msd4, tmp_path / "ws", capsys)
    assert code == 0 and "[warning]" in msg and "empty" in msg and str(lab) in msg
    assert (tmp_path / "ws" / "d" / "dataset.json").exists()


def test_duplicate_case_id(msd4: Path, tmp_path: Path, capsys):
    dj = json.loads((msd4 / "dataset.json").read_text())
    dj["training"].append(dict(dj["training"][0]))
    (msd4 / "dataset.json").write_text(json.dumps(dj))
    code, msg = _onboard(msd4, tmp_path / "ws", capsys)
    cid = hippo_ids(1)[0]
    assert code == 2 and f"case id '{cid}' occurs 2 times" in msg
    assert not (tmp_path / "ws").exists()


@pytest.mark.parametrize("bad", ["./imagesTr/../../outside.nii.gz", "/etc/passwd.nii.gz"])
def test_unsafe_path_in_dataset_json(bad, msd4: Path, tmp_path: Path, capsys):
    dj = json.loads((msd4 / "dataset.json").read_text())
    dj["training"][0]["image"] = bad
    (msd4 / "dataset.json").write_text(json.dumps(dj))
    code, msg = _onboard(msd4, tmp_path / "ws", capsys)
    assert code == 2 and ("leaves the data set folder" in msg or "absolute path" in msg)
    assert not (tmp_path / "ws").exists()


def test_unsafe_case_id_in_flat_layout(tmp_path: Path, capsys):
    src = tmp_path / "flat"
    src.mkdir()
    cid = hippo_ids(1)[0]
    for name in ("ok", "bad id;rm"):
        shutil.copy(hippo_file(cid), src / f"{name}_img.nii.gz")
        shutil.copy(hippo_file(cid, "labelsTr"), src / f"{name}_seg.nii.gz")
    code, msg = _onboard(src, tmp_path / "ws", capsys, "--image-glob", "*_img.nii.gz", "--label-glob",
                         "*_seg.nii.gz", "--labels", "background=0", "a=1", "b=2")
    assert code == 2 and "bad id;rm" in msg and "characters" in msg


def test_missing_label_for_training_image(tmp_path: Path, capsys):
    src = make_msd(tmp_path / "T", hippo_ids(3), with_json=False)
    cid, img, lab = _case_files(src, 2)
    os.remove(lab)
    code, msg = _onboard(src, tmp_path / "ws", capsys, "--labels", "background=0", "anterior=1", "posterior=2")
    assert code == 2 and "no label file" in msg and str(img.relative_to(src)) in msg and cid in msg
    assert not (tmp_path / "ws").exists()
