"""segpipe.api.adapt wraps `segpipe adapt` (segpipe/adaptation/run.py): keyword arguments as the command's flags,
the adapted model written as a new workspace that predicts."""
from __future__ import annotations

from pathlib import Path

from conftest import hippo_ids, make_msd

from segpipe import Predictor, api


def test_api_adapt_writes_an_adapted_model_that_predicts(tiny_one_fold: Path, tmp_path: Path):
    images = make_msd(tmp_path / "target", hippo_ids(7)[6:]) / "imagesTr"
    result = api.adapt(tiny_one_fold, images, tmp_path / "adapted", "tiny", config="3d_fullres", folds=[0], steps=1,
                       patches=1, mirrorings=1, device="cpu", workers=1)
    assert result.config == "3d_fullres" and list(result.folds) == ["0"]
    assert result.folds["0"]["steps"] == 1
    assert (tmp_path / "adapted" / "tiny" / "results" / "3d_fullres" / "fold_0" / "checkpoint_final.pt").is_file()
    label = Predictor(tmp_path / "adapted", "tiny", folds=[0], device="cpu", mirror=False).predict_file(
        images / f"{hippo_ids(7)[6]}.nii.gz")
    assert label.ndim == 3
