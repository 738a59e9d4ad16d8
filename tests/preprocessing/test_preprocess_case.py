from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import hippo_file, make_hc18_like
from fixtures.plans import make_configuration

from segpipe.io.images import Geometry, read_image
from segpipe.planning.plans import Configuration
from segpipe.preprocessing.case import DUMMY_2D_SPACING, preprocess_case, sample_class_locations
from segpipe.preprocessing.cropping import bbox_of, nonzero_mask
from segpipe.preprocessing.resampling import new_shape

RESAMPLING = {"image_order": 3, "label_order": 1, "label_mode": "one-hot", "anisotropy_threshold": 3.0,
              "coarse_axis_order": 0}
IDENTITY = np.eye(3).ravel().tolist()


def _config(spacing, use_mask=False, scheme="zscore", name=None) -> Configuration:
    return make_configuration(spacing, [{"channel": "MRI", "scheme": scheme, "use_mask": use_mask}], name=name,
                              resampling=RESAMPLING)


def _hippo(case="hippocampus_001"):
    img, geo = read_image(hippo_file(case))
    lab, _ = read_image(hippo_file(case, "labelsTr"))
    return img[None].astype(np.float32), np.rint(lab).astype(np.int16), geo


def _check_locations(seg: np.ndarray, locations: dict, n_max: int = 10_000):
    present = [int(v) for v in np.unique(seg) if v > 0]
    assert sorted(int(k) for k in locations) == present
    for key, coords in locations.items():
        coords = np.asarray(coords)
        assert coords.ndim == 2 and coords.shape[1] == 3
        assert np.all(seg[tuple(coords.T)] == int(key))
        assert len(coords) == min(n_max, int(np.sum(seg == int(key))))
        assert len(np.unique(coords, axis=0)) == len(coords)


def test_real_hippocampus_case_resampled_to_new_spacing():
    data, label, geo = _hippo()
    target = [1.5, 0.8, 1.2]
    out, seg, props = preprocess_case(data, label, geo, _config(target), seed=3, case_id="h1")
    box = bbox_of(nonzero_mask(data))
    after_crop = [b - a for a, b in box]
    expected = new_shape(after_crop, geo.spacing, target)
    assert out.shape == (1, *expected) and out.dtype == np.float32
    assert seg.shape == (1, *expected) and seg.dtype == np.int8
    assert set(np.unique(seg)) <= {-1, 0, 1, 2} and {1, 2} <= set(np.unique(seg))
    assert props["case"] == "h1" and props["ndim"] == 3 and props["config"] == "3d_fullres"
    assert props["crop_bbox"] == box and props["shape_before_crop"] == list(data.shape[1:])
    assert props["shape_after_crop"] == after_crop and props["shape_after_resampling"] == expected
    assert props["spacing"] == list(geo.spacing) and props["target_spacing"] == target
    assert props["geometry"] == geo.to_dict()
    _check_locations(seg[0], props["class_locations"])
    json.dumps(props)  # JSON-ready
    # per-case z-score over the whole crop (before resampling): roughly mean 0, std 1 afterwards
    assert abs(float(out.mean())) < 0.1 and abs(float(out.std()) - 1) < 0.1
    # foreground volume in mm^3 is kept by resampling
    for v in (1, 2):
        before = np.sum(label == v) * np.prod(geo.spacing)
        assert np.sum(seg == v) * np.prod(target) == pytest.approx(before, rel=0.1)


def test_same_spacing_keeps_the_label_exactly_and_is_deterministic():
    data, label, geo = _hippo("hippocampus_003")
    cfg = _config(geo.spacing)
    out, seg, props = preprocess_case(data, label, geo, cfg, seed=7)
    assert "case" not in props
    box = props["crop_bbox"]
    cropped = label[tuple(slice(a, b) for a, b in box)]
    kept = seg[0] != -1
    assert np.array_equal(seg[0][kept], cropped[kept]) and np.all(cropped[~kept] == 0)
    out2, seg2, props2 = preprocess_case(data, label, geo, cfg, seed=7)
    assert np.array_equal(out, out2) and np.array_equal(seg, seg2) and props == props2


