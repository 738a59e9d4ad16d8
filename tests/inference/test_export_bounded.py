"""Tests of the bounded-memory export (issue 12): the torch, class-by-class and slab-by-slab export against the
scipy computation it replaced (2D and 3D, isotropic and anisotropic, ensembles), its memory as a behaviour
(peak resident memory and numpy's traced peak, not timings), the compressed float16 probabilities and their use
by ``segpipe select``, and predict's hand-over of probabilities to export workers."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import hippo_file, hippo_ids
from scipy.ndimage import gaussian_filter

import segpipe.inference.predict as predict_module
from segpipe.cli import main
from segpipe.evaluation.selection import candidate_configs, case_predictions
from segpipe.inference.export import (
    PLANNER_DEFAULT_RESAMPLING,
    export_label_map,
    export_prediction,
    label_map,
    probabilities_path,
    probabilities_to_original,
    write_prediction,
)
from segpipe.inference.resample_torch import SlabResampler, axis_map, cubic_axis_map, kernel, probability_orders
from segpipe.io.images import read_image
from segpipe.planning.plans import Resampling
from segpipe.preprocessing.resampling import new_shape, resample_image

IDENTITY = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]


def old_probabilities_to_original(probs: np.ndarray, props: dict) -> np.ndarray:
    """The export before issue 12 (scipy, all classes at once, renormalised): the reference."""
    probs = np.asarray(probs, dtype=np.float32)
    crop_shape = [int(s) for s in props["shape_after_crop"]]
    out = resample_image(probs, props["target_spacing"], props["spacing"], shape=crop_shape, order=1)
    total = out.sum(axis=0, keepdims=True)
    np.maximum(total, np.float32(1e-8), out=total)
    out /= total
    full = np.zeros((probs.shape[0],) + tuple(props["shape_before_crop"]), dtype=np.float32)
    full[0] = 1.0
    full[(slice(None),) + tuple(slice(a, b) for a, b in props["crop_bbox"])] = out
    return full[:, 0] if props["ndim"] == 2 else full


def smooth_probabilities(shape, n_classes: int, seed: int, sharpness: float = 8.0) -> np.ndarray:
    """Softmax of smooth random fields: blob-like classes with soft boundaries, as a network's output."""
    rng = np.random.default_rng(seed)
    fields = np.stack([gaussian_filter(rng.standard_normal(shape), sigma=[min(2.0, s / 4) for s in shape])
                       for _ in range(n_classes)])
    fields *= sharpness / max(1e-6, fields.std())
    fields -= fields.max(axis=0, keepdims=True)
    e = np.exp(fields)
    return (e / e.sum(axis=0, keepdims=True)).astype(np.float32)


# name: raw shape (array order), ndim, raw spacing, target spacing, crop box (internal 3D)
CASES = {
    "3d_isotropic": ((30, 40, 36), 3, (1.0, 1.0, 1.0), (1.3, 0.8, 1.1), [[2, 28], [3, 37], [0, 36]]),
    "3d_anisotropic_z": ((12, 48, 44), 3, (5.0, 0.8, 0.8), (4.0, 1.2, 1.2), [[1, 12], [4, 45], [2, 40]]),
    "3d_anisotropic_y": ((26, 9, 30), 3, (1.0, 4.0, 1.0), (1.2, 3.0, 1.2), [[0, 26], [1, 9], [3, 30]]),
    "3d_downsampled_z": ((40, 20, 20), 3, (0.8, 1.0, 1.0), (1.0, 1.0, 1.0), [[0, 40], [0, 20], [0, 20]]),
    "2d": ((50, 64), 2, (0.5, 0.5), (0.8, 0.7), [[0, 1], [5, 47], [0, 61]]),
}
MODERATE = ((48, 160, 160), 3, (1.0, 1.0, 1.0), (1.5, 1.2, 1.2), [[2, 46], [10, 150], [5, 155]])


def make_case(name: str, n_classes: int = 4, seed: int = 0, target=None):
    raw_shape, ndim, spacing, tgt, box = MODERATE if name == "moderate" else CASES[name]
    target = list(target or tgt)
    full = list(raw_shape) if ndim == 3 else [1, *raw_shape]
    sp = list(spacing) if ndim == 3 else [999.0, *spacing]
    tg = list(target) if ndim == 3 else [999.0, *target]
    crop = [b - a for a, b in box]
    shape = new_shape(crop, sp, tg)
    probs = smooth_probabilities(shape, n_classes, seed)
    geo = {"shape": list(raw_shape), "spacing": list(spacing), "origin": [0.0] * ndim,
           "direction": IDENTITY if ndim == 3 else [1.0, 0.0, 0.0, 1.0]}
    props = {"case": name, "ndim": ndim, "geometry": geo, "crop_bbox": box, "shape_before_crop": full,
             "shape_after_crop": crop, "spacing": sp, "target_spacing": tg, "shape_after_resampling": shape,
             "class_locations": {}, "config": "c"}
    return probs, props


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b))


