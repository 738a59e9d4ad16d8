"""Properties every registered normalization scheme (segpipe/preprocessing/normalization.py, NORMALIZERS) must
have; a newly registered scheme is tested here automatically.

A scheme is ``fn(channel, entry, mask) -> float32``: ``channel`` one spatial channel ``(z, y, x)`` or ``(y, x)``,
``entry`` its plan entry (a ChannelNormalization read from the plans.json entry: ``scheme``, ``use_mask``, ``clip``,
``mean``, ``std``), ``mask`` the case's nonzero mask (bool, same shape). With ``use_mask`` a scheme may only look
at the voxels inside the mask for its statistics; without it the mask plays no part.
"""
from __future__ import annotations

import numpy as np
import pytest

from segpipe.planning.plans import ChannelNormalization
from segpipe.preprocessing.normalization import NORMALIZERS, get_normalizer, normalize

SCHEMES = sorted(NORMALIZERS)
SHAPES = {"3d": (6, 9, 7), "2d": (11, 13)}  # (z, y, x) / (y, x) voxels
DTYPES = [np.float32, np.float64, np.int16, np.uint8]


def _entry(scheme: str, use_mask: bool) -> ChannelNormalization:
    """A full plan entry: every key a scheme may read (CT-like clip window and foreground statistics)."""
    return ChannelNormalization.from_json({"channel": "MRI", "scheme": scheme, "use_mask": use_mask,
                                           "clip": [10.0, 200.0], "mean": 90.0, "std": 35.0}, "normalization[0]")


def _case(shape: tuple[int, ...], dtype, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A channel with a bright ellipsoid on a darker background and its nonzero mask (the ellipsoid)."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape)
    centre = [(n - 1) / 2 for n in shape]
    mask = sum(((g - c) / (n / 3)) ** 2 for g, c, n in zip(grid, centre, shape)) <= 1.0
    x = np.where(mask, rng.normal(120, 20, shape), rng.normal(30, 5, shape))
    x = np.clip(x, 0, 250) if np.issubdtype(dtype, np.integer) else x
    return x.astype(dtype), mask


@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=[np.dtype(d).name for d in DTYPES])
@pytest.mark.parametrize("shape_id", sorted(SHAPES))
@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_gives_finite_float32_of_the_input_shape(scheme: str, shape_id: str, dtype, use_mask: bool):
    x, mask = _case(SHAPES[shape_id], dtype)
    original = x.copy()
    out = get_normalizer(scheme)(x, _entry(scheme, use_mask), mask)
    assert out.shape == x.shape and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert np.array_equal(x, original)  # the input is not changed in place


@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_is_finite_on_a_constant_channel_and_an_empty_mask(scheme: str, use_mask: bool):
    x = np.full(SHAPES["3d"], 7.0, np.float32)
    for mask in (np.ones(x.shape, bool), np.zeros(x.shape, bool)):
        out = get_normalizer(scheme)(x, _entry(scheme, use_mask), mask)
        assert out.shape == x.shape and out.dtype == np.float32 and np.isfinite(out).all()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_without_use_mask_the_mask_plays_no_part(scheme: str):
    x, mask = _case(SHAPES["3d"], np.float32)
    entry = _entry(scheme, use_mask=False)
    fn = get_normalizer(scheme)
    reference = fn(x, entry, mask)
    for other in (~mask, np.zeros_like(mask), np.ones_like(mask)):
        np.testing.assert_array_equal(fn(x, entry, other), reference)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_with_use_mask_voxels_outside_the_mask_do_not_change_those_inside(scheme: str):
    x, mask = _case(SHAPES["3d"], np.float32)
    entry = _entry(scheme, use_mask=True)
    fn = get_normalizer(scheme)
    changed = x.copy()
    changed[~mask] = np.random.default_rng(1).normal(-500, 300, int((~mask).sum()))
    np.testing.assert_allclose(fn(changed, entry, mask)[mask], fn(x, entry, mask)[mask], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_keeps_the_order_of_intensities_inside_the_clip_window(scheme: str):
    """Normalization rescales, it does not scramble: a brighter voxel (inside the clip window) stays brighter."""
    x = np.linspace(20.0, 190.0, 60, dtype=np.float32).reshape(3, 4, 5)
    out = get_normalizer(scheme)(x, _entry(scheme, use_mask=False), np.ones(x.shape, bool))
    assert np.all(np.diff(out.ravel()) > 0)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_normalize_applies_each_scheme_per_channel(scheme: str):
    """``normalize`` on a 2-channel case gives, per channel, what the scheme gives on that channel alone."""
    a, mask = _case(SHAPES["3d"], np.float32, seed=2)
    b, _ = _case(SHAPES["3d"], np.float32, seed=3)
    entries = [_entry(scheme, use_mask=True), _entry(scheme, use_mask=False)]
    out = normalize(np.stack([a, b]), entries, mask)
    assert out.shape == (2, *a.shape) and out.dtype == np.float32
    fn = get_normalizer(scheme)
    np.testing.assert_array_equal(out[0], fn(a, entries[0], mask))
    np.testing.assert_array_equal(out[1], fn(b, entries[1], mask))