def test_outside_mask_background_becomes_minus_one_only_where_label_was_zero():
    shape = (24, 26, 28)
    zz, yy, xx = np.indices(shape)
    ball = (zz - 12) ** 2 + (yy - 13) ** 2 + (xx - 14) ** 2 <= 81   # nonzero region: a ball of radius 9
    rng = np.random.default_rng(0)
    data = np.zeros((1, *shape), np.float32)
    data[0][ball] = rng.normal(100, 10, ball.sum()) + 1000
    label = np.zeros(shape, np.int16)
    label[10:15, 11:16, 12:17] = 1                                   # inside the ball
    label[4, 5, 6] = 2                                                # outside the ball, inside its box
    label[0, 0, 0] = 2                                                # outside the box: cropped away
    geo = Geometry(shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(IDENTITY))
    out, seg, props = preprocess_case(data, label, geo, _config([1.0, 1.0, 1.0], use_mask=True))
    box = props["crop_bbox"]
    assert box == [[3, 22], [4, 23], [5, 24]]
    sl = tuple(slice(a, b) for a, b in box)
    m, lab = ball[sl], label[sl]
    s = seg[0]
    assert np.all(s[~m & (lab == 0)] == -1)                           # outside-mask background
    assert np.all(s[m] == lab[m]) and not np.any(s[m] == -1)          # inside: untouched, no -1
    assert s[4 - 3, 5 - 4, 6 - 5] == 2                                # outside-mask foreground stays
    # use_mask z-score: mean 0 / std 1 inside, 0 outside
    assert np.all(out[0][~m] == 0)
    assert abs(float(out[0][m].mean())) < 1e-4 and abs(float(out[0][m].std()) - 1) < 1e-3
    _check_locations(s, props["class_locations"])
    assert props["class_locations"]["2"] == [[1, 1, 1]]


def test_prediction_case_without_label():
    data, _, geo = _hippo()
    out, seg, props = preprocess_case(data, None, geo, _config([2.0, 2.0, 2.0], name="3d_lowres"))
    assert seg is None and props["class_locations"] == {} and out.ndim == 4


def test_2d_fetal_case_becomes_a_single_slice_3d_case(tmp_path):
    hc18 = make_hc18_like(tmp_path / "hc18", ["000_HC"])  # a 540x800 frame, RGB 0/255 head mask
    img, geo = read_image(hc18.image_files["000_HC"][0])
    mask, _ = read_image(hc18.label_files["000_HC"])
    mask = mask[0] if mask.ndim == 3 else mask
    label = (mask > 127).astype(np.int16)
    geo = geo.with_spacing((0.0691358041432, 0.0691358041432))
    cfg = make_configuration([0.1, 0.1], [{"channel": "US", "scheme": "zscore", "use_mask": False}],
                             resampling=RESAMPLING)
    out, seg, props = preprocess_case(img[None].astype(np.float32), label, geo, cfg, seed=1)
    assert props["ndim"] == 2 and props["spacing"][0] == DUMMY_2D_SPACING
    assert props["target_spacing"] == [DUMMY_2D_SPACING, 0.1, 0.1]
    Y, X = new_shape(props["shape_after_crop"][1:], geo.spacing, [0.1, 0.1])
    assert out.shape == (1, 1, Y, X) and seg.shape == (1, 1, Y, X)
    assert props["shape_after_resampling"] == [1, Y, X] and props["shape_before_crop"] == [1, *img.shape]
    assert props["crop_bbox"][0] == [0, 1]
    _check_locations(seg[0], props["class_locations"])
    assert len(props["class_locations"]["1"]) == 10_000  # the head covers far more voxels: capped
    assert np.sum(seg == 1) * 0.1 ** 2 == pytest.approx(np.sum(label == 1) * 0.0691358041432 ** 2, rel=0.05)


def test_2d_config_on_3d_data_leaves_z_untouched():
    data, label, geo = _hippo()
    out, seg, props = preprocess_case(data, label, geo, _config([0.5, 0.5]))
    assert props["target_spacing"] == [geo.spacing[0], 0.5, 0.5]
    assert out.shape[1] == props["shape_after_crop"][0]
    assert out.shape[2:] == tuple(2 * s for s in props["shape_after_crop"][1:])


def test_class_location_sampling_is_capped_seeded_and_in_class():
    seg = np.zeros((20, 20, 20), np.int8)
    seg[2:18, 2:18, 2:18] = 1
    seg[5, 5, 5] = 3
    a = sample_class_locations(seg, seed=1, n_max=50)
    b = sample_class_locations(seg, seed=1, n_max=50)
    c = sample_class_locations(seg, seed=2, n_max=50)
    assert a == b and a != c
    assert len(a["1"]) == 50 and a["3"] == [[5, 5, 5]] and "0" not in a
    _check_locations(seg, a, n_max=50)