# --- the torch resampling ---------------------------------------------------------------------------------

@pytest.mark.parametrize("n_in,n_out", [(10, 10), (250, 300), (300, 250), (7, 28), (64, 3), (1, 5), (5, 1)])
@pytest.mark.parametrize("order", [0, 1])
def test_axis_map_matches_scipy_zoom_1d(n_in, n_out, order):
    from scipy.ndimage import zoom
    x = np.random.default_rng(n_in * 7 + n_out).random(n_in)
    ref = zoom(x, n_out / n_in, order=order, mode="nearest", grid_mode=True, prefilter=False)
    assert ref.shape == (n_out,)
    i0, i1, w = axis_map(n_in, n_out, order)
    got = x[i0] if w is None else x[i0] * (1 - w) + x[i1] * w
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(CASES))
def test_resampler_matches_scipy(name):
    probs, props = make_case(name, n_classes=3)
    orders = probability_orders(props["target_spacing"], props["spacing"], PLANNER_DEFAULT_RESAMPLING)
    expected_coarse = {"3d_anisotropic_z": (0, 1, 1), "3d_anisotropic_y": (1, 0, 1), "2d": (0, 1, 1)}
    assert orders == expected_coarse.get(name, (1, 1, 1))
    ref = resample_image(probs, props["target_spacing"], props["spacing"], shape=props["shape_after_crop"], order=1)
    r = SlabResampler(probs.shape[1:], props["shape_after_crop"], orders)
    for rows in (1, 3, 1000):  # any slab size gives the same result
        got = r(torch.from_numpy(probs), slab=rows).numpy()
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6)


# --- equivalence with the old export ----------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CASES))
def test_export_matches_the_old_scipy_export(name, tmp_path):
    probs, props = make_case(name, n_classes=5, seed=1)
    old = old_probabilities_to_original(probs, props)
    old_seg = np.argmax(old, axis=0)
    raw_shape = tuple(props["geometry"]["shape"])
    assert old.shape[1:] == raw_shape

    full = probabilities_to_original(torch.from_numpy(probs), props)
    assert full.shape == old.shape and full.dtype == np.float32
    np.testing.assert_allclose(full, old, rtol=0, atol=1e-5)

    seg = export_prediction([(probs, props)])
    assert seg.shape == raw_shape and seg.dtype == np.uint8
    assert agreement(seg, old_seg) >= 0.999, agreement(seg, old_seg)

    ending = ".png" if props["ndim"] == 2 else ".nii.gz"
    out = tmp_path / f"{name}{ending}"
    seg_file = export_label_map(probs, props, out, save_probabilities=True)
    assert np.array_equal(seg_file, seg)
    back, geo = read_image(out)
    assert np.array_equal(back, seg) and geo.shape == raw_shape
    assert list(geo.spacing) == pytest.approx(props["geometry"]["spacing"])
    with np.load(probabilities_path(out)) as f:
        saved = f["probabilities"]
    assert saved.dtype == np.float16 and saved.shape == old.shape
    np.testing.assert_allclose(saved.astype(np.float32), old, rtol=0, atol=1e-3)


def test_ensemble_of_two_spacings_matches_the_old_mean(tmp_path):
    a, props_a = make_case("3d_anisotropic_z", n_classes=4, seed=2)
    b, props_b = make_case("3d_anisotropic_z", n_classes=4, seed=3, target=(5.0, 1.0, 1.0))
    assert a.shape != b.shape
    old = (old_probabilities_to_original(a, props_a) + old_probabilities_to_original(b, props_b)) / 2
    out = tmp_path / "case.nii.gz"
    seg = export_prediction([(torch.from_numpy(a), props_a), (b, props_b)], out, props_a["geometry"],
                            save_probabilities=True)
    assert agreement(seg, np.argmax(old, axis=0)) >= 0.999
    with np.load(probabilities_path(out)) as f:
        np.testing.assert_allclose(f["probabilities"].astype(np.float32), old, rtol=0, atol=1e-3)
    with pytest.raises(ValueError, match="crop"):
        bad = dict(props_b, crop_bbox=[[0, 11], [4, 45], [2, 40]], shape_after_crop=[11, 41, 38])
        export_prediction([(a, props_a), (b, bad)])


