"""Choosing a registered predictor (segpipe/inference/predictors.py) from `segpipe predict --predictor NAME` and
`segpipe.Predictor(..., predictor=NAME)`: the chosen one runs, an unknown name is refused with the registered
ones, and the prediction's record names it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import hippo_file, hippo_ids, make_msd

from segpipe import Predictor, plugins
from segpipe.cli import main
from segpipe.errors import SegpipeError
from segpipe.inference import predictors
from segpipe.inference.predictors import register_predictor
from segpipe.io.images import read_image
from segpipe.io.jsonio import read_json

CONSTANT = 2  # the label the test's predictor gives every voxel


@pytest.fixture
def constant_predictor(monkeypatch) -> list[tuple[int, ...]]:
    """``constant`` registered for this test only: class CONSTANT everywhere; returns the shapes it was given."""
    plugins.load_plugins()
    monkeypatch.setattr(predictors, "PREDICTORS", dict(predictors.PREDICTORS))
    monkeypatch.setattr(plugins, "PROVIDERS", dict(plugins.PROVIDERS))
    calls: list[tuple[int, ...]] = []

    @register_predictor("constant")
    def constant(networks, data, patch_size, n_outputs, **options):
        calls.append(tuple(data.shape))
        probs = torch.zeros((n_outputs, *data.shape[1:]), dtype=torch.float32)
        probs[CONSTANT] = 1.0
        return probs

    return calls


def _mostly_constant(label: np.ndarray) -> None:
    """Class CONSTANT wherever the case was not cropped away (background there), nothing else."""
    assert set(np.unique(label).tolist()) <= {0, CONSTANT}
    assert np.count_nonzero(label == CONSTANT) > 0.5 * label.size


def test_predict_uses_the_predictor_named_on_the_command_line(constant_predictor, tiny_one_fold: Path,
                                                               tmp_path: Path, capsys):
    images = make_msd(tmp_path / "in", hippo_ids(7)[6:]) / "imagesTr"
    out = tmp_path / "out"
    assert main(["predict", "-w", str(tiny_one_fold), "-i", str(images), "-o", str(out), "-f", "0", "--no-mirror",
                 "--device", "cpu", "--workers", "1", "--predictor", "constant"]) == 0
    assert "predictor 'constant'" in capsys.readouterr().out
    (written,) = out.glob("*.nii.gz")
    _mostly_constant(read_image(written)[0])
    assert len(constant_predictor) == 1
    records = [read_json(r) for r in (tiny_one_fold / "tiny" / "records").glob("predict_*.json")]
    assert any(r["settings"].get("predictor") == "constant" and str(written) in str(r) for r in records)
    assert main(["predict", "-w", str(tiny_one_fold), "-i", str(images), "-o", str(tmp_path / "out2"), "-f", "0",
                 "--predictor", "constnat", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'constant'" in err and "sliding-window" in err
    assert not (tmp_path / "out2").exists()


def test_the_predictor_class_uses_the_chosen_predictor(constant_predictor, tiny_one_fold: Path):
    path = hippo_file(hippo_ids(7)[6])
    default = Predictor(tiny_one_fold, "tiny", folds=[0], device="cpu", mirror=False).predict_file(path)
    assert constant_predictor == []  # the sliding window by default
    chosen = Predictor(tiny_one_fold, "tiny", folds=[0], device="cpu", mirror=False, predictor="constant")
    label = chosen.predict_file(path)
    _mostly_constant(label)
    assert len(constant_predictor) == 1 and not np.array_equal(label, default)
    with pytest.raises(SegpipeError, match="uncertainty needs"):  # it does not fill entropy_out
        chosen.predict_file(path, uncertainty=True)
    with pytest.raises(SegpipeError, match="did you mean 'constant'"):
        Predictor(tiny_one_fold, "tiny", folds=[0], device="cpu", predictor="constnt")
