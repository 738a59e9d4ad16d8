"""Issue 9 C, bad input answered at onboarding: label values beyond int8, malformed dataset.json channel keys and
file_ending, multi-page TIFF stacks given as 2D images, grey+alpha/RGBA PNGs, and subject grouping options.

Fault tests: exit code 2, the message names the file, the problem and the fix, nothing written, source unchanged.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import hippo_file, hippo_ids, make_hc18_like, make_msd, tree_state
from PIL import Image

from segpipe.cli import main
from segpipe.dataset.model import CaseEntry, DatasetSpec
from segpipe.dataset.reading import read_case
from segpipe.dataset.store import load_dataset
from segpipe.dataset.validate import validate_dataset
from segpipe.io.images import read_image
from segpipe.workspace import Workspace

# HC18 frames of subjects 010-015: 010, 014 have several frames each (010_HC, 010_2HC; 014_HC, 014_2HC, 014_3HC)
HC18_NAMES = ["010_2HC", "010_HC", "011_HC", "012_HC", "013_HC", "014_2HC", "014_3HC", "014_HC", "015_HC"]
FLAT = ["--image-glob", "images/*.png", "--label-glob", "masks/*_Mask.png"]


def _onboard(src: Path, ws: Path, capsys, *extra: str) -> tuple[int, str]:
    code = main(["onboard", str(src), "--name", "d", "--workspace", str(ws), "--workers", "1", *extra])
    out = capsys.readouterr()
    return code, out.out + out.err


def _refused(src: Path, tmp: Path, capsys, *extra: str) -> str:
    """Onboard expecting a refusal: exit 2, a fix, no workspace, the source unchanged. Returns the message."""
    before = tree_state(src)
    code, msg = _onboard(src, tmp / "ws", capsys, *extra)
    assert code == 2, msg
    assert "fix:" in msg and "Traceback" not in msg
    assert not (tmp / "ws").exists()
    assert tree_state(src) == before
    return msg


def _hc18(dst: Path, names: list[str] = HC18_NAMES) -> Path:
    """A flat folder of HC18-like frames named as the real ones (synthetic 540x800 grey PNGs in images/, RGB 0/255
    masks in masks/) with the pixel-size CSV."""
    make_hc18_like(dst, names)
    return dst


def _hc18_args(src: Path) -> list[str]:
    return [*FLAT, "--spacing-csv", str(src / "pixel_size.csv"), "--labels", "background=0", "head=1"]


def _set_json(src: Path, **changes) -> Path:
    dj = src / "dataset.json"
    d = json.loads(dj.read_text())
    d.update(changes)
    dj.write_text(json.dumps(d))
    return dj


# --- 1. label values beyond what int8 label storage holds -----------------------------------------------------

def _relabel(path: Path, src_value: int, dst_value: int) -> None:
    img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(img).astype(np.int16)
    out = sitk.GetImageFromArray(np.where(arr == src_value, dst_value, arr).astype(np.int16))
    out.CopyInformation(img)
    sitk.WriteImage(out, str(path))


def test_found_label_value_above_127_is_refused(msd4: Path, tmp_path: Path, capsys):
    lab = sorted((msd4 / "labelsTr").iterdir())[1]
    _relabel(lab, 2, 200)
    msg = _refused(msd4, tmp_path, capsys)
    assert str(lab) in msg and "[200] exceed 127" in msg and "8-bit" in msg and "renumber" in msg
    assert "not declared" not in msg  # one clear message, not two


def test_found_label_value_above_127_is_refused_without_declared_labels(tmp_path: Path, capsys):
    src = make_msd(tmp_path / "T", hippo_ids(3), with_json=False)
    lab = sorted((src / "labelsTr").iterdir())[0]
    _relabel(lab, 1, 128)
    msg = _refused(src, tmp_path, capsys)
    assert str(lab) in msg and "[128] exceed 127" in msg


def test_declared_label_value_above_127_names_dataset_json(msd4: Path, tmp_path: Path, capsys):
    dj = _set_json(msd4, labels={"0": "background", "1": "anterior", "2": "posterior", "300": "huge"})
    msg = _refused(msd4, tmp_path, capsys)
    assert f"file {dj}" in msg and "'huge': 300" in msg and "exceed 127" in msg


def test_label_value_127_is_accepted(tmp_path: Path):
    """The largest storable value passes validation (labels 0..127, 128 classes): the limit is not off by one."""
    src = make_msd(tmp_path / "T", hippo_ids(1))
    lab = src / "labelsTr" / f"{hippo_ids(1)[0]}.nii.gz"
    _relabel(lab, 2, 127)
    spec = DatasetSpec("x", str(src), "msd", {"0": "MRI"}, {f"c{v}": v for v in range(128)}, ".nii.gz",
                       [CaseEntry(hippo_ids(1)[0], [f"imagesTr/{hippo_ids(1)[0]}.nii.gz"],
                                  f"labelsTr/{hippo_ids(1)[0]}.nii.gz")], channels_in_file=True)
    problems, reports = validate_dataset(spec, src)
    assert not [p for p in problems if p.severity == "error"], problems
    assert max(reports[0].label_values) == 127


# --- 2./3. malformed dataset.json: channel keys, file_ending ---------------------------------------------------

def _nnunet(dst: Path, n: int = 2, **dj) -> Path:
    (dst / "imagesTr").mkdir(parents=True)
    (dst / "labelsTr").mkdir()
    for cid in hippo_ids(n):
        shutil.copy(hippo_file(cid), dst / "imagesTr" / f"{cid}_0000.nii.gz")
        shutil.copy(hippo_file(cid, "labelsTr"), dst / "labelsTr" / f"{cid}.nii.gz")
    d = {"channel_names": {"0": "T1"}, "labels": {"background": 0, "anterior": 1, "posterior": 2},
         "numTraining": n, "file_ending": ".nii.gz"}
    d.update(dj)
    (dst / "dataset.json").write_text(json.dumps(d))
    return dst


@pytest.mark.parametrize("layout,field,value,expected", [
    ("msd", "modality", {"a": "CT"}, "['a'] are not channel numbers"),
    ("nnunet", "channel_names", {"zero": "T1"}, "['zero'] are not channel numbers"),
    ("nnunet", "channel_names", {"1": "T1"}, "are not the channel numbers 0..0"),
    ("msd", "modality", {}, "declares no channel"),
])
def test_bad_channel_keys_name_dataset_json(layout, field, value, expected, tmp_path: Path, capsys):
    src = make_msd(tmp_path / "T", hippo_ids(2)) if layout == "msd" else _nnunet(tmp_path / "N")
    dj = _set_json(src, **{field: value})
    msg = _refused(src, tmp_path, capsys)
    assert f"file {dj}" in msg and f"'{field}'" in msg and expected in msg
    assert "number the channels" in msg or "name the channels" in msg


def test_channels_flag_overrides_bad_channel_keys(tmp_path: Path, capsys):
    src = make_msd(tmp_path / "T", hippo_ids(2))
    _set_json(src, modality={"a": "CT"})
    code, msg = _onboard(src, tmp_path / "ws", capsys, "--channels", "MRI")
    assert code == 0, msg
    assert load_dataset(Workspace(tmp_path / "ws", "d")).channels == {"0": "MRI"}


def test_file_ending_without_dot_is_refused_with_the_fix(tmp_path: Path, capsys):
    src = _nnunet(tmp_path / "N", file_ending="nii.gz")
    msg = _refused(src, tmp_path, capsys)
    assert f"file {src / 'dataset.json'}" in msg and "without the leading dot" in msg
    assert 'write "file_ending": ".nii.gz"' in msg


def test_unsupported_file_ending_is_refused(tmp_path: Path, capsys):
    src = _nnunet(tmp_path / "N", file_ending=".dcm")
    msg = _refused(src, tmp_path, capsys)
    assert "'.dcm' is not a supported image ending" in msg and ".nii.gz" in msg


# --- 4. multi-page TIFF given as a 2D image ---------------------------------------------------------------------

def _tiff_folder(dst: Path, pages: int) -> tuple[Path, Path]:
    """Two tiny flat TIFF cases; the first image has ``pages`` pages (a 3D stack when > 1)."""
    (dst / "images").mkdir(parents=True)
    (dst / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        n = pages if i == 0 else 1
        img = rng.integers(0, 200, (n, 24, 32)).astype(np.uint8)
        sitk.WriteImage(sitk.GetImageFromArray(img if n > 1 else img[0]), str(dst / "images" / f"c{i}.tif"))
        mask = np.zeros((24, 32), np.uint8)
        mask[5:15, 8:20] = 1
        sitk.WriteImage(sitk.GetImageFromArray(mask), str(dst / "masks" / f"c{i}.tif"))
    return dst, dst / "images" / "c0.tif"


def test_multipage_tiff_is_refused_as_a_2d_image(tmp_path: Path, capsys):
    src, stack = _tiff_folder(tmp_path / "tif", pages=5)
    assert sitk.ReadImage(str(stack)).GetDimension() == 3  # the fault is real: ITK reads a 3D volume
    msg = _refused(src, tmp_path, capsys, "--image-glob", "images/*.tif", "--label-glob", "masks/*.tif",
                   "--pixel-spacing", "0.1")
    assert str(stack) in msg and "multi-page .tif" in msg and "5 pages of 24x32 pixels" in msg
    assert "NIfTI" in msg and "case 'c0'" in msg


def test_single_page_tiff_onboards(tmp_path: Path, capsys):
    src, _ = _tiff_folder(tmp_path / "tif", pages=1)
    code, msg = _onboard(src, tmp_path / "ws", capsys, "--image-glob", "images/*.tif", "--label-glob",
                         "masks/*.tif", "--pixel-spacing", "0.1")
    assert code == 0, msg
    ws = Workspace(tmp_path / "ws", "d")
    spec = load_dataset(ws)
    assert [c.id for c in spec.cases] == ["c0", "c1"]
    data, label, geo = read_case(spec, ws.raw, spec.cases[0])
    assert data.shape == (1, 24, 32) and label.shape == (24, 32) and geo.spacing == pytest.approx((0.1, 0.1))
    assert set(np.unique(label)) == {0, 1}


# --- 5. grey+alpha, RGBA and colour PNGs ------------------------------------------------------------------------

def _convert_images(src: Path, fn) -> None:
    for p in sorted((src / "images").iterdir()):
        grey = np.asarray(Image.open(p))
        fn(grey).save(p)


def test_grey_alpha_png_reads_as_its_grey_component(tmp_path: Path):
    frame = make_hc18_like(tmp_path / "hc", ["010_HC"]).image_files["010_HC"][0]
    grey = np.asarray(Image.open(frame))
    alpha = np.full_like(grey, 255)
    alpha[:10] = 0  # a varying alpha is ignored (with a warning), the grey values are kept
    path = tmp_path / "la.png"
    Image.fromarray(np.stack([grey, alpha], -1), mode="LA").save(path)
    arr, geo = read_image(path)
    assert arr.shape == grey.shape == geo.shape and geo.extra["components"] == 1
    np.testing.assert_array_equal(arr, grey)
    assert geo.spacing == (1.0, 1.0) and geo.origin == (0.0, 0.0)  # as ITK reads a grey PNG


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_grey_png_with_alpha_onboards_with_the_same_data(mode, tmp_path: Path, capsys):
    src = _hc18(tmp_path / "hc", HC18_NAMES[:2])
    grey0 = np.asarray(Image.open(src / "images" / "010_2HC.png"))

    def with_alpha(g: np.ndarray) -> Image.Image:
        a = np.full_like(g, 255)
        return Image.fromarray(np.stack([g, a] if mode == "LA" else [g, g, g, a], -1), mode=mode)

    _convert_images(src, with_alpha)
    assert Image.open(src / "images" / "010_2HC.png").mode == mode
    code, msg = _onboard(src, tmp_path / "ws", capsys, *_hc18_args(src))
    assert code == 0, msg
    ws = Workspace(tmp_path / "ws", "d")
    spec = load_dataset(ws)
    data, label, _ = read_case(spec, ws.raw, spec.case("010_2HC"))
    assert data.shape == (1, 540, 800) and set(np.unique(label)) == {0, 1}
    np.testing.assert_array_equal(data[0], grey0.astype(np.float32))


def test_colour_png_image_is_refused(tmp_path: Path, capsys):
    src = _hc18(tmp_path / "hc", HC18_NAMES[:2])
    _convert_images(src, lambda g: Image.fromarray(np.stack([g, g // 2, g // 3], -1), mode="RGB"))
    msg = _refused(src, tmp_path, capsys, *_hc18_args(src))
    assert str(src / "images" / "010_2HC.png") in msg and "colour image with 3 components" in msg
    assert "grayscale" in msg


def test_colour_label_map_is_refused(tmp_path: Path, capsys):
    src = _hc18(tmp_path / "hc", HC18_NAMES[:2])
    mask = src / "masks" / "010_HC_Mask.png"
    rgb = np.asarray(Image.open(mask)).copy()
    rgb[..., 1] = 0  # head drawn in red: channels differ
    Image.fromarray(rgb, mode="RGB").save(mask)
    msg = _refused(src, tmp_path, capsys, *_hc18_args(src))
    assert str(mask) in msg and "colour label map" in msg and "single-channel" in msg


# --- 6. subjects: grouping options, their errors, and grouped folds ---------------------------------------------

def test_subject_pattern_groups_hc18_frames_into_one_fold(tmp_path: Path, capsys):
    from segpipe.training.splits import load_splits, make_splits

    src = _hc18(tmp_path / "hc")
    code, msg = _onboard(src, tmp_path / "ws", capsys, *_hc18_args(src), "--subject-pattern", r"^(\d{3})_")
    assert code == 0, msg
    ws = Workspace(tmp_path / "ws", "d")
    spec = load_dataset(ws)
    assert spec.subjects == {n: n[:3] for n in HC18_NAMES}
    assert json.loads(ws.dataset_json.read_text())["cases"][0]["subject"] == "010"
    ids = [c.id for c in spec.cases]
    # without grouping, these ids do split a subject across folds: the test below can fail
    ungrouped = make_splits(ids, 5)
    assert any(len({k for k, f in enumerate(ungrouped) for c in f["val"] if c[:3] == s}) > 1
               for s in ("010", "014"))
    folds = load_splits(ws, ids)
    assert len(folds) == 5 and sorted(c for f in folds for c in f["val"]) == sorted(ids)
    for f in folds:
        assert {c[:3] for c in f["val"]}.isdisjoint({c[:3] for c in f["train"]})
    assert json.loads(ws.splits_json.read_text())["folds"] == folds
    assert load_splits(ws, ids) == folds  # read back, still valid


def test_existing_splits_that_separate_a_subject_are_refused(tmp_path: Path, capsys):
    from segpipe.errors import SegpipeError
    from segpipe.io.jsonio import write_json
    from segpipe.training.splits import load_splits

    src = _hc18(tmp_path / "hc", HC18_NAMES[:4])
    assert _onboard(src, tmp_path / "ws", capsys, *_hc18_args(src), "--subject-pattern", r"^(\d{3})_")[0] == 0
    ws = Workspace(tmp_path / "ws", "d")
    ids = HC18_NAMES[:4]
    write_json(ws.splits_json, {"folds": [{"train": ids[1:], "val": ids[:1]}, {"train": ids[:1], "val": ids[1:]}]},
               kind="splits")
    with pytest.raises(SegpipeError, match="different folds") as e:
        load_splits(ws, ids)
    assert e.value.problems[0].file == str(ws.splits_json) and "delete splits.json" in e.value.problems[0].fix


def test_subject_csv_with_file_names(tmp_path: Path, capsys):
    src = _hc18(tmp_path / "hc", HC18_NAMES[:4])
    csv = tmp_path / "subjects.csv"
    csv.write_text("filename,patient\n" + "".join(f"{n}.png,P{n[:3]}\n" for n in HC18_NAMES[:4]))
    code, msg = _onboard(src, tmp_path / "ws", capsys, *_hc18_args(src), "--subject-csv", str(csv),
                         "--subject-column", "patient")
    assert code == 0, msg
    assert load_dataset(Workspace(tmp_path / "ws", "d")).subjects == {n: f"P{n[:3]}" for n in HC18_NAMES[:4]}


@pytest.mark.parametrize("options,expected", [
    (["--subject-pattern", r"^(\d{3}_"], "is not a valid regular expression"),
    (["--subject-pattern", r"^\d{3}_"], "has no group"),
    (["--subject-pattern", r"^(x\d)"], "matches none of the 3 case ids"),
    (["--subject-pattern", r"^(010)_"], "case '011_HC': --subject-pattern '^(010)_' does not match"),
    (["--subject-pattern", "(.)", "--subject-csv", "s.csv"], "give only one of them"),
    (["--subject-column", "subject"], "--subject-column given without --subject-csv"),
])
def test_bad_subject_pattern_is_refused(options, expected, tmp_path: Path, capsys):
    src = _hc18(tmp_path / "hc", HC18_NAMES[:3])
    msg = _refused(src, tmp_path, capsys, *_hc18_args(src), *options)
    assert expected in msg


@pytest.mark.parametrize("content,expected", [
    ("case,subject\n010_2HC,a\n010_HC,a\n", "case '011_HC', file {csv}: no row for this case"),
    ("case,patient\n010_2HC,a\n", "file {csv}: subject CSV has no column 'subject'"),
    ("subject\na\n", "file {csv}: subject CSV has no case column"),
    ("case,subject\n010_2HC,a\n010_2HC.png,b\n", "file {csv}: '010_2HC' is given two subjects"),
    ("case,subject\n", "file {csv}: subject CSV has no rows"),
])
def test_bad_subject_csv_is_refused(content, expected, tmp_path: Path, capsys):
    src = _hc18(tmp_path / "hc", HC18_NAMES[:3])
    csv = tmp_path / "subjects.csv"
    csv.write_text(content)
    msg = _refused(src, tmp_path, capsys, *_hc18_args(src), "--subject-csv", str(csv))
    assert expected.format(csv=csv) in msg


def test_dataset_json_without_subjects_still_loads(tmp_path: Path):
    d = DatasetSpec("x", "/src", "msd", {"0": "MRI"}, {"background": 0}, ".nii.gz", []).to_dict()
    d["cases"] = [{"id": "a", "images": ["imagesTr/a.nii.gz"], "label": "labelsTr/a.nii.gz"}]
    spec = DatasetSpec.from_dict(d)
    assert spec.cases[0].subject is None and spec.subjects == {} and "subject" not in spec.cases[0].to_dict()
    d["cases"][0]["subject"] = 7
    with pytest.raises(Exception, match="not a string"):
        DatasetSpec.from_dict(d)