def test_write_prediction_of_raw_probabilities_is_unchanged(tmp_path):
    probs, props = make_case("3d_isotropic", n_classes=3, seed=4)
    full = old_probabilities_to_original(probs, props)
    out = tmp_path / "raw.nii.gz"
    seg = write_prediction(full, props["geometry"], out, save_probabilities=True)
    assert np.array_equal(seg, np.argmax(full, axis=0)) and seg.dtype == np.uint8
    assert np.array_equal(label_map(full), seg)
    with np.load(probabilities_path(out)) as f:
        assert np.array_equal(f["probabilities"], full.astype(np.float16))


def test_ties_go_to_the_first_class_and_outside_is_background():
    probs, props = make_case("3d_isotropic", n_classes=3, seed=5)
    probs[:] = 1.0 / 3  # all tied: the first class wins, as np.argmax has it
    seg = export_prediction([(probs, props)])
    assert (seg == 0).all()
    probs[:] = 0
    probs[2] = 1  # class 2 everywhere inside the crop box
    seg = export_prediction([(probs, props)])
    inside = np.zeros(seg.shape, bool)
    inside[tuple(slice(a, b) for a, b in props["crop_bbox"])] = True
    assert (seg[inside] == 2).all() and (seg[~inside] == 0).all()


# --- saved probabilities: compressed, float16 (c, z, y, x), read by select's ensembling ----------------------

def test_saved_probabilities_are_compressed_and_read_by_select(tmp_path):
    a, props = make_case("3d_anisotropic_z", n_classes=4, seed=6)
    b, _ = make_case("3d_anisotropic_z", n_classes=4, seed=7)
    cid = props["case"]
    done = {}
    for name, probs in (("cfg_a", a), ("cfg_b", b)):
        out = tmp_path / name / f"{cid}.nii.gz"
        export_label_map(probs, props, out, save_probabilities=True)
        done[name] = {cid: out}
        npz = probabilities_path(out)
        with zipfile.ZipFile(npz) as zf:
            (info,) = zf.infolist()
        assert info.filename == "probabilities.npy" and info.compress_type == zipfile.ZIP_DEFLATED
        raw_voxels = int(np.prod(props["geometry"]["shape"]))
        assert info.compress_size < info.file_size and info.file_size >= 4 * raw_voxels * 2
    candidates = candidate_configs(done, [cid])
    assert "ensemble(cfg_a+cfg_b)" in candidates
    preds = dict(case_predictions(done, cid, candidates))
    # select averages the saved float16 maps, as it did with the old export's float16 maps
    old = np.mean([old_probabilities_to_original(p, props).astype(np.float16).astype(np.float32) for p in (a, b)],
                  axis=0)
    assert preds["ensemble(cfg_a+cfg_b)"].shape == tuple(props["geometry"]["shape"])
    assert agreement(preds["ensemble(cfg_a+cfg_b)"], np.argmax(old, axis=0)) >= 0.999
    assert np.array_equal(preds["cfg_a"], read_image(done["cfg_a"][cid])[0])


# --- memory as a behaviour ----------------------------------------------------------------------------------

