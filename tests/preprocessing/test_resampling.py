from __future__ import annotations

import numpy as np
import pytest

from segpipe.preprocessing.resampling import coarse_axis, new_shape, resample_image, resample_label


def test_new_shape_rounds_per_axis_and_keeps_at_least_one_voxel():
    assert new_shape([10, 20, 30], [2.0, 1.0, 1.0], [1.0, 1.0, 1.0]) == [20, 20, 30]
    assert new_shape([35, 51, 35], [1.0, 1.0, 1.0], [1.5, 0.8, 1.2]) == [23, 64, 29]
    assert new_shape([1, 4], [999.0, 1.0], [999.0, 100.0]) == [1, 1]


def test_image_shapes_follow_new_shape_or_explicit_shape():
    data = np.random.default_rng(0).normal(size=(2, 9, 10, 11)).astype(np.float32)
    out = resample_image(data, [1.0, 1.0, 1.0], [0.7, 1.3, 2.0])
    assert out.shape == (2, *new_shape([9, 10, 11], [1, 1, 1], [0.7, 1.3, 2.0])) and out.dtype == np.float32
    assert resample_image(data, [1, 1, 1], [0.7, 1.3, 2.0], shape=[5, 6, 7]).shape == (2, 5, 6, 7)
    same = resample_image(data, [1, 1, 1], [1, 1, 1])  # same spacing: the data unchanged
    assert same.shape == data.shape and same.dtype == np.float32 and np.array_equal(same, data)
    as_int = resample_image(data.astype(np.int16), [1, 1, 1], [1, 1, 1])
    assert as_int.dtype == np.float32 and np.array_equal(as_int, data.astype(np.int16))


def _smooth(shape, spacing):
    # voxel centres in mm (grid_mode: voxel i covers [i, i+1) * spacing)
    z, y, x = [(np.arange(n) + 0.5) * s for n, s in zip(shape, spacing)]
    z, y, x = np.meshgrid(z, y, x, indexing="ij")
    return np.sin(2 * np.pi * z / 40.0) * np.cos(2 * np.pi * y / 50.0) + 0.02 * x


def test_order3_image_resampling_matches_a_smooth_function():
    src_sp, dst_sp = [2.0, 2.0, 2.0], [1.0, 1.0, 1.0]
    src = _smooth((20, 20, 20), src_sp)[None].astype(np.float32)
    out = resample_image(src, src_sp, dst_sp)
    assert out.shape == (1, 40, 40, 40)
    truth = _smooth((40, 40, 40), dst_sp)
    inner = (slice(None),) + (slice(4, -4),) * 3  # border voxels see the 'nearest' boundary extension
    err = np.abs(out - truth[None])[inner]
    assert err.max() < 5e-3, err.max()


def _blobs(shape):
    zz, yy, xx = np.indices(shape)
    lab = np.zeros(shape, np.int16)
    lab[(zz - 10) ** 2 + (yy - 12) ** 2 + (xx - 12) ** 2 <= 36] = 1
    lab[(zz - 20) ** 2 + (yy - 20) ** 2 + (xx - 22) ** 2 <= 25] = 2
    lab[:6] = -1
    return lab


@pytest.mark.parametrize("dst", [[0.5, 0.5, 0.5], [1.6, 1.3, 1.7]])
def test_label_resampling_keeps_values_and_volumes(dst):
    lab = _blobs((30, 32, 34))
    out = resample_label(lab, [1.0, 1.0, 1.0], dst)
    assert out.dtype == lab.dtype and out.shape == tuple(new_shape(lab.shape, [1, 1, 1], dst))
    assert set(np.unique(out)) == set(np.unique(lab))
    voxel = float(np.prod(dst))
    for v in (1, 2, -1):
        assert np.sum(out == v) * voxel == pytest.approx(np.sum(lab == v), rel=0.15)


