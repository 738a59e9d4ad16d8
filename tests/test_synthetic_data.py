"""The synthetic data-set factory of tests/conftest.py writes what it says: checked with SimpleITK directly (not
through segpipe), so that tests built on it cannot agree with a segpipe axis-order bug by accident."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import make_hc18_like, make_synthetic_dataset


def test_nifti_files_hold_the_arrays_with_spacing_in_sitk_xyz_order(synthetic_dataset):
    ds = synthetic_dataset("nnunet", n_cases=2, shape=(5, 9, 7), spacing=(3.0, 0.8, 0.6), n_channels=2)
    for cid in ds.case_ids:
        lab = sitk.ReadImage(str(ds.label_files[cid]))
        assert lab.GetSize() == (7, 9, 5) and lab.GetSpacing() == pytest.approx((0.6, 0.8, 3.0))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(lab), ds.segmentations[cid])
        for c, path in enumerate(ds.image_files[cid]):
            np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), ds.images[cid][c])


def test_msd_channels_share_one_4d_file(synthetic_dataset):
    ds = synthetic_dataset("msd", n_cases=1, shape=(4, 6, 5), spacing=(2.0, 1.0, 0.5), n_channels=3)
    img = sitk.ReadImage(str(ds.image_files["case_000"][0]))
    assert img.GetDimension() == 4 and img.GetSize() == (5, 6, 4, 3)
    assert img.GetSpacing()[:3] == pytest.approx((0.5, 1.0, 2.0))
    dj = json.loads((ds.root / "dataset.json").read_text())
    assert dj["modality"] == {"0": "T1", "1": "T2", "2": "FLAIR"} and dj["numTraining"] == 1


@pytest.mark.parametrize("n_classes", [1, 3, 5])
def test_every_class_is_present_and_brighter_than_the_one_below(n_classes: int, synthetic_dataset):
    ds = synthetic_dataset("msd", n_cases=3, n_classes=n_classes, shape=(10, 16, 12))
    assert ds.labels == {"background": 0, **{f"class_{k}": k for k in range(1, n_classes + 1)}}
    for cid in ds.case_ids:
        seg, img = ds.segmentations[cid], ds.images[cid][0]
        assert set(np.unique(seg)) == set(range(n_classes + 1))
        means = [img[seg == k].mean() for k in range(n_classes + 1)]
        assert all(b - a > 10 for a, b in zip(means, means[1:]))  # learnable: classes differ by > 2 noise sd


def test_the_same_seed_writes_the_same_data_set(tmp_path: Path):
    a = make_synthetic_dataset(tmp_path / "a", "flat", n_cases=2, seed=4)
    b = make_synthetic_dataset(tmp_path / "b", "flat", n_cases=2, seed=4)
    c = make_synthetic_dataset(tmp_path / "c", "flat", n_cases=2, seed=5)
    for cid in a.case_ids:
        assert np.array_equal(a.images[cid], b.images[cid]) and np.array_equal(a.segmentations[cid],
                                                                                b.segmentations[cid])
    assert not np.array_equal(a.segmentations["case_000"], c.segmentations["case_000"])


def test_hc18_like_frames_look_like_hc18(tmp_path: Path):
    ds = make_hc18_like(tmp_path / "hc", ["010_HC", "010_2HC"])
    img = sitk.ReadImage(str(ds.image_files["010_HC"][0]))
    mask = sitk.ReadImage(str(ds.label_files["010_HC"]))
    assert img.GetSize() == (800, 540) and img.GetNumberOfComponentsPerPixel() == 1
    assert img.GetSpacing() == (1.0, 1.0)  # PNGs carry no pixel size: it is in the CSV
    assert mask.GetNumberOfComponentsPerPixel() == 3
    assert set(np.unique(sitk.GetArrayFromImage(mask))) == {0, 255}
    rows = ds.spacing_csv.read_text().splitlines()
    assert rows[0] == "filename,pixel size(mm),head circumference (mm)" and rows[1].startswith("010_HC.png,0.07")
    assert ds.label_files["010_2HC"].name == "010_2HC_Mask.png"


@pytest.mark.parametrize("kwargs", [{"layout": "dicom"}, {"layout": "msd", "ndim": 2}, {"shape": (4, 4)},
                                    {"layout": "flat", "ndim": 2, "spacing": (0.1, 0.2)},
                                    {"mask_255": True, "n_classes": 2}])
def test_impossible_requests_are_refused(kwargs: dict, tmp_path: Path):
    with pytest.raises(ValueError):
        make_synthetic_dataset(tmp_path / "x", **kwargs)
