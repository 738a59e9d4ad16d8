"""Data roles: unlabelled images in a data set (imagesUnlabelled/, or imagesTr images declared unlabelled) and
per-case attributes (onboard --attributes) that reach the workspace, preprocessing, the loss and evaluation."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_semi, write_attributes

from segpipe.cli import main
from segpipe.dataset.store import load_dataset
from segpipe.io.jsonio import read_json
from segpipe.workspace import Workspace


def test_unlabelled_images_and_attributes_are_onboarded_and_preprocessed(tmp_path: Path, capsys) -> None:
    labelled, unlabelled = make_semi(tmp_path / "src")
    sites = write_attributes(tmp_path / "attrs.csv", labelled + unlabelled + ["not_a_case"])
    ws_root = tmp_path / "ws"
    assert main(["onboard", str(tmp_path / "src"), "-n", "semi", "-w", str(ws_root),
                 "--attributes", str(tmp_path / "attrs.csv")]) == 0
    assert "match no case: not_a_case" in capsys.readouterr().err  # the stray row is a warning, named
    spec = load_dataset(Workspace(ws_root, "semi"))
    assert [c.id for c in spec.cases] == labelled and all(c.label for c in spec.cases)
    assert [c.id for c in spec.unlabelled] == unlabelled
    assert all(c.label is None and c.images[0].startswith("imagesUnlabelled/") for c in spec.unlabelled)
    assert spec.attribute_columns == ["site", "scanner"]
    assert {cid: a["site"] for cid, a in spec.attributes.items()} == {c: sites[c] for c in labelled + unlabelled}
    assert "3 unlabelled image(s)" in spec.notes[0]

    # the fingerprint and the splits are made of the labelled cases; preprocessing also writes the unlabelled
    ws = Workspace(ws_root, "semi")
    assert main(["fingerprint", "-w", str(ws_root), "-n", "semi", "--workers", "1"]) == 0
    assert main(["plan", "-w", str(ws_root), "-n", "semi"]) == 0
    assert len(read_json(ws.dir / "fingerprint.json", kind="fingerprint")["cases"]) == len(labelled)
    assert main(["preprocess", "-w", str(ws_root), "-n", "semi", "-c", "3d_fullres", "--workers", "2"]) == 0
    pre = next((ws.dir / "preprocessed").iterdir())
    for cid in unlabelled:
        assert (pre / f"{cid}_data.b2nd").is_file() and not (pre / f"{cid}_seg.b2nd").exists()
        assert read_json(pre / f"{cid}.json", kind="case_properties")["class_locations"] == {}
    for cid in labelled:
        assert (pre / f"{cid}_seg.b2nd").is_file()


def test_training_images_without_labels_need_the_declaration(tmp_path: Path) -> None:
    labelled, unlabelled = make_semi(tmp_path / "plain", unlabelled_in="imagesTr")
    # undeclared: a forgotten label is the likelier cause
    assert main(["onboard", str(tmp_path / "plain"), "-n", "a", "-w", str(tmp_path / "ws")]) == 2
    labelled, unlabelled = make_semi(tmp_path / "declared", unlabelled_in="imagesTr",
                                     dataset_json={"unlabelled": {"images_without_labels": True}})
    assert main(["onboard", str(tmp_path / "declared"), "-n", "b", "-w", str(tmp_path / "ws")]) == 0
    spec = load_dataset(Workspace(tmp_path / "ws", "b"))
    assert [c.id for c in spec.unlabelled] == unlabelled and [c.id for c in spec.cases] == labelled


def test_an_undeclared_image_without_label_names_the_declaration_as_a_fix(tmp_path: Path, capsys) -> None:
    make_semi(tmp_path / "plain", unlabelled_in="imagesTr")
    assert main(["onboard", str(tmp_path / "plain"), "-n", "a", "-w", str(tmp_path / "ws")]) == 2
    err = capsys.readouterr().err
    assert "training image has no label file" in err and '"images_without_labels": true' in err


@pytest.mark.parametrize("declaration, expected", [
    ({"folder": "nowhere"}, "declares unlabelled images in 'nowhere', which does not exist"),
    ({"folder": "../outside"}, "not a folder name inside the data set's folder"),
    ({"images_without_labels": "yes"}, "not true/false"),
    ("imagesUnlabelled", "not an object with 'folder'"),
])
def test_a_bad_unlabelled_declaration_names_dataset_json(tmp_path: Path, capsys, declaration, expected) -> None:
    make_semi(tmp_path / "src", dataset_json={"unlabelled": declaration})
    assert main(["onboard", str(tmp_path / "src"), "-n", "a", "-w", str(tmp_path / "ws")]) == 2
    err = capsys.readouterr().err
    assert expected in err and str(tmp_path / "src" / "dataset.json") in err
    assert not (tmp_path / "ws" / "a" / "dataset.json").exists()


def test_an_unlabelled_image_is_validated_like_a_labelled_one(tmp_path: Path, capsys) -> None:
    labelled, unlabelled = make_semi(tmp_path / "src")
    broken = tmp_path / "src" / "imagesUnlabelled" / f"{unlabelled[0]}_0000.nii.gz"
    img = sitk.ReadImage(str(broken))
    arr = sitk.GetArrayFromImage(img).astype(np.float32)
    arr[0, 0, 0] = np.nan
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(img)
    sitk.WriteImage(out, str(broken))
    shutil.copy2(tmp_path / "src" / "imagesTr" / f"{labelled[0]}_0000.nii.gz",
                 tmp_path / "src" / "imagesUnlabelled" / f"{labelled[0]}_0000.nii.gz")  # an id in both folders
    assert main(["onboard", str(tmp_path / "src"), "-n", "a", "-w", str(tmp_path / "ws"), "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert "NaN/Inf" in err and str(broken) in err and unlabelled[0] in err
    assert f"case id '{labelled[0]}' is both in imagesTr and in imagesUnlabelled" in err


def test_cases_without_attributes_are_named_and_evaluate_groups_by_the_onboarded_ones(tmp_path: Path,
                                                                                         capsys) -> None:
    labelled, unlabelled = make_semi(tmp_path / "src", n_unlabelled=0)
    write_attributes(tmp_path / "attrs.csv", labelled, skip=(labelled[-1],))
    ws_root = tmp_path / "ws"
    assert main(["onboard", str(tmp_path / "src"), "-n", "semi", "-w", str(ws_root),
                 "--attributes", str(tmp_path / "attrs.csv")]) == 0
    assert f"1 case(s) have no row in the attribute CSV: {labelled[-1]}" in capsys.readouterr().err
    # predictions = the references with one case damaged: per-group Dice differs, from the onboarded attributes
    pred = tmp_path / "pred"
    pred.mkdir()
    for cid in labelled[:-1]:
        shutil.copy2(tmp_path / "src" / "labelsTr" / f"{cid}.nii.gz", pred / f"{cid}.nii.gz")
    ref = tmp_path / "src" / "labelsTr"
    damaged = sitk.ReadImage(str(pred / f"{labelled[1]}.nii.gz"))
    arr = sitk.GetArrayFromImage(damaged)
    arr[arr == 2] = 0
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(damaged)
    sitk.WriteImage(out, str(pred / f"{labelled[1]}.nii.gz"))
    rc = main(["evaluate", "--pred", str(pred), "--ref", str(ref), "-w", str(ws_root), "-n", "semi",
               "--group-by", "site", "--no-surface", "--workers", "1", "-o", str(tmp_path / "eval")])
    assert rc == 0
    summary = read_json(tmp_path / "eval" / "summary.json", kind="evaluation")
    groups = summary["groups"]["site"]["groups"]
    assert set(groups) == {"north", "south"}
    assert groups["north"]["foreground_mean_dice"] < groups["south"]["foreground_mean_dice"] == pytest.approx(1.0)
    assert summary["attributes"]["file"] == str(Workspace(ws_root, "semi").dataset_json)
