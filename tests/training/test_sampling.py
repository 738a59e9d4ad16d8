import numpy as np

from segpipe.training.sampling import crop_padded, random_lower, sample_patch


def test_crop_padded_pads_images_with_0_and_labels_with_minus_1():
    arr = np.arange(2 * 4 * 5 * 6, dtype=np.float32).reshape(2, 4, 5, 6) + 1
    out = crop_padded(arr, [-2, 1, 3], [6, 3, 5], 0.0)
    assert out.shape == (2, 6, 3, 5)
    assert np.all(out[:, :2] == 0) and np.all(out[:, :, :, 3:] == 0)
    assert np.array_equal(out[:, 2:6, :, :3], arr[:, 0:4, 1:4, 3:6])
    lab = crop_padded(np.zeros((1, 4, 5, 6), np.int16), [-1, 0, 0], [4, 5, 6], -1)
    assert np.all(lab[:, 0] == -1) and np.all(lab[:, 1:] == 0)


def test_patch_position_stays_in_range_and_pads_small_images():
    rng = np.random.default_rng(0)
    for _ in range(50):
        lo = random_lower([30, 10], [20, 16], rng)
        assert 0 <= lo[0] <= 10 and -6 <= lo[1] <= 0


def test_forced_foreground_patch_contains_the_class():
    rng = np.random.default_rng(1)
    seg = np.zeros((1, 40, 60, 60), np.int16)
    seg[0, 30:33, 50:53, 5:8] = 2
    data = np.random.default_rng(2).normal(size=(1, 40, 60, 60)).astype(np.float32)
    locs = {"2": np.argwhere(seg[0] == 2).tolist()}
    for _ in range(10):
        d, s = sample_patch(data, seg, locs, [16, 16, 16], force_fg=True, rng=rng)
        assert d.shape == (1, 16, 16, 16) and (s == 2).any()
    d2, s2 = sample_patch(data, seg, locs, [24, 24], force_fg=True, rng=rng)
    assert d2.shape == (1, 24, 24) and (s2 == 2).any()
