"""Tests of segpipe/training/augmentation.py: the per-sample augmentation make_batch runs in the loader workers.

Cases are channels-first arrays ``(c, Z, Y, X)`` in memory read through the same ``crop_padded`` the blosc2
store uses (padding 0 for images, -1 for labels); patches are ``(z, y, x)`` or ``(y, x)`` voxels. Probabilities
are forced to 1 or 0 with monkeypatch where a test needs one transform to happen.
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import synthetic_image, synthetic_segmentation

from segpipe.training import augmentation as aug
from segpipe.training.sampling import crop_padded

PATCHES = {"2d": [16, 20], "3d": [8, 16, 12]}  # non-square on purpose
FLAT_3D = [4, 32, 32]  # z much thinner than y, x: in-plane ("dummy 2D") augmentation
SEEDS = range(12)
ALL_P = ["P_ROTATION", "P_SCALE", "P_NOISE", "P_BLUR", "P_BRIGHTNESS", "P_CONTRAST", "P_LOW_RES",
         "P_GAMMA_INVERTED", "P_GAMMA", "P_MIRROR"]


class Case:
    """A synthetic case ``(c, Z, Y, X)`` (labels 0/1/2 as blobs, images bright where the labels are) and a reader
    that records every box it is asked for."""

    def __init__(self, shape=(12, 40, 44), n_channels: int = 2, seed: int = 0, cascade: bool = False):
        rng = np.random.default_rng(seed)
        self.seg = synthetic_segmentation(shape, 2, rng, radius_fraction=(0.2, 0.3))[None].astype(np.int8)
        if cascade:  # a second label channel: the previous stage's segmentation
            self.seg = np.concatenate([self.seg, (self.seg > 0).astype(np.int8)])
        self.data = synthetic_image(self.seg[0], n_channels, 2, rng)
        self.boxes: list[tuple[list[int], list[int]]] = []

    def read(self, lower: list[int], size: list[int]) -> tuple[np.ndarray, np.ndarray]:
        self.boxes.append((list(lower), list(size)))
        seg = crop_padded(self.seg[:1], lower, size, -1)
        if len(self.seg) == 2:  # the store pads a previous stage's segmentation with background
            seg = np.concatenate([seg, crop_padded(self.seg[1:], lower, size, 0)])
        return crop_padded(self.data, lower, size, 0.0), seg


def _box(patch: list[int], lower=(2, 5, 6)) -> tuple[list[int], list[int]]:
    """A patch box inside Case(): 3 spatial axes, one slice thick for 2D patches (the slice in the middle of
    the 3D patch's range, where the blobs are)."""
    if len(patch) == 2:
        return [lower[0] + 4, *lower[1:]], [1, *patch]
    return list(lower), list(patch)


def _only(monkeypatch, **probabilities: float) -> None:
    """Every transform off except the ones given."""
    for name in ALL_P:
        monkeypatch.setattr(aug, name, probabilities.get(name, 0.0))


def _resample_at(case: Case, patch: list[int], matrix: np.ndarray, lower=(2, 5, 6)):
    lo, size = _box(patch, lower)
    box_lo, box_size = aug.source_box(lo, size, matrix)
    d, s = case.read(box_lo, box_size)
    if len(patch) == 2:
        d, s = d[:, 0], s[:, 0]
    n = len(patch)
    centre = [a - b + (k - 1) / 2 for a, b, k in zip(lo[-n:], box_lo[-n:], size[-n:])]
    return aug.resample(d, s, matrix, centre, patch), case.read(lo, size)


# --- the affine map: conventions checked against exact array operations ------------------------------------------

@pytest.mark.parametrize("dim", sorted(PATCHES))
def test_the_identity_map_gives_the_plain_patch(dim: str):
    patch = PATCHES[dim]
    (d, s), (ref_d, ref_s) = _resample_at(Case(), patch, np.eye(len(patch)))
    if dim == "2d":
        ref_d, ref_s = ref_d[:, 0], ref_s[:, 0]
    np.testing.assert_allclose(d, ref_d, rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(s, ref_s)


@pytest.mark.parametrize("dim", sorted(PATCHES))
def test_a_quarter_turn_in_the_yx_plane_is_rot90(dim: str):
    """matrix maps output offsets to source offsets over ``(z, y, x)``: this one sends the output's y to the
    source's x, which is numpy's rot90 by -1 in (y, x)."""
    patch = [PATCHES[dim][0], 14, 14] if dim == "3d" else [14, 14]
    m = np.eye(len(patch))
    m[-2:, -2:] = [[0, -1], [1, 0]]
    (d, s), (ref_d, ref_s) = _resample_at(Case(), patch, m)
    if dim == "2d":
        ref_d, ref_s = ref_d[:, 0], ref_s[:, 0]
    axes = (-2, -1)
    np.testing.assert_allclose(d, np.rot90(ref_d, -1, axes=axes), rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(s, np.rot90(ref_s, -1, axes=axes))


def test_scaling_by_two_samples_every_other_voxel():
    patch = [3, 5, 7]  # odd: the centre is a voxel, so every sample lands on one
    lower = (3, 10, 12)
    (d, s), _ = _resample_at(Case(), patch, 2 * np.eye(3), lower)
    case = Case()
    centre = [lo + (p - 1) // 2 for lo, p in zip(lower, patch)]
    window = tuple(slice(c - (p - 1), c + (p - 1) + 1, 2) for c, p in zip(centre, patch))
    np.testing.assert_allclose(d, case.data[(slice(None), *window)], rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(s, case.seg[(slice(None), *window)])


def test_outside_the_image_the_label_is_ignored_and_a_cascade_channel_is_background():
    case = Case(shape=(6, 20, 20), cascade=True)
    m = np.diag([1.0, 1.4, 1.4])  # a zoomed-out patch at the corner reaches past the borders
    (d, s), _ = _resample_at(case, [6, 16, 16], m, lower=(0, 0, 0))
    outside = d.sum(axis=0) == 0
    assert outside.any()
    assert (s[0][outside] == -1).all() and (s[1][outside] == 0).all()
    assert set(np.unique(s[0][~outside])) <= {0, 1, 2}


# --- random draws ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("patch", [PATCHES["2d"], PATCHES["3d"], FLAT_3D])
def test_draws_are_rotations_times_an_isotropic_scale_within_the_ranges(patch):
    rng = np.random.default_rng(0)
    draws = [aug.draw_spatial(patch, rng) for _ in range(400)]
    taken = [m for m in draws if m is not None]
    assert 0.25 < len(taken) / len(draws) < 0.48  # 1 - 0.8 * 0.8 = 0.36
    for m in taken:
        scales = np.sqrt((m ** 2).sum(axis=0))  # column norms: the scale of each axis
        inplane = scales[-2:]
        assert np.allclose(inplane, inplane[0]) and aug.SCALE[0] - 1e-9 <= inplane[0] <= aug.SCALE[1] + 1e-9
        if len(patch) == 3 and aug.in_plane_only(patch):
            np.testing.assert_array_equal(m[0], [1, 0, 0])  # nothing moves across slices
            np.testing.assert_array_equal(m[:, 0], [1, 0, 0])
        elif len(patch) == 3:
            rotation = m / scales[None, :]
            assert np.degrees(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1, 1))) < 3 * 30 + 1e-6


def test_flat_3d_patches_keep_every_slice_apart():
    """Labels constant along y and x, one value per slice: after in-plane rotation and scaling every slice still
    holds only its own value (or -1 outside)."""
    case = Case(shape=(10, 60, 60))
    case.seg[0] = np.arange(10, dtype=np.int8)[:, None, None] % 3
    rng = np.random.default_rng(1)
    for _ in range(20):
        m = None
        while m is None:
            m = aug.draw_spatial(FLAT_3D, rng)
        (d, s), _ = _resample_at(case, FLAT_3D, m, lower=(3, 14, 14))
        for z in range(FLAT_3D[0]):
            assert set(np.unique(s[0, z])) <= {(3 + z) % 3, -1}


@pytest.mark.parametrize("dim", ["2d", "3d", "flat"])
def test_spatial_samples_read_only_the_box_they_cover(monkeypatch, dim: str):
    patch = FLAT_3D if dim == "flat" else PATCHES[dim]
    _only(monkeypatch, P_ROTATION=1.0, P_SCALE=1.0)
    case = Case(shape=(12, 60, 60))
    lower, size = _box(patch, (4, 20, 22))
    rng = np.random.default_rng(3)
    for _ in range(10):
        case.boxes.clear()
        d, s = aug.spatial_sample(case.read, lower, size, patch, rng)
        assert d.shape == (2, *patch) and s.shape == (1, *patch)
        ((box_lo, box_size),) = case.boxes
        if dim == "2d":  # the slice is not touched
            assert (box_lo[0], box_size[0]) == (lower[0], 1)
        if dim == "flat":  # across slices only the interpolation margin
            assert (box_lo[0], box_size[0]) == (lower[0] - 1, size[0] + 2)
        # at most the patch scaled by 1.4 and turned by the largest angles, plus the interpolation margin
        limit = [int(np.ceil(1.4 * np.sqrt(len(patch)) * p)) + 3 for p in size[-len(patch):]]
        assert all(b <= lim for b, lim in zip(box_size[-len(patch):], limit)), (box_size, limit)
    _only(monkeypatch)  # no rotation or scaling: exactly the patch is read
    case.boxes.clear()
    aug.spatial_sample(case.read, lower, size, patch, rng)
    assert case.boxes == [(lower, size)]


@pytest.mark.parametrize("dim", sorted(PATCHES))
def test_rotation_and_scaling_move_the_label_with_its_image(monkeypatch, dim: str):
    _only(monkeypatch, P_ROTATION=1.0, P_SCALE=1.0)
    patch = PATCHES[dim]
    case = Case(shape=(12, 40, 44), n_channels=1)
    case.data = (case.seg > 0).astype(np.float32) * 100.0  # the image is the foreground, noise-free
    lower, size = _box(patch)
    plain = case.read(lower, size)[1]
    moved = 0
    for seed in SEEDS:
        d, s = aug.augmented_sample(case.read, lower, size, patch, np.random.default_rng(seed))
        image_fg, label_fg = d[0] > 50, s[0] > 0
        assert label_fg.any()
        dice = 2 * (image_fg & label_fg).sum() / (image_fg.sum() + label_fg.sum())
        assert dice > 0.9, (seed, dice)
        assert set(np.unique(s)) <= {-1, 0, 1, 2}
        moved += not np.array_equal(s, plain if dim == "3d" else plain[:, 0])
    assert moved >= len(SEEDS) // 2


@pytest.mark.parametrize("dim", sorted(PATCHES))
def test_the_same_generator_state_gives_the_same_sample_and_another_another(dim: str):
    patch = PATCHES[dim]
    lower, size = _box(patch)
    case = Case()
    runs = [aug.augmented_sample(case.read, lower, size, patch, np.random.default_rng(s)) for s in (5, 5, 6, 7, 8)]
    assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[0][1], runs[1][1])
    assert any(not np.array_equal(runs[0][0], r[0]) for r in runs[2:])
    for d, s in runs:
        assert d.dtype == np.float32 and s.dtype == np.int16 and np.isfinite(d).all()
        assert d.flags["C_CONTIGUOUS"] and s.flags["C_CONTIGUOUS"]


# --- intensity transforms and mirroring --------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["P_NOISE", "P_BLUR", "P_BRIGHTNESS", "P_CONTRAST", "P_LOW_RES",
                                  "P_GAMMA_INVERTED", "P_GAMMA"])
