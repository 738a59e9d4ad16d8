"""segpipe.Predictor's inputs are read as `segpipe predict` reads them: the same refusals, named with the file,
and the same label maps (docs/api.md's examples run in tests/test_docs_api.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import hippo_file, hippo_ids

from segpipe import Predictor
from segpipe.errors import SegpipeError


@pytest.fixture(scope="module")
def predictor(tiny_one_fold: Path) -> Predictor:
    return Predictor(tiny_one_fold, "tiny", folds=[0], device="cpu", mirror=False)


def test_files_arrays_and_images_give_the_same_label_map(predictor: Predictor, tmp_path: Path):
    path = hippo_file(hippo_ids(7)[6])
    label = predictor.predict_file(path, tmp_path / "out.nii.gz")
    image = sitk.ReadImage(str(path))
    assert np.array_equal(label, sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out.nii.gz"))))
    assert np.array_equal(label, predictor.predict_array(sitk.GetArrayFromImage(image), image.GetSpacing()[::-1]))
    assert np.array_equal(label, sitk.GetArrayFromImage(predictor.predict_image(image)))
    assert set(np.unique(label).tolist()) <= set(predictor.classes.values())


def test_wrong_inputs_are_refused_with_the_fix(predictor: Predictor, tmp_path: Path):
    png = tmp_path / "frame.png"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 30), np.uint8)), str(png))
    with pytest.raises(SegpipeError, match="carry no pixel spacing"):
        predictor.predict_file(png)  # as `segpipe predict`: no silent 1 mm
    path = hippo_file(hippo_ids(1)[0])
    with pytest.raises(SegpipeError, match="apply to 2D images"):
        predictor.predict_file(path, pixel_spacing=0.5)
    with pytest.raises(SegpipeError, match="2 file"):
        predictor.predict_file([path, path])
    with pytest.raises(SegpipeError, match="2 image"):
        predictor.predict_image([sitk.ReadImage(str(path))] * 2)
    with pytest.raises(SegpipeError, match="one spacing"):
        predictor.predict_array(np.zeros((4, 5, 6, 7), np.float32), (1.0,))
    with pytest.raises(SegpipeError, match="channels first"):
        predictor.predict_array(np.zeros((3, 5, 6, 7), np.float32), (1.0, 1.0, 1.0))
