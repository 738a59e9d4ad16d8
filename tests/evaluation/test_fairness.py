"""Fairness in `segpipe evaluate --attributes CSV --group-by COLUMN`: metrics per group and the equity-scaled Dice
ES-Dice = Dice_all / (1 + sum_g |Dice_g - Dice_all|), checked against numbers computed by hand; the attribute CSV's
problems (each naming the CSV and the problem); and the whole command on small copies of the real head-and-neck
label maps (oncologist against radiographer, grouped by source collection)."""
from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import HEADNECK, require, tree_state

from segpipe.cli import main
from segpipe.dataset.attributes import case_groups, read_attributes, strip_ending, unused_rows
from segpipe.errors import SegpipeError
from segpipe.evaluation.evaluate import to_csv
from segpipe.evaluation.fairness import (
    FOREGROUND_MEAN,
    equity_scaled,
    fairness,
    format_groups,
    group_fairness,
    load_groupings,
    split_by_group,
)
from segpipe.io.images import Geometry, read_image, write_image
from segpipe.io.jsonio import read_json

NAN = float("nan")
LABELS = {"background": 0, "a": 1, "b": 2}


def _record(dice_a: float, dice_b: float = NAN) -> dict:
    """A per-case record with the given Dice per class (NaN: the class is absent from both)."""
    return {name: {"dice": d, "empty_reference_and_prediction": math.isnan(d)}
            for name, d in (("a", dice_a), ("b", dice_b))}


# --- ES-Dice by hand -------------------------------------------------------------------------------------------------

def test_equity_scaled_two_groups_by_hand():
    es = equity_scaled(0.7, {"A": 0.8, "B": 0.6})
    assert es["sum_abs_gap"] == pytest.approx(0.2)
    assert es["es_dice"] == pytest.approx(0.7 / 1.2)
    assert es["groups_without_dice"] == []


def test_equal_groups_give_es_dice_equal_to_dice():
    assert equity_scaled(0.75, {"A": 0.75, "B": 0.75})["es_dice"] == pytest.approx(0.75)


def test_dice_all_is_the_mean_of_per_case_dice_not_of_group_means():
    # group A: 3 cases of Dice 0.8; group B: 1 case of Dice 0.4. Dice_all = (3 * 0.8 + 0.4) / 4 = 0.7 (the mean of
    # the group means would be 0.6); gaps |0.8 - 0.7| + |0.4 - 0.7| = 0.4; ES-Dice = 0.7 / 1.4 = 0.5.
    per_case = {"a1": _record(0.8), "a2": _record(0.8), "a3": _record(0.8), "b1": _record(0.4)}
    groups = {"a1": "A", "a2": "A", "a3": "A", "b1": "B"}
    out = group_fairness(per_case, groups, LABELS, ("dice",))
    es = out["es_dice"]["a"]
    assert es["dice_all"] == pytest.approx(0.7)
    assert es["dice_groups"] == pytest.approx({"A": 0.8, "B": 0.4})
    assert es["sum_abs_gap"] == pytest.approx(0.4)
    assert es["es_dice"] == pytest.approx(0.5)
    assert out["n_groups"] == 2
    assert out["groups"]["A"]["n_cases"] == 3 and out["groups"]["A"]["cases"] == ["a1", "a2", "a3"]
    assert out["groups"]["B"]["mean"]["a"]["dice"] == pytest.approx(0.4)


def test_two_groups_of_dice_0_8_and_0_6_with_two_classes_and_the_foreground_mean():
    # class a: A = (0.9, 0.7) -> 0.8, B = (0.5, 0.7) -> 0.6, all 0.7, ES 0.7 / 1.2.
    # class b: A = (1.0, 0.8) -> 0.9, B = (0.9, 0.9) -> 0.9, all 0.9, ES 0.9.
    # foreground mean (mean over classes of the mean Dice): all (0.7 + 0.9) / 2 = 0.8, A 0.85, B 0.75:
    # gaps 0.05 + 0.05 = 0.1, ES 0.8 / 1.1.
    per_case = {"a1": _record(0.9, 1.0), "a2": _record(0.7, 0.8), "b1": _record(0.5, 0.9), "b2": _record(0.7, 0.9)}
    groups = {"a1": "A", "a2": "A", "b1": "B", "b2": "B"}
    es = group_fairness(per_case, groups, LABELS, ("dice",))["es_dice"]
    assert es["a"]["es_dice"] == pytest.approx(0.7 / 1.2)
    assert es["b"]["es_dice"] == pytest.approx(0.9)
    fg = es[FOREGROUND_MEAN]
    assert fg["dice_all"] == pytest.approx(0.8)
    assert fg["dice_groups"] == pytest.approx({"A": 0.85, "B": 0.75})
    assert fg["sum_abs_gap"] == pytest.approx(0.1)
    assert fg["es_dice"] == pytest.approx(0.8 / 1.1)


