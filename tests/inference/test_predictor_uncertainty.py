"""segpipe.Predictor's uncertainty: the same maps and score as `segpipe predict --uncertainty` on the same case."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import hippo_file, hippo_ids, make_msd

from segpipe import Predictor
from segpipe.cli import main
from segpipe.inference.predictor import UncertainPrediction
from segpipe.inference.uncertainty import SUMMARY_NAME, uncertainty_paths
from segpipe.io.images import read_image
from segpipe.io.jsonio import read_json


def test_the_predictor_gives_the_clis_uncertainty(tiny_one_fold: Path, tmp_path: Path):
    cid = hippo_ids(7)[6]
    images = make_msd(tmp_path / "in", [cid]) / "imagesTr"
    out = tmp_path / "cli"
    assert main(["predict", "-w", str(tiny_one_fold), "-i", str(images), "-o", str(out), "-f", "0", "--uncertainty",
                 "--device", "cpu", "--precision", "fp32", "--workers", "1"]) == 0
    cli = read_json(out / SUMMARY_NAME, kind="uncertainty")["cases"][cid]
    entropy_file, mi_file = uncertainty_paths(out / f"{cid}.nii.gz")

    predictor = Predictor(tiny_one_fold, "tiny", folds=[0], device="cpu", precision="fp32")  # mirrored, as the CLI
    result = predictor.predict_file(hippo_file(cid), tmp_path / "api" / f"{cid}.nii.gz", uncertainty=True)
    assert isinstance(result, UncertainPrediction)
    assert result.score == pytest.approx(cli["score"], rel=1e-5) and result.score > 0
    for key in ("mean_entropy_region", "mean_mutual_information_region", "mean_entropy_image"):
        assert result.scores[key] == pytest.approx(cli[key], rel=1e-5, abs=1e-7)
    assert result.scores["region_voxels"] == cli["region_voxels"]
    assert np.array_equal(result.label, read_image(out / f"{cid}.nii.gz")[0])
    np.testing.assert_allclose(result.entropy, read_image(entropy_file)[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.mutual_information, read_image(mi_file)[0], rtol=1e-5, atol=1e-6)
    assert result.mutual_information.max() > 0  # mirrorings disagree somewhere: MI is not trivially 0
    assert all(p.is_file() for p in uncertainty_paths(tmp_path / "api" / f"{cid}.nii.gz"))
    plain = predictor.predict_file(hippo_file(cid))  # without the flag: the label map alone, as before
    assert isinstance(plain, np.ndarray) and np.array_equal(plain, result.label)
