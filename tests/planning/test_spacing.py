import numpy as np
import pytest

from segpipe.planning.spacing import resampled_shapes, target_spacing


def test_isotropic_median():
    sp, why = target_spacing([[1, 1, 1], [1.2, 0.8, 0.8], [0.8, 1.0, 1.0]], [[30, 40, 40]] * 3)
    assert sp == pytest.approx([1.0, 1.0, 1.0]) and "median" in why


def test_anisotropic_axis_uses_10th_percentile():
    spacings = [[5.0, 0.8, 0.8]] * 8 + [[2.5, 0.8, 0.8]] * 2
    shapes = [[20, 300, 300]] * 10
    sp, why = target_spacing(spacings, shapes)
    assert sp[0] == pytest.approx(np.percentile([s[0] for s in spacings], 10))
    assert sp[0] < 5.0 and "10th percentile" in why


def test_anisotropic_spacing_but_many_slices_keeps_median():
    # coarse axis, but as many voxels deep as the others: the rule needs both conditions
    sp, _ = target_spacing([[5.0, 0.8, 0.8]] * 8 + [[2.5, 0.8, 0.8]] * 2, [[300, 300, 300]] * 10)
    assert sp[0] == pytest.approx(5.0)


def test_10th_percentile_never_finer_than_other_axes():
    spacings = [[6.0, 1.0, 1.0]] * 8 + [[0.5, 1.0, 1.0]] * 2
    sp, _ = target_spacing(spacings, [[10, 200, 200]] * 10)
    assert sp[0] == pytest.approx(1.0 + 1e-5)


def test_resampled_shapes_round_per_axis():
    out = resampled_shapes([[2.0, 1.0], [1.0, 0.5]], [[10, 10], [11, 20]], [1.0, 1.0])
    assert out.tolist() == [[20, 10], [11, 10]]
