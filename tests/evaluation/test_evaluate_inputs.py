"""`segpipe evaluate` on HC18 masks (0/255 RGB PNGs named <case>_Mask.png, pixel size in a CSV: synthetic stand-ins
written by conftest.make_hc18_like, and the real ones from ../shared/data where present) and on bad input: every bad
input exits 2 with the file, the problem and the fix, and writes nothing anywhere."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import FETAL, hippo_file, hippo_ids, make_hc18_like, tree_state
from scipy.ndimage import binary_erosion

from segpipe.cli import main
from segpipe.errors import SegpipeError
from segpipe.evaluation.evaluate import evaluate_folders, labels_from_references
from segpipe.io.jsonio import read_json

CASES = ["000_HC", "001_HC", "002_HC"]
HEAD = ["--labels", "background=0", "head=1"]


@pytest.fixture(scope="module", params=["synthetic", pytest.param("real", marks=pytest.mark.real_data(
    "fetal_head_us_2d"))])
def hc18_source(request, tmp_path_factory) -> Path:
    """HC18 frames CASES as masks/<case>_Mask.png (RGB 0/255) and pixel_size.csv: synthetic (always), or the real
    ones from ../shared/data/fetal_head_us_2d (tests marked real_data)."""
    root = tmp_path_factory.mktemp(f"hc18_{request.param}")
    if request.param == "synthetic":
        return make_hc18_like(root, CASES).root
    (root / "masks").mkdir()
    for cid in CASES:
        shutil.copy(FETAL / "masks_filled_derived" / f"{cid}_Mask.png", root / "masks")
    shutil.copy(FETAL / "training_set_pixel_size_and_HC.csv", root / "pixel_size.csv")
    return root


def _mask(src: Path, cid: str) -> np.ndarray:
    """The head mask of ``cid`` as a boolean (y, x) array, read independently of segpipe."""
    rgb = sitk.GetArrayFromImage(sitk.ReadImage(str(src / "masks" / f"{cid}_Mask.png")))
    return rgb[..., 0] > 127


def _pixel_size(csv_path: Path, name: str) -> float:
    with open(csv_path, newline="") as fh:
        return next(float(r["pixel size(mm)"]) for r in csv.DictReader(fh) if r["filename"] == name)


def _write_png(arr: np.ndarray, path: Path) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(arr.astype(np.uint8)), str(path))


@pytest.fixture
def hc18(tmp_path: Path, hc18_source: Path) -> tuple[Path, Path]:
    """refs/<case>_Mask.png (0/255 RGB masks) and pred/<case>.png: case 0 and 2 the reference file
    itself, case 1 the reference eroded by one pixel and stored 0/1 (as segpipe predict writes PNGs)."""
    ref, pred = tmp_path / "refs", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    for cid in CASES:
        shutil.copy(hc18_source / "masks" / f"{cid}_Mask.png", ref)
        if cid == "001_HC":
            _write_png(binary_erosion(_mask(hc18_source, cid)), pred / f"{cid}.png")
        else:
            shutil.copy(hc18_source / "masks" / f"{cid}_Mask.png", pred / f"{cid}.png")
    return pred, ref


def _evaluate(pred: Path, ref: Path, *extra: str) -> int:
    return main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--workers", "1", *extra])


def test_hc18_masks_score_as_onboarding_reads_them_with_spacing_from_the_csv(hc18, hc18_source, capsys):
    pred, ref = hc18
    csv_path = hc18_source / "pixel_size.csv"
    assert _evaluate(pred, ref, "--ref-glob", "*_Mask.png", "--spacing-csv", str(csv_path), *HEAD) == 0
    out = pred.parent / "pred_evaluation"
    assert str(out / "summary.json") in capsys.readouterr().out
    assert sorted(p.name for p in pred.iterdir()) == [f"{c}.png" for c in CASES]   # nothing added to --pred
    cases = read_json(out / "summary.json", kind="evaluation")["cases"]
    for cid in ("000_HC", "002_HC"):
        assert cases[cid]["head"]["dice"] == 1.0 and cases[cid]["head"]["hd95_mm"] == 0.0
    r = _mask(hc18_source, "001_HC")
    p = binary_erosion(r)
    assert cases["001_HC"]["head"]["dice"] == pytest.approx(2 * np.count_nonzero(p & r) /
                                                            (np.count_nonzero(p) + np.count_nonzero(r)))
    s = _pixel_size(csv_path, "001_HC.png")
    assert cases["001_HC"]["head"]["volume_ref_mm3"] == pytest.approx(np.count_nonzero(r) * s * s)
    assert s <= cases["001_HC"]["head"]["hd95_mm"] <= 1.5 * s     # one pixel of erosion, in mm


def test_labels_found_in_0_255_references_are_0_1_and_pixel_spacing_applies(hc18, hc18_source, tmp_path):
    pred, ref = hc18
    assert labels_from_references(ref, "*_Mask.png") == {"background": 0, "label_1": 1}
    summary = evaluate_folders(pred, ref, {"background": 0, "head": 1}, ref_glob="*_Mask.png", pixel_spacing=0.5)
    r = _mask(hc18_source, "000_HC")
    assert summary["cases"]["000_HC"]["head"]["volume_ref_mm3"] == pytest.approx(np.count_nonzero(r) * 0.25)
    assert summary["foreground_mean_dice"] > 0.97 and summary["spacing"] == "--pixel-spacing"


def _refused(capsys, argv_tail: list[str], pred: Path, ref: Path, root: Path, *expected: str) -> None:
    before = tree_state(root)
    assert _evaluate(pred, ref, *argv_tail) == 2
    err = capsys.readouterr().err
    assert "fix:" in err and "Traceback" not in err
    for text in expected:
        assert text in err, (text, err)
    assert tree_state(root) == before


@pytest.mark.parametrize("tol", ["-1", "nan"])
def test_negative_or_nan_tolerance_is_refused(hc18, tmp_path, capsys, tol):
    pred, ref = hc18
    _refused(capsys, ["--ref-glob", "*_Mask.png", "--tolerance", tol, *HEAD], pred, ref, tmp_path,
             "tolerance", "--tolerance")


def test_output_in_the_users_folders_is_refused(hc18, tmp_path, capsys):
    pred, ref = hc18
    glob = ["--ref-glob", "*_Mask.png", *HEAD]
    _refused(capsys, [*glob, "--output", str(pred)], pred, ref, tmp_path, "is the prediction folder", str(pred))
    _refused(capsys, [*glob, "--output", str(ref / "scores")], pred, ref, tmp_path,
             "lies inside the reference folder", "--output")


def test_undeclared_prediction_values_are_named(hc18, hc18_source, tmp_path, capsys):
    pred, ref = hc18
    bad = _mask(hc18_source, "001_HC").astype(np.uint8)
    bad[:10, :10] = 3
    _write_png(bad, pred / "001_HC.png")
    _refused(capsys, ["--ref-glob", "*_Mask.png", *HEAD], pred, ref, tmp_path,
             str(pred / "001_HC.png"), "label value(s) [3]", "--labels")


def test_references_not_matched_suggest_ref_glob_and_missing_csv_row_is_named(hc18, tmp_path, capsys):
    pred, ref = hc18
    _refused(capsys, [*HEAD], pred, ref, tmp_path, "no prediction matches a reference", "--ref-glob")
    short_csv = tmp_path / "sizes.csv"
    short_csv.write_text("filename,pixel size(mm)\n000_HC.png,0.07\n001_HC.png,0.08\n")
    _refused(capsys, ["--ref-glob", "*_Mask.png", "--spacing-csv", str(short_csv), *HEAD], pred, ref, tmp_path,
             str(short_csv), "002_HC", "add a row")


def test_two_files_with_one_case_id_are_named(hc18, tmp_path, capsys):
    pred, ref = hc18
    shutil.copy(pred / "000_HC.png", pred / "000_HC.tif")
    _refused(capsys, ["--ref-glob", "*_Mask.png", *HEAD], pred, ref, tmp_path, "000_HC.png", "000_HC.tif")


def test_pixel_spacing_for_3d_references_is_refused(tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    cid = hippo_ids(1)[0]
    shutil.copy(hippo_file(cid, "labelsTr"), ref)
    shutil.copy(hippo_file(cid, "labelsTr"), pred)
    with pytest.raises(SegpipeError, match="apply to 2D references"):
        evaluate_folders(pred, ref, {"background": 0, "a": 1, "p": 2}, pixel_spacing=1.0)
    assert evaluate_folders(pred, ref, {"background": 0, "a": 1, "p": 2})["foreground_mean_dice"] == 1.0
