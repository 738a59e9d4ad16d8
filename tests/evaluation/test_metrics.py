import numpy as np
import pytest

from segpipe.evaluation.metrics import case_metrics, overlap_metrics, surface_metrics
from segpipe.evaluation.postprocessing import apply_postprocessing, choose_postprocessing, keep_largest_foreground


def _cube(shape, lo, size, value=1):
    a = np.zeros(shape, np.int16)
    a[tuple(slice(start, start + size) for start in lo)] = value
    return a


def test_overlap_metrics_on_known_counts():
    ref = _cube((20, 20, 20), (5, 5, 5), 4)          # 64 voxels
    pred = _cube((20, 20, 20), (6, 5, 5), 4)         # 48 overlap
    m = overlap_metrics(pred, ref, 1, voxel_volume_mm3=2.0)
    assert m["tp"] == 48 and m["fp"] == 16 and m["fn"] == 16
    assert m["dice"] == pytest.approx(96 / 128) and m["iou"] == pytest.approx(48 / 80)
    assert m["volume_ref_mm3"] == 128.0


def test_empty_vs_empty_is_nan_and_flagged():
    z = np.zeros((5, 5), np.int16)
    m = case_metrics(z, z, {"background": 0, "a": 1}, (1.0, 1.0))["a"]
    assert np.isnan(m["dice"]) and m["empty_reference_and_prediction"] and np.isnan(m["hd95_mm"])
    one = case_metrics(_cube((5, 5), (1, 1), 2), z, {"background": 0, "a": 1}, (1.0, 1.0))["a"]
    assert one["dice"] == 0.0 and one["empty_reference"] and not one["empty_reference_and_prediction"]


def test_hd95_and_surface_dice_of_shifted_cubes_respect_spacing():
    ref = _cube((30, 30, 30), (10, 10, 10), 8)
    pred = _cube((30, 30, 30), (12, 10, 10), 8)      # shifted 2 voxels along z
    s = surface_metrics(pred, ref, 1, spacing=(1.0, 1.0, 1.0), tolerance_mm=1.0)
    assert s["hd95_mm"] == pytest.approx(2.0)
    s3 = surface_metrics(pred, ref, 1, spacing=(3.0, 1.0, 1.0), tolerance_mm=1.0)
    assert s3["hd95_mm"] == pytest.approx(6.0)
    assert 0 < s["surface_dice"] < 1
    assert surface_metrics(ref, ref, 1, (1.0, 1.0, 1.0))["surface_dice"] == 1.0
    assert surface_metrics(pred, ref, 1, (1.0, 1.0, 1.0), tolerance_mm=2.0)["surface_dice"] == 1.0


def test_postprocessing_kept_only_where_it_helps():
    ref = _cube((20, 20, 20), (2, 2, 2), 6)
    noisy = ref.copy()
    noisy[15:17, 15:17, 15:17] = 1                    # a spurious blob
    pairs = [(noisy, ref)] * 3
    choice = choose_postprocessing(pairs, {"background": 0, "organ": 1})
    assert choice["classes"] == ["organ"] and choice["dice_after"]["organ"] == 1.0
    assert np.array_equal(apply_postprocessing(noisy, choice, {"background": 0, "organ": 1}), ref)
    # two true components: removing one hurts, so nothing is kept
    two = ref.copy()
    two[15:18, 15:18, 15:18] = 1
    assert choose_postprocessing([(two, two)], {"background": 0, "organ": 1})["classes"] == []
    assert np.count_nonzero(keep_largest_foreground(two)) == 216


def test_summary_says_how_many_cases_each_mean_is_over():
    import numpy as np

    from segpipe.evaluation.evaluate import summarize
    from segpipe.evaluation.metrics import case_metrics

    ref = np.zeros((10, 10, 10), np.int32)
    ref[2:6, 2:6, 2:6] = 1
    hit, missed = ref.copy(), np.zeros_like(ref)
    per_case = {"a": case_metrics(hit, ref, {"background": 0, "x": 1}, (1.0, 1.0, 1.0), 1.0, True),
                "b": case_metrics(missed, ref, {"background": 0, "x": 1}, (1.0, 1.0, 1.0), 1.0, True)}
    m = summarize(per_case, {"background": 0, "x": 1})["mean"]["x"]
    assert m["n_cases"] == 2 and m["n_cases_per_metric"]["dice"] == 2
    assert m["dice"] == 0.5  # 1 and 0: the missed case counts in Dice
    # the missed case has no surface distance: mean HD95 is over the one case that has one, and says so
    assert np.isnan(per_case["b"]["x"]["hd95_mm"]) and m["n_cases_per_metric"]["hd95_mm"] == 1
