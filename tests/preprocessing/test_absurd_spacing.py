"""Absurd spacings (a header saying 1e-4 mm) are refused before resampling allocates a gigantic array."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from fixtures.plans import make_configuration

from segpipe.cli import main
from segpipe.errors import SegpipeError
from segpipe.io.images import Geometry, write_image
from segpipe.planning.plans import Configuration
from segpipe.preprocessing.case import preprocess_case
from segpipe.preprocessing.memory_check import MAX_VOXELS, check_resampled_size

IDENTITY = np.eye(3).ravel().tolist()
RESAMPLING = {"image_order": 3, "label_order": 1, "label_mode": "one-hot", "anisotropy_threshold": 3.0,
              "coarse_axis_order": 0}


def _config(spacing) -> Configuration:
    return make_configuration(spacing, resampling=RESAMPLING)


def _case(shape=(8, 12, 10), seed=0):
    rng = np.random.default_rng(seed)
    img = rng.normal(100, 10, shape).astype(np.float32)
    lab = np.zeros(shape, np.int16)
    lab[2:6, 3:9, 3:7] = 1
    return img, lab


@pytest.mark.parametrize("with_label", [True, False], ids=["preprocess", "predict"])
def test_case_that_would_explode_is_refused_fast(with_label: bool):
    img, lab = _case()
    geo = Geometry((8, 12, 10), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENTITY)
    t0 = time.monotonic()
    with pytest.raises(SegpipeError) as e:
        preprocess_case(img[None], lab if with_label else None, geo, _config([1e-4] * 3),
                        case_id="odd_case", file="/data/odd_case.nii.gz")
    assert time.monotonic() - t0 < 5  # refused before allocating ~1e15 voxels
    msg = e.value.format()
    assert "case 'odd_case'" in msg and "/data/odd_case.nii.gz" in msg
    assert "[80000, 120000, 100000]" in msg  # the shape it would produce
    assert "[1.0, 1.0, 1.0]" in msg and "[0.0001, 0.0001, 0.0001]" in msg  # the spacings involved
    assert "spacing in this file's header" in msg and "--pixel-spacing" in msg


def test_tiny_header_spacing_that_shrinks_is_not_refused():
    img, lab = _case()
    geo = Geometry((8, 12, 10), (1e-4, 1e-4, 1e-4), (0.0, 0.0, 0.0), IDENTITY)
    data, seg, props = preprocess_case(img[None], lab, geo, _config([1.0] * 3), case_id="c")
    assert data.shape == (1, 1, 1, 1) and props["spacing"] == [1e-4] * 3


def test_limits_voxels_and_memory():
    check_resampled_size([10, 10, 10], [1, 1, 1], [0.5] * 3, [20, 20, 20], 1, True)  # fine
    with pytest.raises(SegpipeError, match="voxels"):
        check_resampled_size([100] * 3, [1] * 3, [0.07] * 3, [1300] * 3, 1, False, ram_bytes=2 ** 50)
    assert 1300 ** 3 > MAX_VOXELS
    with pytest.raises(SegpipeError, match="GiB"):  # 1e9 voxels x (2 channels + label) on a 4 GiB machine
        check_resampled_size([100] * 3, [1] * 3, [0.1] * 3, [1000] * 3, 2, True, ram_bytes=4 * 2 ** 30)


def _write_msd(root: Path, spacings: dict[str, float]) -> Path:
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    for i, (cid, sp) in enumerate(spacings.items()):
        img, lab = _case(seed=i)
        geo = Geometry(img.shape, (sp, sp, sp), (0.0, 0.0, 0.0), IDENTITY)
        write_image(img, geo, root / "imagesTr" / f"{cid}.nii.gz")
        write_image(lab.astype(np.uint8), geo, root / "labelsTr" / f"{cid}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "name": "Absurd", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "thing"},
        "numTraining": len(spacings),
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in spacings]}))
    return root


def test_preprocess_stage_names_the_case_shape_and_spacings(tmp_path: Path, capsys):
    # two headers claim 1e-4 mm, so the plan's spacing is 1e-4 mm and the one 1 mm case would grow 1e4x per axis
    src = _write_msd(tmp_path / "src", {"a_001": 1e-4, "a_002": 1e-4, "a_003": 1.0})
    ws = tmp_path / "ws"
    for args in (["onboard", str(src), "--name", "absurd", "-w", str(ws), "--workers", "1"],
                 ["fingerprint", "-w", str(ws), "--workers", "1"], ["plan", "-w", str(ws)]):
        assert main(args) == 0
    capsys.readouterr()
    assert main(["preprocess", "-w", str(ws), "--config", "3d_fullres", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "case 'a_003'" in err and "0.0001" in err and "[8, 12, 10]" in err and "[80000, 120000, 100000]" in err
    assert "fix:" in err and "Traceback" not in err
    assert not list((ws / "absurd" / "preprocessed" / "3d_fullres").glob("a_003*"))
    assert not (ws / "absurd" / "records" / "preprocess_3d_fullres.json").exists()