def test_export_numpy_peak_is_a_fraction_of_one_probability_array(tmp_path):
    """numpy's allocations (traced by tracemalloc) during an export with saved probabilities stay far below one
    float32 array of all classes at the raw shape (the old export made three to four of them)."""
    probs, props = make_case("moderate", n_classes=8, seed=8)
    one_copy = 4 * 8 * int(np.prod(props["geometry"]["shape"]))
    tracemalloc.start()
    try:
        export_prediction([(torch.from_numpy(probs), props)], tmp_path / "m.nii.gz", save_probabilities=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.5 * one_copy, (peak, one_copy)


MEMORY_SCRIPT = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    import numpy as np, torch
    from torch import nn
    torch.set_num_threads(1)
    import segpipe.inference.export as E
    from segpipe.inference.sliding_window import predict_sliding_window
    E.SLAB_BYTES = 2 << 20  # a moderately sized case: slabs small next to it, as they are next to a CT

    def status(key):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    def reset():
        Path("/proc/self/clear_refs").write_text("5")
        return status("VmRSS")

    out = {}
    n = 8
    shape = (48, 224, 224)  # the case at the configuration's spacing
    data = np.random.default_rng(0).standard_normal((1,) + shape).astype(np.float32)
    nets = []
    for seed in (0, 1):  # two folds
        conv = nn.Conv3d(1, n, 1)
        with torch.no_grad():
            conv.weight.normal_(generator=torch.Generator().manual_seed(seed))
        nets.append(conv)
    predict_sliding_window(nets, data[:, :24, :64, :64], (24, 64, 64), n, mirror_axes=(0, 1, 2), batch_size=2)
    base = reset()  # after a warm-up: torch's kernels and thread pools are loaded, not counted
    probs = predict_sliding_window(nets, data, (24, 64, 64), n, mirror_axes=(0, 1, 2), batch_size=2)
    out["sliding_window_growth"] = status("VmHWM") - base
    out["target_copy"] = probs.numel() * 4

    raw = (60, 256, 256)
    box = [[4, 56], [20, 236], [10, 246]]
    crop = [b - a for a, b in box]
    props = {"case": "m", "ndim": 3, "crop_bbox": box, "shape_before_crop": list(raw), "shape_after_crop": crop,
             "spacing": [1.3, 1.125, 1.18], "target_spacing": [1.95, 1.265625, 1.4455],
             "shape_after_resampling": list(shape), "class_locations": {}, "config": "c",
             "geometry": {"shape": list(raw), "spacing": [1.3, 1.125, 1.18], "origin": [0.0, 0.0, 0.0],
                          "direction": [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]}}
    small = dict(props, crop_bbox=[[0, 8], [0, 8], [0, 8]], shape_before_crop=[8, 8, 8], shape_after_crop=[8, 8, 8],
                 shape_after_resampling=[6, 6, 6], geometry=dict(props["geometry"], shape=[8, 8, 8]))
    E.export_prediction([(probs[:, :6, :6, :6], small)], Path(sys.argv[1]) / "warm.nii.gz", save_probabilities=True)
    base = reset()  # after a warm-up, as above
    seg = E.export_prediction([(probs, props)], Path(sys.argv[1]) / "m.nii.gz", save_probabilities=True)
    out["export_growth"] = status("VmHWM") - base
    out["raw_copy"] = n * int(np.prod(raw)) * 4
    out["labels"] = np.bincount(seg.ravel(), minlength=n).tolist()
    print(json.dumps(out))
''')


def _can_reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return Path("/proc/self/status").is_file()
    except OSError:
        return False


@pytest.mark.skipif(not _can_reset_peak_rss(), reason="needs Linux /proc/self/clear_refs to measure peak RSS")
def test_peak_memory_of_prediction_and_export(tmp_path):
    """In a fresh process: the sliding window (two folds, mirroring) grows the resident memory by less than two
    float32 arrays of all classes at the configuration's spacing, and the export with saved probabilities by
    less than one such array at the raw shape (N = 2 plus a margin would be the issue's bound; the old export
    made three to four raw-shape arrays)."""
    # a fixed mmap threshold: blocks of 1 MiB and more go back to the system when freed, so that the peak resident
    # memory counts what was live at once, not what glibc's heap kept of earlier phases
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(1 << 20))
    r = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                       timeout=600, env=env)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.strip().splitlines()[-1])
    assert m["sliding_window_growth"] < 2 * m["target_copy"], m
    assert m["export_growth"] < 1.0 * m["raw_copy"], m
    assert sum(m["labels"]) == 60 * 256 * 256


# --- the orders come from the plan's resampling (issue 12) ----------------------------------------------------

def plan_resampling(**changes) -> Resampling:
    """The planner's resampling entry with ``changes`` (as a hand-edited or plug-in plan would have it)."""
    return dataclasses.replace(PLANNER_DEFAULT_RESAMPLING, **changes)


def scipy_reference(probs: np.ndarray, props: dict, rs: Resampling) -> np.ndarray:
    """What preprocessing's scipy resampling with the plan's entry ``rs`` gives for probabilities, pasted into
    the raw shape (background outside the crop box): ``(n_classes, *raw shape)`` float32, not renormalised."""
    out = resample_image(np.asarray(probs, dtype=np.float32), props["target_spacing"], props["spacing"],
                         shape=props["shape_after_crop"], order=rs.label_order,
                         anisotropy_threshold=rs.anisotropy_threshold, axis_order=rs.coarse_axis_order)
    full = np.zeros((probs.shape[0],) + tuple(props["shape_before_crop"]), dtype=np.float32)
    full[0] = 1.0
    full[(slice(None),) + tuple(slice(a, b) for a, b in props["crop_bbox"])] = out
    return full[:, 0] if props["ndim"] == 2 else full


def test_the_planner_default_is_what_the_planner_writes():
    from segpipe.planning.planner import _resampling

    assert PLANNER_DEFAULT_RESAMPLING.to_json() == {k: v for k, v in _resampling([1.0, 1.0, 1.0]).items()
                                                   if k != "why"}


def test_probability_orders_follow_the_plan():
    _, props = make_case("3d_anisotropic_z")  # z 5.0 mm -> 4.0 mm, in-plane 0.8 -> 1.2 mm: z is coarse
    back = (props["target_spacing"], props["spacing"])
    assert probability_orders(*back, PLANNER_DEFAULT_RESAMPLING) == (0, 1, 1)
    assert probability_orders(*back, plan_resampling(anisotropy_threshold=10.0)) == (1, 1, 1)  # not anisotropic
    assert probability_orders(*back, plan_resampling(coarse_axis_order=1)) == (1, 1, 1)
    assert probability_orders(*back, plan_resampling(label_order=0)) == (0, 0, 0)
    assert probability_orders(*back, plan_resampling(label_order=3)) == (0, 3, 3)
    with pytest.raises(ValueError, match="order 6"):
        probability_orders(*back, plan_resampling(label_order=6))
    assert [kernel(o) for o in range(6)] == ["nearest", "linear", "cubic", "cubic", "cubic", "cubic"]


@pytest.mark.parametrize("changes", [{}, {"anisotropy_threshold": 10.0}, {"coarse_axis_order": 1},
                                     {"label_order": 0}])
def test_export_resamples_with_the_plans_orders(changes, tmp_path):
    """Export resamples back with the configuration's own orders: the same numbers as preprocessing's scipy
    resampling with that plan entry (and, for a changed entry, not the default's)."""
    probs, props = make_case("3d_anisotropic_z", n_classes=4, seed=11)
    rs = plan_resampling(**changes)
    ref = scipy_reference(probs, props, rs)
    full = probabilities_to_original(probs, props, rs)
    np.testing.assert_allclose(full, ref, rtol=0, atol=2e-6)
    if changes:
        default = probabilities_to_original(probs, props)
        assert np.abs(default - ref).max() > 1e-2  # the plan's entry matters
    out = tmp_path / "case.nii.gz"
    seg = export_label_map(probs, props, out, save_probabilities=True, resampling=rs)
    assert agreement(seg, np.argmax(ref, axis=0)) >= 0.999
    assert np.array_equal(seg, export_prediction([(probs, props)], resampling=[rs]))
    with np.load(probabilities_path(out)) as f:
        np.testing.assert_allclose(f["probabilities"].astype(np.float32), ref, rtol=0, atol=1e-3)


def test_an_ensemble_resamples_each_configuration_with_its_own_entry():
    a, props_a = make_case("3d_anisotropic_z", n_classes=3, seed=12)
    b, props_b = make_case("3d_anisotropic_z", n_classes=3, seed=13, target=(5.0, 1.0, 1.0))
    rs_a, rs_b = plan_resampling(label_order=0), plan_resampling(coarse_axis_order=1)
    full = np.mean([scipy_reference(a, props_a, rs_a), scipy_reference(b, props_b, rs_b)], axis=0)
    seg = export_prediction([(a, props_a), (b, props_b)], resampling=[rs_a, rs_b])
    assert agreement(seg, np.argmax(full, axis=0)) >= 0.999
    swapped = export_prediction([(a, props_a), (b, props_b)], resampling=[rs_b, rs_a])
    assert not np.array_equal(seg, swapped)
    with pytest.raises(ValueError, match="one per configuration"):
        export_prediction([(a, props_a), (b, props_b)], resampling=[rs_a])


def test_cubic_convolution_for_orders_above_one():
    """Orders 2 to 5 resample with cubic convolution: it interpolates, reproduces quadratics, does not depend
    on the slab size, and is closer to scipy's cubic spline than linear interpolation is."""
    idx, w = cubic_axis_map(10, 23)
    np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-12)
    assert idx.shape == (4, 23) and idx.min() >= 0 and idx.max() <= 9
    x = np.arange(10, dtype=np.float64)
    cc = (np.arange(23) + 0.5) * 10 / 23 - 0.5
    inner = (cc >= 1) & (cc <= 8)  # all 4 taps inside the array
    q = 0.3 * x ** 2 - 2 * x + 1
    np.testing.assert_allclose((q[idx] * w).sum(axis=0)[inner], (0.3 * cc ** 2 - 2 * cc + 1)[inner], atol=1e-9)
    same_idx, same_w = cubic_axis_map(7, 7)  # no resampling: the samples themselves
    np.testing.assert_allclose((x[:7][same_idx] * same_w).sum(axis=0), x[:7], atol=1e-12)

    from scipy.ndimage import zoom
    field = gaussian_filter(np.random.default_rng(14).standard_normal((20, 30, 25)), 3)
    field = (field / np.abs(field).max()).astype(np.float32)
    out = (30, 45, 20)
    factors = [o / i for o, i in zip(out, field.shape)]
    spline = zoom(field, factors, order=3, mode="nearest", grid_mode=True)
    linear = zoom(field, factors, order=1, mode="nearest", grid_mode=True)
    r = SlabResampler(field.shape, out, (3, 3, 3))
    got = r(torch.from_numpy(field)).numpy()
    np.testing.assert_allclose(r(torch.from_numpy(field), slab=4).numpy(), got, rtol=0, atol=1e-6)
    assert np.abs(got - spline).max() < 0.5 * np.abs(linear - spline).max()


def test_export_with_an_order_3_plan():
    probs, props = make_case("3d_isotropic", n_classes=3, seed=15)
    full = probabilities_to_original(probs, props, plan_resampling(label_order=3))
    np.testing.assert_allclose(full.sum(axis=0), 1.0, atol=1e-5)  # cubic weights sum to 1
    linear = probabilities_to_original(probs, props)
    assert 0 < np.abs(full - linear).max() < 0.5
    assert agreement(np.argmax(full, axis=0), np.argmax(linear, axis=0)) >= 0.99


def test_an_ensemble_without_resampling_leaves_its_inputs_alone():
    """Where a part needs no resampling at all (the case already at the configuration's spacing), its slabs are
    copies: averaging adds into them, never into the caller's (possibly read-only, memory-mapped) array."""
    probs, props = make_case("3d_isotropic", n_classes=3, seed=16, target=(1.0, 1.0, 1.0))
    assert list(probs.shape[1:]) == list(props["shape_after_crop"])
    other = smooth_probabilities(probs.shape[1:], 3, seed=17)
    a, b = probs.copy(), other.copy()
    seg = export_prediction([(a, props), (b, props)])
    assert np.array_equal(a, probs) and np.array_equal(b, other)
    full = np.zeros((3,) + tuple(props["shape_before_crop"]), dtype=np.float32)
    full[0] = 1
    full[(slice(None),) + tuple(slice(x, y) for x, y in props["crop_bbox"])] = (probs + other) / 2
    assert agreement(seg, np.argmax(full, axis=0)) >= 0.999


# --- predict hands large probabilities to export workers through a temporary file -----------------------------

def test_predict_with_export_workers_and_hand_over_files(tiny_one_fold: Path, tmp_path: Path, monkeypatch):
    img = tmp_path / "images"
    img.mkdir()
    ids = hippo_ids(10)[6:9]
    for cid in ids:
        shutil.copy(hippo_file(cid), img / f"{cid}_0000.nii.gz")
    common = ["predict", "-w", str(tiny_one_fold), "-i", str(img), "--config", "3d_fullres", "--folds", "0",
              "--no-mirror", "--save-probabilities"]
    assert main(common + ["-o", str(tmp_path / "one"), "--workers", "1"]) == 0

    handed = []
    real = predict_module._hand_over

    def spy(*args, **kwargs):
        path = real(*args, **kwargs)
        handed.append(path)
        return path

    monkeypatch.setattr(predict_module, "HANDOVER_BYTES", 0)
    monkeypatch.setattr(predict_module, "_hand_over", spy)
    assert main(common + ["-o", str(tmp_path / "two"), "--workers", "2"]) == 0
    assert len(handed) == len(ids) and all(p is not None for p in handed)
    assert not [p for p in handed if p.exists()]
    assert not list((tmp_path / "two").glob(".tmp-*"))
    for cid in ids:
        a, ga = read_image(tmp_path / "one" / f"{cid}.nii.gz")
        b, gb = read_image(tmp_path / "two" / f"{cid}.nii.gz")
        assert np.array_equal(a, b) and ga == gb
        with np.load(tmp_path / "one" / f"{cid}.npz") as fa, np.load(tmp_path / "two" / f"{cid}.npz") as fb:
            assert np.array_equal(fa["probabilities"], fb["probabilities"])