@pytest.mark.parametrize("dim", ["2d", "3d", "flat"])
def test_each_intensity_transform_changes_the_image_but_not_the_label(monkeypatch, name: str, dim: str):
    patch = FLAT_3D if dim == "flat" else PATCHES[dim]
    _only(monkeypatch, **{name: 1.0})
    monkeypatch.setattr(aug, "P_BLUR_CHANNEL", 1.0)
    monkeypatch.setattr(aug, "P_LOW_RES_CHANNEL", 1.0)
    case = Case(shape=(12, 40, 44))
    data, seg = case.read(*_box(patch))
    if dim == "2d":
        data, seg = data[:, 0], seg[:, 0]
    before = data.copy()
    for seed in range(4):
        d, s = aug.intensity_and_mirror(data, seg, np.random.default_rng(seed))
        np.testing.assert_array_equal(s, seg)
        np.testing.assert_array_equal(data, before)  # the input is not modified in place
        assert d.shape == data.shape and np.isfinite(d).all() and not np.allclose(d, data), seed
        if name in ("P_GAMMA", "P_GAMMA_INVERTED"):  # gamma keeps each channel's mean and spread
            np.testing.assert_allclose(d.mean(axis=tuple(range(1, d.ndim))),
                                       data.mean(axis=tuple(range(1, d.ndim))), rtol=1e-3, atol=1e-2)
        if name == "P_CONTRAST":  # contrast keeps each channel's range
            for c in range(d.shape[0]):
                assert d[c].min() >= data[c].min() - 1e-4 and d[c].max() <= data[c].max() + 1e-4