def test_a_class_absent_from_both_is_left_out_and_a_group_without_it_is_named():
    # class b is absent (NaN) from every case of group B and from one case of A: Dice_all(b) = A's mean over the
    # one case that has it (0.6); B has no Dice_g and is left out of the sum, so ES-Dice(b) = 0.6.
    per_case = {"a1": _record(0.8, 0.6), "a2": _record(0.8), "b1": _record(0.6), "b2": _record(0.6)}
    groups = {"a1": "A", "a2": "A", "b1": "B", "b2": "B"}
    out = group_fairness(per_case, groups, LABELS, ("dice",))
    es = out["es_dice"]["b"]
    assert es["dice_all"] == pytest.approx(0.6)
    assert es["groups_without_dice"] == ["B"]
    assert math.isnan(es["dice_groups"]["B"])
    assert es["sum_abs_gap"] == pytest.approx(0.0) and es["es_dice"] == pytest.approx(0.6)
    assert out["groups"]["B"]["mean"]["b"]["n_empty_both"] == 2
    assert math.isnan(equity_scaled(NAN, {"A": NAN})["es_dice"])


def test_every_case_needs_a_group_and_groups_are_sorted():
    with pytest.raises(ValueError, match="c2"):
        split_by_group({"c1": _record(1.0), "c2": _record(1.0)}, {"c1": "x"})
    assert list(split_by_group({"c1": _record(1.0), "c2": _record(1.0)}, {"c1": "z", "c2": "m"})) == ["m", "z"]


def test_several_groupings_and_the_cli_lines():
    per_case = {"a1": _record(0.8), "b1": _record(0.6)}
    out = fairness(per_case, {"site": {"a1": "A", "b1": "B"}, "sex": {"a1": "F", "b1": "F"}}, LABELS, ("dice",))
    assert out["site"]["es_dice"]["a"]["es_dice"] == pytest.approx(0.7 / 1.2)
    assert out["sex"]["es_dice"]["a"]["es_dice"] == pytest.approx(0.7)
    text = "\n".join(format_groups(out))
    assert "by site (2 group(s))" in text and "ES-Dice 0.5833" in text and "by sex" in text


def test_metrics_csv_gets_the_group_columns():
    rows = list(csv.DictReader(to_csv({"a1": _record(0.8)}, {"site": {"a1": "A"}, "class": {"a1": "x"}}).splitlines()))
    assert [r["site"] for r in rows] == ["A", "A"]
    assert [r["group_class"] for r in rows] == ["x", "x"] and rows[0]["class"] == "a"


# --- the attribute CSV -----------------------------------------------------------------------------------------------

def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_case_column_by_header_and_ids_with_a_file_ending(tmp_path):
    attrs = read_attributes(_csv(tmp_path / "a.csv", "File Name,Site,Sex\nc1.nii.gz,s1,F\nc2,s2,M\nc9,s1,M\n"))
    assert attrs.case_column == "File Name" and attrs.columns == ("Site", "Sex")
    assert case_groups(attrs, ["c1", "c2"], ["Site", "sex"]) == {"Site": {"c1": "s1", "c2": "s2"},
                                                                 "sex": {"c1": "F", "c2": "M"}}
    assert unused_rows(attrs, ["c1", "c2"]) == ["c9"]
    assert strip_ending("c1.nii.gz") == "c1" and strip_ending("c1") == "c1"


