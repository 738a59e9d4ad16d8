from pathlib import Path

import numpy as np
import pytest
from conftest import hippo_file, hippo_ids

from segpipe.errors import SegpipeError
from segpipe.io.images import Geometry, file_ending, read_image, write_image


def test_roundtrip_keeps_geometry_in_array_axis_order(tmp_path: Path):
    arr = np.random.default_rng(0).normal(size=(5, 6, 7)).astype(np.float32)
    geo = Geometry((5, 6, 7), (3.0, 0.5, 0.7), (10.0, -2.0, 4.5), (0, 1, 0, 1, 0, 0, 0, 0, -1))
    write_image(arr, geo, tmp_path / "x.nii.gz")
    back, g2 = read_image(tmp_path / "x.nii.gz")
    assert back.shape == (5, 6, 7) and np.allclose(back, arr)
    assert g2.spacing == pytest.approx(geo.spacing) and g2.origin == pytest.approx(geo.origin)
    assert g2.direction == pytest.approx(geo.direction) and not g2.mismatches(geo)


def test_real_hippocampus_case_shape_matches_readme():
    arr, geo = read_image(hippo_file(hippo_ids(1)[0]))
    assert arr.ndim == 3 and geo.spacing == pytest.approx((1.0, 1.0, 1.0))
    assert arr.shape == geo.shape


def test_truncated_file_error_names_the_file(tmp_path: Path):
    src = hippo_file(hippo_ids(1)[0])
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(src.read_bytes()[:300])
    with pytest.raises(SegpipeError) as e:
        read_image(bad)
    assert str(bad) in str(e.value) and "cannot read image" in str(e.value)


def test_mismatch_reports_each_difference():
    a = Geometry((4, 4), (1.0, 1.0), (0.0, 0.0), (1, 0, 0, 1))
    assert a.mismatches(Geometry((4, 5), (1.0, 1.0), (0.0, 0.0), (1, 0, 0, 1)))[0].startswith("shape")
    diff = a.mismatches(Geometry((4, 4), (1.1, 1.0), (0.5, 0.0), (1, 0, 0, 1)))
    assert [d.split()[0] for d in diff] == ["spacing", "origin"]
    assert not a.mismatches(Geometry((4, 4), (1.0000001, 1.0), (0.0, 0.0), (1, 0, 0, 1)))


def test_file_ending_treats_nii_gz_as_one():
    assert file_ending("a.b.nii.gz") == ".nii.gz" and file_ending("x.PNG") == ".png" and file_ending("x.txt") == ""
