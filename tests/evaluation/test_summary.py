"""The one summary (segpipe/evaluation/summary.py): every mean says how many cases it is over, missed and
spurious structures are counted (not silently dropped from HD95), and selection's streamed counts give the
same choice and numbers as the in-memory computation it replaced."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from segpipe.evaluation.metrics import case_metrics, class_counts, record_from_counts
from segpipe.evaluation.postprocessing import (
    MIN_IMPROVEMENT,
    apply_postprocessing,
    choose_postprocessing,
    keep_largest_foreground,
    keep_largest_of_class,
)
from segpipe.evaluation.selection import select_from_files
from segpipe.evaluation.summary import OVERLAP_METRICS, SUMMARY_METRICS, summarize
from segpipe.inference.export import probabilities_path, write_prediction
from segpipe.io.images import Geometry

LABELS = {"background": 0, "a": 1, "b": 2}
SPACING = (2.0, 1.0, 1.0)  # (z, y, x) mm


def _cube(shape, lo, size, value=1, out=None):
    a = np.zeros(shape, np.int16) if out is None else out
    a[tuple(slice(s, s + size) for s in lo)] = value
    return a


def _rows():
    """Four cases of class 'a' (hit, missed, spurious, absent from both) and 'b' present and hit in all."""
    shape = (10, 12, 12)
    ref_a = _cube(shape, (2, 2, 2), 4)
    hit = {"ref": _cube(shape, (6, 7, 7), 3, 2, ref_a.copy()), "pred": _cube(shape, (6, 7, 7), 3, 2, ref_a.copy())}
    missed = {"ref": hit["ref"], "pred": _cube(shape, (6, 7, 7), 3, 2)}
    spurious = {"ref": _cube(shape, (6, 7, 7), 3, 2), "pred": hit["pred"]}
    absent = {"ref": _cube(shape, (6, 7, 7), 3, 2), "pred": _cube(shape, (6, 7, 7), 3, 2)}
    cases = {"hit": hit, "missed": missed, "spurious": spurious, "absent": absent}
    return {cid: case_metrics(c["pred"], c["ref"], LABELS, SPACING, 1.0, True) for cid, c in cases.items()}


def test_every_mean_states_how_many_cases_it_is_over():
    s = summarize(_rows(), LABELS)
    a, b = s["mean"]["a"], s["mean"]["b"]
    assert s["n_cases"] == 4 and a["n_cases"] == 4 and b["n_cases"] == 4
    assert set(a["n_cases_per_metric"]) == set(SUMMARY_METRICS)
    # Dice: hit 1, missed 0, spurious 0; the case absent from both has none
    assert a["dice"] == pytest.approx(1 / 3) and a["n_cases_per_metric"]["dice"] == 3 == a["n"]
    assert a["n_cases_per_metric"]["surface_dice"] == 3 and a["surface_dice"] == pytest.approx(1 / 3)
    assert b["dice"] == 1.0 and b["n_cases_per_metric"]["dice"] == 4
    assert s["foreground_mean_dice"] == pytest.approx((1 / 3 + 1) / 2) and s["foreground_mean_dice_n_classes"] == 2


def test_missed_and_spurious_structures_are_counted_not_dropped_from_hd95():
    rows = _rows()
    assert np.isnan(rows["missed"]["a"]["hd95_mm"]) and np.isnan(rows["spurious"]["a"]["hd95_mm"])
    a = summarize(rows, LABELS)["mean"]["a"]
    assert a["hd95_mm"] == 0.0 and a["n_cases_per_metric"]["hd95_mm"] == 1  # only the hit case has a distance
    assert a["n_missed"] == 1 and a["n_spurious"] == 1 and a["n_empty_both"] == 1
    assert a["n_cases"] == a["n_cases_per_metric"]["hd95_mm"] + a["n_missed"] + a["n_spurious"] + a["n_empty_both"]
    # precision is undefined when the prediction is empty, recall when the reference is: counted likewise
    assert a["n_cases_per_metric"]["precision"] == 2 and a["n_cases_per_metric"]["recall"] == 2


def test_class_empty_in_every_case_has_nan_means_and_leaves_the_foreground_mean():
    z = np.zeros((4, 5, 5), np.int16)
    b = _cube(z.shape, (1, 1, 1), 2, 2)
    s = summarize({"x": case_metrics(b, b, LABELS, SPACING), "y": case_metrics(z, z, LABELS, SPACING)}, LABELS)
    a = s["mean"]["a"]
    assert np.isnan(a["dice"]) and np.isnan(a["hd95_mm"]) and a["n_cases_per_metric"]["dice"] == 0
    assert a["n_empty_both"] == 2 and a["n_missed"] == 0 and a["n_spurious"] == 0
    assert s["mean"]["b"]["n_empty_both"] == 1 and s["mean"]["b"]["n_cases_per_metric"]["dice"] == 1
    assert s["foreground_mean_dice"] == 1.0 and s["foreground_mean_dice_n_classes"] == 1
    empty = summarize({}, LABELS)
    assert empty["n_cases"] == 0 and np.isnan(empty["foreground_mean_dice"])


def test_records_from_counts_match_records_from_arrays_and_the_old_dice_mean():
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(0, 3, (6, 7, 8)), rng.integers(0, 3, (6, 7, 8))) for _ in range(5)]
    from_arrays = {str(i): case_metrics(p, r, LABELS, SPACING, surface=False) for i, (p, r) in enumerate(pairs)}
    vox = float(np.prod(SPACING))
    from_counts = {str(i): record_from_counts(class_counts(p, r, LABELS), vox) for i, (p, r) in enumerate(pairs)}
    assert from_arrays.keys() == from_counts.keys()
    for k in from_arrays:
        assert from_arrays[k] == from_counts[k]
    s = summarize(from_counts, LABELS, OVERLAP_METRICS)
    assert s["mean"]["a"]["dice"] == _old_mean_dice(pairs, LABELS)["a"]  # bit for bit


def test_evaluate_validation_and_select_share_the_summary():
    import segpipe.evaluation.evaluate as evaluate
    import segpipe.evaluation.selection as selection
    import segpipe.training.validation as validation
    from segpipe.evaluation import summary

    assert evaluate.summarize is summary.summarize is validation.summarize is selection.summarize


# --- the in-memory computation that selection replaced, kept here as the reference ---------------------------

def _old_mean_dice(pairs, labels):
    out = {}
    for name, v in labels.items():
        if v == 0:
            continue
        vals = []
        for pred, ref in pairs:
            p, r = pred == v, ref == v
            tp = int(np.count_nonzero(p & r))
            fp, fn = int(np.count_nonzero(p)) - tp, int(np.count_nonzero(r)) - tp
            if tp + fp + fn:
                vals.append(2 * tp / (2 * tp + fp + fn))
        out[name] = float(np.mean(vals)) if vals else float("nan")
    return out


def _old_choose(pairs, labels):
    base = _old_mean_dice(pairs, labels)
    mean = lambda d: float(np.nanmean(list(d.values()))) if d else float("nan")  # noqa: E731
    choice = {"foreground": False, "classes": []}
    fg_pairs = [(keep_largest_foreground(p), r) for p, r in pairs]
    fg = _old_mean_dice(fg_pairs, labels)
    current_pairs, current = pairs, base
    if len([v for v in labels.values() if v > 0]) > 1 and mean(fg) > mean(base) + MIN_IMPROVEMENT:
        choice["foreground"] = True
        current_pairs, current = fg_pairs, fg
    for name, v in labels.items():
        if v == 0:
            continue
        trial_pairs = [(keep_largest_of_class(p, v), r) for p, r in current_pairs]
        trial = _old_mean_dice(trial_pairs, labels)
        if trial[name] > current[name] + MIN_IMPROVEMENT:
            choice["classes"].append(name)
            current_pairs, current = trial_pairs, trial
    return {**choice, "dice_before": base, "dice_after": current}


def _old_select(done, refs, labels):
    from segpipe.io.images import read_image

    table = lambda pairs: {"dice": (d := _old_mean_dice(pairs, labels)),  # noqa: E731
                           "foreground_mean_dice": float(np.nanmean(list(d.values())))}
    candidates, preds = {}, {}
    for c, files in done.items():
        preds[c] = {cid: read_image(p)[0] for cid, p in files.items()}
        candidates[c] = {"configs": [c], **table([(preds[c][k], refs[k]) for k in refs])}
    for r in range(2, len(done) + 1):
        for combo in itertools.combinations(sorted(done), r):
            ens = {k: np.argmax(np.mean([np.load(probabilities_path(done[c][k]))["probabilities"].astype(np.float32)
                                         for c in combo], axis=0), axis=0) for k in refs}
            name = "ensemble(" + "+".join(combo) + ")"
            preds[name] = ens
            candidates[name] = {"configs": list(combo), **table([(ens[k], refs[k]) for k in refs])}
    best = max(candidates, key=lambda n: candidates[n]["foreground_mean_dice"])
    pp = _old_choose([(preds[best][k], refs[k]) for k in refs], labels)
    final = table([(apply_postprocessing(preds[best][k], pp, labels), refs[k]) for k in refs])
    return {"candidates": candidates, "best": best, "pp": {"foreground": pp["foreground"], "classes": pp["classes"]},
            "cv_dice": final}


def _noisy_probabilities(ref: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Softmax of a one-hot reference plus noise: mostly right, with scattered wrong voxels and blobs."""
    logits = 3.0 * np.stack([ref == v for v in LABELS.values()]).astype(np.float32)
    logits += noise * rng.standard_normal(logits.shape).astype(np.float32)
    e = np.exp(logits - logits.max(0, keepdims=True))
    return e / e.sum(0, keepdims=True)