def _problems(excinfo) -> str:
    return "\n".join(p.format() for p in excinfo.value.problems)


def test_csv_problems_name_the_file_and_the_problem(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(SegpipeError) as e:
        read_attributes(missing)
    assert str(missing) in _problems(e) and "attribute CSV not found" in _problems(e)

    no_case = _csv(tmp_path / "no_case.csv", "patient,site\np1,s1\n")
    with pytest.raises(SegpipeError) as e:
        read_attributes(no_case)
    assert str(no_case) in _problems(e) and "no case-id column" in _problems(e) and "case_id" in _problems(e)

    twice = _csv(tmp_path / "twice.csv", "case_id,site\nc1,s1\nc1,s2\n")
    with pytest.raises(SegpipeError) as e:
        read_attributes(twice)
    assert str(twice) in _problems(e) and "more than one row: c1" in _problems(e)

    attrs = read_attributes(_csv(tmp_path / "a.csv", "case_id,source_collection,sex\nc1,s1,\nc2,s2,M\n"))
    with pytest.raises(SegpipeError) as e:
        case_groups(attrs, ["c1", "c2"], ["source_colection"])
    text = _problems(e)
    assert str(attrs.file) in text and "no column 'source_colection'" in text
    assert "did you mean 'source_collection'" in text and "source_collection, sex" in text

    with pytest.raises(SegpipeError) as e:  # all problems at once: cases without a row, empty values
        case_groups(attrs, ["c1", "c2", "c3", "c4"], ["sex"])
    assert len(e.value.problems) == 2
    text = _problems(e)
    assert str(attrs.file) in text and "no row in the attribute CSV" in text and "c3, c4" in text
    assert "empty value in column 'sex': c1" in text


def test_group_by_and_attributes_go_together(tmp_path):
    assert load_groupings(None, [], ["c1"]) == ({}, None)
    with pytest.raises(SegpipeError, match="--group-by was given without --attributes"):
        load_groupings(None, ["site"], ["c1"])
    with pytest.raises(SegpipeError, match="--attributes was given without --group-by"):
        load_groupings(tmp_path / "a.csv", [], ["c1"])


@pytest.fixture
def tiny(tmp_path) -> tuple[Path, Path]:
    """pred/ and ref/ with two 3D cases c1, c2 (8^3 voxels, one cube of class 1, shifted by one voxel in c2)."""
    geo = Geometry(shape=(8, 8, 8), spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                   direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    for folder in ("pred", "ref"):
        (tmp_path / folder).mkdir()
    for i, cid in enumerate(("c1", "c2")):
        ref = np.zeros((8, 8, 8), np.uint8)
        ref[2:6, 2:6, 2:6] = 1
        write_image(ref, geo, tmp_path / "ref" / f"{cid}.nii.gz")
        write_image(np.roll(ref, i, axis=2), geo, tmp_path / "pred" / f"{cid}.nii.gz")
    return tmp_path / "pred", tmp_path / "ref"


@pytest.mark.parametrize("text, columns, expected", [
    (None, ["site"], ["attribute CSV not found"]),
    ("patient,site\nc1,s1\nc2,s2\n", ["site"], ["no case-id column"]),
    ("case_id,site\nc1,s1\nc2,s2\n", ["sitee"], ["no column 'sitee'", "did you mean 'site'"]),
    ("case_id,site\nc1,s1\n", ["site"], ["no row in the attribute CSV", "c2"]),
    ("case_id,site\nc1,s1\nc2,\n", ["site"], ["empty value in column 'site': c2"]),
])
def test_the_cli_refuses_a_bad_csv_before_writing_anything(tiny, tmp_path, capsys, text, columns, expected):
    pred, ref = tiny
    path = tmp_path / "attrs.csv"
    if text is not None:
        path.write_text(text)
    before = tree_state(tmp_path)
    code = main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--labels", "background=0", "cube=1",
                 "--workers", "1", "--attributes", str(path), "--group-by", *columns,
                 "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert str(path) in err and all(x in err for x in expected) and "fix:" in err
    assert tree_state(tmp_path) == before


# --- real data: one rater against the other, grouped by source collection ------------------------------------------

CASES = {"0522c0251": "Head-Neck-Cetuximab", "0522c0161": "Head-Neck-Cetuximab", "TCGA-CV-7236": "TCGA-HNSC",
         "TCGA-CV-A6JY": "TCGA-HNSC"}
STEP = (2, 8, 8)  # nearest-neighbour downsampling (z, y, x): 512x512 slices to 64x64, 2.5 mm slices to 5 mm


def _small_copy(src: Path, dst: Path) -> None:
    """``src`` downsampled by keeping every STEP-th voxel, written with the spacing scaled to match."""
    arr, geo = read_image(src)
    small = np.ascontiguousarray(arr[::STEP[0], ::STEP[1], ::STEP[2]])
    spacing = tuple(s * k for s, k in zip(geo.spacing, STEP))
    write_image(small, dataclasses.replace(geo, shape=small.shape, spacing=spacing), dst)


@pytest.mark.real_data("headneck_oar_labels")
def test_inter_rater_evaluation_by_source_collection(tmp_path, capsys):
    root = require(HEADNECK)
    rows = {r["case_id"]: r for r in csv.DictReader(open(root / "cases.csv", newline=""))}
    assert {c: rows[c]["source_collection"] for c in CASES} == CASES
    for rater in ("oncologist", "radiographer"):
        (tmp_path / rater).mkdir()
        for cid in CASES:
            _small_copy(root / f"labels_{rater}" / f"{cid}.nii.gz", tmp_path / rater / f"{cid}.nii.gz")
    attrs = tmp_path / "cases.csv"  # the cases' rows of cases.csv (file names as ids) and one not evaluated
    with open(attrs, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "source_collection", "original_split"])
        for cid in [*CASES, "0522c0017"]:
            w.writerow([f"{cid}.nii.gz", rows[cid]["source_collection"], rows[cid]["original_split"]])
    labels = json.loads((root / "labels.json").read_text())["labels"]
    out = tmp_path / "eval"
    code = main(["evaluate", "--pred", str(tmp_path / "oncologist"), "--ref", str(tmp_path / "radiographer"),
                 "--labels", *(f"{k}={v}" for k, v in labels.items()), "--workers", "1", "--no-surface",
                 "--attributes", str(attrs), "--group-by", "source_collection", "--output", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "by source_collection (2 group(s))" in printed and "1 row(s) not among the evaluated cases" in printed

    summary = read_json(out / "summary.json")
    assert summary["attributes"]["n_rows_not_evaluated"] == 1
    by = summary["groups"]["source_collection"]
    assert {g: s["n_cases"] for g, s in by["groups"].items()} == {"Head-Neck-Cetuximab": 2, "TCGA-HNSC": 2}
    assert sorted(by["groups"]["TCGA-HNSC"]["cases"]) == ["TCGA-CV-7236", "TCGA-CV-A6JY"]
    # recompute the brainstem's ES-Dice from the per-case Dice of summary.json
    per_case = {c: summary["cases"][c]["Brainstem"]["dice"] for c in CASES}
    groups = {g: np.mean([per_case[c] for c in CASES if CASES[c] == g]) for g in set(CASES.values())}
    dice_all = np.mean(list(per_case.values()))
    es = by["es_dice"]["Brainstem"]
    assert es["dice_all"] == pytest.approx(dice_all)
    assert es["dice_groups"] == pytest.approx(groups)
    assert es["es_dice"] == pytest.approx(dice_all / (1 + sum(abs(v - dice_all) for v in groups.values())))
    fg = by["es_dice"][FOREGROUND_MEAN]
    assert fg["dice_all"] == pytest.approx(summary["foreground_mean_dice"])
    assert 0 < fg["es_dice"] <= fg["dice_all"] <= 1
    for g, s in by["groups"].items():  # the same summary per group as overall
        assert set(s["mean"]) == set(summary["mean"])
        assert fg["dice_groups"][g] == pytest.approx(s["foreground_mean_dice"])

    with open(out / "metrics.csv", newline="") as fh:
        metrics = list(csv.DictReader(fh))
    assert len(metrics) == len(CASES) * (len(labels) - 1)
    assert all(r["source_collection"] == CASES[r["case"]] for r in metrics)