def test_coarse_axis_decisions():
    assert coarse_axis([3.5, 1.0, 1.0], [1.0, 1.0, 1.0]) == 0
    assert coarse_axis([1.0, 1.0, 5.0], [1.0, 1.0, 1.0]) == 2
    assert coarse_axis([1.0, 1.0, 1.0], [1.0, 1.0, 1.0]) is None
    assert coarse_axis([2.9, 1.0, 1.0], [2.0, 1.0, 1.0]) is None  # ratio not over 3
    assert coarse_axis([1.0, 1.0, 1.0], [4.0, 1.0, 1.0]) == 0    # decided from the target spacing
    assert coarse_axis([4.0, 4.0, 1.0], [1.0, 1.0, 1.0]) is None  # two coarse axes: none is special
    assert coarse_axis([999.0, 0.5, 0.5], [999.0, 0.2, 0.2]) == 0  # 2D data made 3D
    assert coarse_axis([3.0, 1.0, 1.0], [1.0, 1.0, 1.0], threshold=2.0) == 0
    assert coarse_axis([3.0, 1.0, 1.0], [1.0, 1.0, 1.0], threshold=3.0) is None


def test_anisotropic_label_resampling_copies_slices_along_z():
    rng = np.random.default_rng(3)
    src = rng.integers(0, 3, size=(10, 16, 16)).astype(np.int16)  # every slice different: blending would show
    spacing = [3.5, 1.0, 1.0]
    assert coarse_axis(spacing, [1.0, 1.0, 1.0]) == 0
    out = resample_label(src, spacing, [1.0, 1.0, 1.0], shape=[35, 16, 16])
    assert out.shape == (35, 16, 16)
    # in-plane spacing is unchanged, so each output slice is an exact copy of one source slice, in order
    _copies_of(out, src)


def _copies_of(out: np.ndarray, src: np.ndarray) -> list[int]:
    """For each slice of ``out``, the index of the source slice it is an exact copy of (fails otherwise)."""
    picks = []
    for j in range(out.shape[0]):
        same = [k for k in range(src.shape[0]) if np.array_equal(out[j], src[k])]
        assert same, f"output slice {j} is no copy of any source slice"
        picks.append(same[0])
    assert picks == sorted(picks) and set(picks) == set(range(src.shape[0]))
    return picks


def test_3x1x1_to_1mm_copies_slices_when_z_counts_as_anisotropic():
    # nnU-Net's rule is 'ratio > threshold', so an exact 3x1x1 case is anisotropic only below threshold 3
    rng = np.random.default_rng(5)
    lab = rng.integers(0, 3, size=(8, 10, 10)).astype(np.int16)
    img = rng.normal(size=(1, 8, 10, 10)).astype(np.float32)
    sp, dst = [3.0, 1.0, 1.0], [1.0, 1.0, 1.0]
    assert coarse_axis(sp, dst, threshold=2.5) == 0 and coarse_axis(sp, dst) is None
    out = resample_label(lab, sp, dst, anisotropy_threshold=2.5)
    out_img = resample_image(img, sp, dst, anisotropy_threshold=2.5)
    assert out.shape == (24, 10, 10) and out_img.shape == (1, 24, 10, 10)
    assert _copies_of(out, lab) == [j // 3 for j in range(24)]
    assert _copies_of(out_img[0], img[0]) == [j // 3 for j in range(24)]
    # at the default threshold the image is interpolated along z (order 3): most slices are new
    smooth = resample_image(img, sp, dst)
    assert sum(any(np.array_equal(smooth[0, j], img[0, k]) for k in range(8)) for j in range(24)) <= 8


def test_anisotropic_resampling_changes_slices_only_in_plane():
    rng = np.random.default_rng(4)
    src = rng.integers(0, 3, size=(6, 12, 12)).astype(np.int16)
    img = rng.normal(size=(1, 6, 12, 12)).astype(np.float32)
    sp, dst = [3.6, 1.0, 1.0], [1.2, 0.5, 0.5]
    assert coarse_axis(sp, dst) == 0
    out = resample_label(src, sp, dst)
    out_img = resample_image(img, sp, dst)
    assert out.shape == (18, 24, 24) and out_img.shape == (1, 18, 24, 24)
    for k in range(6):
        alone = resample_label(src[k:k + 1], sp, dst, shape=[1, 24, 24])[0]
        alone_img = resample_image(img[:, k:k + 1], sp, dst, shape=[1, 24, 24])[0, 0]
        for j in range(3 * k, 3 * k + 3):
            assert np.array_equal(out[j], alone)
            np.testing.assert_allclose(out_img[0, j], alone_img, atol=1e-5)