def test_low_resolution_leaves_the_slices_of_flat_patches_apart(monkeypatch):
    _only(monkeypatch, P_LOW_RES=1.0)
    monkeypatch.setattr(aug, "P_LOW_RES_CHANNEL", 1.0)
    data = np.zeros((1, *FLAT_3D), np.float32)
    data[0, 1] = 100.0  # one bright slice
    for seed in range(6):
        d, _ = aug.intensity_and_mirror(data, np.zeros((1, *FLAT_3D), np.int16), np.random.default_rng(seed))
        assert np.allclose(d[0, [0, 2, 3]], 0) and d[0, 1].mean() > 99


@pytest.mark.parametrize("dim", sorted(PATCHES))
def test_mirroring_flips_image_and_label_identically(monkeypatch, dim: str):
    _only(monkeypatch, P_MIRROR=0.5)
    patch = PATCHES[dim]
    case = Case(n_channels=1)
    seg = case.read(*_box(patch))[1]
    seg = seg[:, 0] if dim == "2d" else seg
    data = seg.astype(np.float32) * 10 + 1
    flipped = 0
    for seed in SEEDS:
        d, s = aug.intensity_and_mirror(data, seg, np.random.default_rng(seed))
        np.testing.assert_array_equal(d, s * 10.0 + 1.0)
        assert sorted(np.unique(s)) == sorted(np.unique(seg))
        flipped += not np.array_equal(s, seg)
    assert flipped > 0


def test_noise_has_nnunets_strength(monkeypatch):
    """nnU-Net draws the noise's standard deviation from (0, 0.1) (its "variance" range is used as the std)."""
    _only(monkeypatch, P_NOISE=1.0)
    data = np.zeros((1, 16, 32, 32), np.float32)
    stds = [float(aug.intensity_and_mirror(data, np.zeros((1, 16, 32, 32), np.int16),
                                           np.random.default_rng(s))[0].std()) for s in range(30)]
    assert max(stds) <= 0.101 and min(stds) < 0.03 and max(stds) > 0.07


def test_elongated_2d_patches_rotate_by_at_most_15_degrees():
    rng = np.random.default_rng(0)
    angles = []
    for _ in range(400):
        m = aug.draw_spatial([16, 40], rng)  # sides differ by more than 1.5x
        if m is not None:
            rot = m / np.sqrt((m ** 2).sum(axis=0))[None, :]
            angles.append(abs(np.degrees(np.arctan2(rot[1, 0], rot[0, 0]))))
    assert angles and max(angles) <= 15 + 1e-6 and max(angles) > 10
