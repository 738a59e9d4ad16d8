"""`segpipe predict`'s input folder: duplicate case ids, 2D images without a pixel size, label maps given as
images. Unit checks of resolve_inputs on real hippocampus files (the shipped example data) and HC18-like PNGs
(synthetic, conftest.make_hc18_like), then the CLI with a tiny trained model: exit 2, the file, the problem and the
fix, and nothing written."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import SimpleITK as sitk
from conftest import hippo_file, hippo_ids, make_hc18_like, tree_state

from segpipe.cli import main
from segpipe.dataset.model import DatasetSpec
from segpipe.errors import SegpipeError
from segpipe.inference import inputs
from segpipe.inference.inputs import resolve_inputs

HIPPO_LABELS = {"background": 0, "anterior": 1, "posterior": 2}


def _spec(ending: str = ".nii.gz", labels: dict | None = None, value_map: dict | None = None,
          channels: int = 1) -> DatasetSpec:
    return DatasetSpec("d", "/nowhere", "msd", {str(i): f"c{i}" for i in range(channels)},
                       labels or HIPPO_LABELS, ending, [], label_value_map=value_map)


def _hippo(folder: Path, n: int, sub: str = "imagesTr", suffix: str = "") -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    ids = hippo_ids(n)
    for cid in ids:
        shutil.copy(hippo_file(cid, sub), folder / f"{cid}{suffix}.nii.gz")
    return ids


@pytest.fixture(scope="module")
def hc18(tmp_path_factory) -> Path:
    """HC18-like frames 000_HC..002_HC (images/, masks/ with RGB 0/255 masks, pixel_size.csv)."""
    return make_hc18_like(tmp_path_factory.mktemp("hc18"), [f"{i:03d}_HC" for i in range(3)]).root


def _pngs(hc18: Path, folder: Path, n: int, masks: bool = False) -> list[str]:
    """Copy the first ``n`` HC18-like frames (or their masks, under the frame's name) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in (hc18 / "images").iterdir())[:n]
    for name in names:
        src = hc18 / "masks" / name.replace(".png", "_Mask.png") if masks else hc18 / "images" / name
        shutil.copy(src, folder / name)
    return names


@pytest.mark.parametrize("other", ["{cid}.nrrd", "{cid}_0000.nii.gz"])
def test_two_files_for_one_case_are_named(tmp_path, other):
    cid = _hippo(tmp_path / "in", 2)[0]
    img = sitk.ReadImage(str(tmp_path / "in" / f"{cid}.nii.gz"))
    sitk.WriteImage(img, str(tmp_path / "in" / other.format(cid=cid)))
    with pytest.raises(SegpipeError) as e:
        resolve_inputs(tmp_path / "in", _spec())
    msg = e.value.format()
    assert f"{cid}.nii.gz" in msg and other.format(cid=cid) in msg and "fix:" in msg


def test_2d_images_need_a_pixel_size(tmp_path, hc18):
    names = _pngs(hc18, tmp_path / "in", 2)
    with pytest.raises(SegpipeError) as e:
        resolve_inputs(tmp_path / "in", _spec(".png"))
    msg = e.value.format()
    assert "carry no pixel spacing" in msg and "--pixel-spacing" in msg and "--spacing-csv" in msg
    assert names[0] in msg
    cases = resolve_inputs(tmp_path / "in", _spec(".png"), pixel_spacing=0.08)
    assert [c.spacing for c in cases] == [[0.08, 0.08]] * 2
    with pytest.raises(SegpipeError, match="not a positive number"):
        resolve_inputs(tmp_path / "in", _spec(".png"), pixel_spacing=-1.0)


def test_spacing_csv_gives_each_case_its_pixel_size_like_onboarding(tmp_path, hc18):
    names = _pngs(hc18, tmp_path / "in", 3)
    csv_path = hc18 / "pixel_size.csv"
    cases = resolve_inputs(tmp_path / "in", _spec(".png"), spacing_csv=csv_path)
    rows = dict(line.split(",")[:2] for line in csv_path.read_text().splitlines()[1:])
    assert [c.spacing for c in cases] == [[float(rows[n])] * 2 for n in names]
    shutil.copy(tmp_path / "in" / names[0], tmp_path / "in" / "extra_scan.png")
    with pytest.raises(SegpipeError) as e:
        resolve_inputs(tmp_path / "in", _spec(".png"), spacing_csv=csv_path)
    assert "extra_scan.png" in e.value.format() and str(csv_path) in e.value.format()


def test_pixel_spacing_for_3d_images_is_refused(tmp_path):
    _hippo(tmp_path / "in", 1)
    with pytest.raises(SegpipeError, match="apply to 2D images"):
        resolve_inputs(tmp_path / "in", _spec(), pixel_spacing=1.0)


def test_label_maps_given_as_images_warn_after_reading_few_cases(tmp_path, hc18, caplog, monkeypatch):
    reads = []
    real_read = inputs.read_image
    monkeypatch.setattr(inputs, "read_image", lambda p: reads.append(p) or real_read(p))
    _hippo(tmp_path / "labels", 5, sub="labelsTr")
    with caplog.at_level(logging.WARNING, logger="segpipe.inference.inputs"):
        assert len(resolve_inputs(tmp_path / "labels", _spec())) == 5
    assert "look like label maps" in caplog.text and len(reads) == inputs.LABEL_LIKE_CASES
    caplog.clear()
    reads.clear()
    _hippo(tmp_path / "images", 5)
    with caplog.at_level(logging.WARNING, logger="segpipe.inference.inputs"):
        resolve_inputs(tmp_path / "images", _spec())
    assert "label maps" not in caplog.text and len(reads) == 1
    # HC18 0/255 RGB masks given as inputs of a 2D data set that maps 255 -> 1
    _pngs(hc18, tmp_path / "masks", 2, masks=True)
    with caplog.at_level(logging.WARNING, logger="segpipe.inference.inputs"):
        resolve_inputs(tmp_path / "masks", _spec(".png", {"background": 0, "head": 1}, {"255": 1}),
                       pixel_spacing=0.1)
    assert "look like label maps" in caplog.text


def test_discover_inputs_still_importable_from_predict():
    from segpipe.inference.predict import discover_inputs

    assert discover_inputs is inputs.discover_inputs


def _predict(ws: Path, inp: Path, out: Path, *extra: str) -> int:
    return main(["predict", "-w", str(ws), "-i", str(inp), "-o", str(out), "--workers", "1", "--no-mirror",
                 *extra])


def test_cli_refuses_bad_inputs_and_writes_nothing(tiny_one_fold, tmp_path, hc18, capsys):
    _pngs(hc18, tmp_path / "png", 1)
    cid = _hippo(tmp_path / "dup", 1)[0]
    shutil.copy(tmp_path / "dup" / f"{cid}.nii.gz", tmp_path / "dup" / f"{cid}_0000.nii.gz")
    short_csv = tmp_path / "sizes.csv"
    short_csv.write_text("filename,pixel size(mm)\nother.png,0.1\n")
    for folder, extra, expected in [("png", [], ["000_HC.png", "carry no pixel spacing", "--spacing-csv"]),
                                    ("png", ["--spacing-csv", str(short_csv)], [str(short_csv), "000_HC.png"]),
                                    ("dup", [], [f"{cid}.nii.gz", f"{cid}_0000.nii.gz"])]:
        before = tree_state(tmp_path)
        assert _predict(tiny_one_fold, tmp_path / folder, tmp_path / "out", *extra) == 2
        err = capsys.readouterr().err
        assert "fix:" in err and all(t in err for t in expected), err
        assert tree_state(tmp_path) == before


def test_cli_warns_when_given_the_labels_folder(tiny_one_fold, tmp_path, capsys):
    ids = _hippo(tmp_path / "labels", 1, sub="labelsTr")
    assert _predict(tiny_one_fold, tmp_path / "labels", tmp_path / "out") == 0
    assert "look like label maps" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{ids[0]}.nii.gz"]