def _synthetic_cv(tmp_path: Path, n_cases: int = 5):
    rng = np.random.default_rng(42)
    shape = (8, 14, 14)
    geo = Geometry(shape, SPACING, (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    refs = {}
    for i in range(n_cases):
        ref = _cube(shape, (1, 2 + i % 3, 2), 5, 1)
        if i != 3:  # case 3 has no 'b': empty in the reference; elsewhere 'b' touches 'a'
            _cube(shape, (2, 3, 7), 4, 2, ref)
        refs[f"case{i}"] = ref
    done = {}
    for config, noise in (("cfg_a", 1.6), ("cfg_b", 2.0), ("cfg_c", 1.8)):
        folder = tmp_path / config
        folder.mkdir()
        done[config] = {}
        for cid, ref in refs.items():
            path = folder / f"{cid}.nii.gz"
            write_prediction(_noisy_probabilities(ref, rng, noise), geo, path, save_probabilities=True)
            done[config][cid] = path
    return done, refs


def test_streamed_selection_equals_the_in_memory_computation(tmp_path):
    done, refs = _synthetic_cv(tmp_path)
    reads = []

    def reference(cid):
        reads.append(cid)
        return refs[cid]

    sel = select_from_files(done, list(refs), reference, LABELS)
    old = _old_select(done, refs, LABELS)
    assert list(sel["candidates"]) == list(old["candidates"]) and len(sel["candidates"]) == 7
    for name, c in old["candidates"].items():
        assert sel["candidates"][name]["dice"] == c["dice"]  # bit for bit
        assert sel["candidates"][name]["foreground_mean_dice"] == c["foreground_mean_dice"]
        assert sel["candidates"][name]["configs"] == c["configs"]
    assert sel["best"] == old["best"] and sel["postprocessing"] == old["pp"]
    assert sel["cv_dice"]["dice"] == old["cv_dice"]["dice"]
    assert sel["cv_dice"]["foreground_mean_dice"] == old["cv_dice"]["foreground_mean_dice"]
    # the example exercises post-processing, and every mean says how many cases it is over
    assert sel["postprocessing"] == {"foreground": True, "classes": ["a", "b"]}
    assert sel["cv_dice"]["n_cases"] == 5 and sel["cv_dice"]["mean"]["b"]["n_cases_per_metric"]["dice"] == 5
    assert sel["cv_dice"]["mean"]["b"]["n_spurious"] + sel["cv_dice"]["mean"]["b"]["n_empty_both"] == 1
    # one pass over all candidates, one over the best: each reference is read twice, one case at a time
    assert reads == list(refs) * 2


@pytest.mark.parametrize("seed", range(6))
def test_postprocessing_from_counts_equals_the_array_computation(seed):
    rng = np.random.default_rng(seed)
    labels = {"background": 0, "a": 1, "b": 2, "c": 3} if seed % 2 else {"background": 0, "a": 1}
    pairs = []
    for _ in range(4):
        ref = np.zeros((6, 10, 10), np.int16)
        for v in list(labels.values())[1:]:
            if rng.random() < 0.8:
                lo = rng.integers(0, 5, 3)
                ref[lo[0]:lo[0] + 2, lo[1]:lo[1] + 4, lo[2]:lo[2] + 4] = v
        pred = ref.copy()
        noise = rng.random(ref.shape) < 0.03
        pred[noise] = rng.integers(0, len(labels), int(noise.sum()))
        pairs.append((pred, ref))
    new, old = choose_postprocessing(iter(pairs), labels), _old_choose(pairs, labels)
    assert new["foreground"] == old["foreground"] and new["classes"] == old["classes"]
    assert new["dice_before"] == pytest.approx(old["dice_before"], nan_ok=True, rel=0, abs=0)
    assert new["dice_after"] == pytest.approx(old["dice_after"], nan_ok=True, rel=0, abs=0)
