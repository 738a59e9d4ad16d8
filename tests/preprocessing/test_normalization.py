from __future__ import annotations

import numpy as np
import pytest

from segpipe.errors import SegpipeError
from segpipe.planning.plans import ChannelNormalization
from segpipe.preprocessing.normalization import NORMALIZERS, normalize, register


def _normalize(data: np.ndarray, entries: list[dict], mask: np.ndarray) -> np.ndarray:
    """``normalize`` with plan entries given as JSON objects (channel and use_mask default to "c" and false)."""
    parsed = [ChannelNormalization.from_json({"channel": "c", "use_mask": False, **e}, f"normalization[{i}]")
              for i, e in enumerate(entries)]
    return normalize(data, parsed, mask)


def _sphere(shape=(20, 24, 28), r=8.0) -> np.ndarray:
    zz, yy, xx = np.indices(shape)
    c = [(s - 1) / 2 for s in shape]
    return (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r


def test_zscore_with_mask_normalizes_inside_and_zeroes_outside():
    rng = np.random.default_rng(0)
    mask = _sphere()
    data = np.zeros((2,) + mask.shape, np.float32)
    data[0][mask] = rng.normal(300, 40, mask.sum())
    data[1][mask] = rng.normal(-5, 2, mask.sum())
    data[1][~mask] = 17.0  # outside voxels must not enter the statistics and must become 0
    out = _normalize(data, [{"scheme": "zscore", "use_mask": True}] * 2, mask)
    assert out.dtype == np.float32 and out.shape == data.shape
    for k in range(2):
        assert out[k][mask].mean() == pytest.approx(0, abs=1e-5)
        assert out[k][mask].std() == pytest.approx(1, abs=1e-4)
        assert np.all(out[k][~mask] == 0)
    # exact values: the statistics are the masked ones
    v = data[1][mask].astype(np.float64)
    np.testing.assert_allclose(out[1][mask], (v - v.mean()) / v.std(), rtol=1e-5, atol=1e-5)


def test_zscore_without_mask_uses_all_voxels():
    rng = np.random.default_rng(1)
    data = rng.normal(50, 7, (1, 10, 12, 14)).astype(np.float32)
    data[0, :2] = 0
    mask = data[0] != 0
    out = _normalize(data, [{"scheme": "zscore", "use_mask": False}], mask)
    assert out.mean() == pytest.approx(0, abs=1e-5) and out.std() == pytest.approx(1, abs=1e-4)
    assert np.all(out[0, :2] != 0)  # background voxels are normalized too, not zeroed


def test_zscore_constant_image_uses_std_floor():
    data = np.full((1, 4, 4, 4), 3.0, np.float32)
    out = _normalize(data, [{"scheme": "zscore", "use_mask": False}], np.ones((4, 4, 4), bool))
    assert np.all(np.isfinite(out)) and np.all(out == 0)


def test_ct_clips_then_scales_exactly():
    data = np.array([[[[-2000.0, -100.0, 0.0, 40.0, 300.0, 3000.0]]]], np.float32)
    entry = {"scheme": "ct", "clip": [-100.0, 300.0], "mean": 50.0, "std": 25.0, "use_mask": False}
    out = _normalize(data, [entry], np.ones(data.shape[1:], bool))
    expected = (np.clip(data, -100, 300) - 50.0) / 25.0
    np.testing.assert_array_equal(out, expected.astype(np.float32))
    assert out.dtype == np.float32


def test_none_and_mixed_channels():
    rng = np.random.default_rng(2)
    data = rng.normal(0, 100, (2, 5, 6, 7)).astype(np.float32)
    schemes = [{"scheme": "none"}, {"scheme": "ct", "clip": [-50, 50], "mean": 0.0, "std": 0.0}]
    out = _normalize(data, schemes, np.ones(data.shape[1:], bool))
    np.testing.assert_array_equal(out[0], data[0])
    # std 0 is floored at 1e-8 instead of dividing by zero
    np.testing.assert_allclose(out[1], np.clip(data[1], -50, 50) / 1e-8, rtol=1e-6)


def test_unknown_scheme_names_the_closest_one():
    data = np.zeros((1, 2, 2, 2), np.float32)
    with pytest.raises(SegpipeError) as e:
        _normalize(data, [{"scheme": "zscor", "use_mask": False}], np.ones((2, 2, 2), bool))
    assert "zscor" in str(e.value) and "did you mean 'zscore'" in str(e.value)


def test_channel_count_mismatch_is_reported():
    with pytest.raises(SegpipeError, match="2 channel"):
        _normalize(np.zeros((1, 2, 2, 2), np.float32), [{"scheme": "none"}] * 2, np.ones((2, 2, 2), bool))


def test_register_adds_a_scheme():
    @register("times_two_test")
    def _double(x, entry, mask):
        return (x * 2).astype(np.float32)

    try:
        out = _normalize(np.ones((1, 2, 2, 2), np.float32), [{"scheme": "times_two_test"}], np.ones((2, 2, 2), bool))
        assert np.all(out == 2)
    finally:
        NORMALIZERS.pop("times_two_test")
