"""``segpipe select`` ensembles saved probabilities case by case and class by class (issue 12): the label maps are
identical to averaging the whole float32 arrays, and memory stays below one case's saved float16 probabilities.

Saved probabilities are ``(n_classes, *raw shape)``, e.g. ``(c, z, y, x)``, float16, in a compressed ``.npz``
(key ``probabilities``)."""
from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import segpipe.inference.export as export_module
from segpipe.evaluation.selection import candidate_configs, case_predictions
from segpipe.inference.export import (
    ProbabilitiesReader,
    ensemble_label_map,
    label_map,
    probabilities_path,
    save_probabilities_npz,
    write_prediction,
)
from segpipe.io.images import read_image

IDENTITY = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]


def old_ensemble(paths: list[Path]) -> np.ndarray:
    """select's ensembling before issue 12's streaming: whole arrays, float32, np.mean, argmax (the reference)."""
    return label_map(np.mean([np.load(p)["probabilities"].astype(np.float32) for p in paths], axis=0))


def random_probabilities(shape: tuple[int, ...], n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Probabilities ``(n_classes, *shape)`` summing to 1, with exact ties in the first slices (quarters)."""
    x = rng.random((n_classes, *shape)).astype(np.float32)
    x /= x.sum(axis=0, keepdims=True)
    x[:, :2] = np.round(x[:, :2] * 4) / 4
    return x


@pytest.mark.parametrize("shape,n_classes,n_configs", [((9, 11, 13), 4, 2), ((9, 11, 13), 3, 3), ((20, 17), 5, 3),
                                                       ((7, 5, 6), 2, 4), ((3, 4, 5), 300, 2)])
@pytest.mark.parametrize("slab_bytes", [64, 32 << 20])
def test_the_streamed_ensemble_equals_the_whole_array_mean(tmp_path, monkeypatch, shape, n_classes, n_configs,
                                                           slab_bytes):
    rng = np.random.default_rng(n_classes * 10 + n_configs)
    paths = []
    for k in range(n_configs):
        paths.append(tmp_path / f"cfg_{k}.npz")
        save_probabilities_npz(paths[-1], random_probabilities(shape, n_classes, rng))
    expected = old_ensemble(paths)
    monkeypatch.setattr(export_module, "SLAB_BYTES", slab_bytes)  # one slice per slab, or whole classes
    got = ensemble_label_map(paths)
    assert got.dtype == expected.dtype and got.shape == shape
    assert np.array_equal(got, expected)


def test_a_reader_streams_what_np_load_reads(tmp_path):
    probs = random_probabilities((6, 7, 8), 3, np.random.default_rng(0))
    path = tmp_path / "p.npz"
    save_probabilities_npz(path, probs)
    whole = np.load(path)["probabilities"]
    with ProbabilitiesReader(path) as r:
        assert r.shape == whole.shape and r.dtype == np.float16
        parts = [r.read((1, 7, 8)) for _ in range(3 * 6)]
        with pytest.raises(ValueError, match="past the end"):
            r.read((1,))
    assert np.array_equal(np.concatenate(parts).reshape(whole.shape), whole)
    # files segpipe never writes (Fortran order, np.savez_compressed's own) are read too, loaded whole
    np.savez_compressed(tmp_path / "f.npz", probabilities=np.asfortranarray(whole))
    np.savez_compressed(tmp_path / "c.npz", probabilities=whole)
    for name in ("f.npz", "c.npz"):
        with ProbabilitiesReader(tmp_path / name) as r:
            assert np.array_equal(r.read(whole.shape), whole)


def test_select_ensembles_as_before(tmp_path):
    """case_predictions (what select scores) gives the old label maps: each configuration's file, and the
    ensembles' argmax of the mean."""
    rng = np.random.default_rng(3)
    shape = (8, 12, 10)
    geo = {"shape": list(shape), "spacing": [1.0, 1.0, 1.0], "origin": [0.0] * 3, "direction": IDENTITY}
    done: dict[str, dict[str, Path]] = {}
    for name in ("a", "b", "c"):
        done[name] = {}
        for cid in ("x", "y"):
            out = tmp_path / name / f"{cid}.nii.gz"
            write_prediction(random_probabilities(shape, 3, rng), geo, out, save_probabilities=True)
            done[name][cid] = out
    candidates = candidate_configs(done, ["x", "y"])
    assert list(candidates) == ["a", "b", "c", "ensemble(a+b)", "ensemble(a+c)", "ensemble(b+c)",
                                "ensemble(a+b+c)"]
    for cid in ("x", "y"):
        preds = dict(case_predictions(done, cid, candidates))
        for name, configs in candidates.items():
            if len(configs) == 1:
                assert np.array_equal(preds[name], read_image(done[name][cid])[0])
            else:
                assert np.array_equal(preds[name], old_ensemble([probabilities_path(done[c][cid]) for c in configs]))


def test_ensembling_memory_stays_below_one_case_of_saved_probabilities(tmp_path, monkeypatch):
    """numpy's and Python's allocations (tracemalloc) while an ensemble of three configurations is made stay
    below half of one configuration's saved float16 probabilities of the case (the old way held three float32
    copies and their stacked mean: over six times that). The streamed peak is one float32 running maximum and
    one uint8 label map of the case (5 bytes a voxel, whatever the number of classes) and a few slabs."""
    n_classes, shape = 12, (40, 64, 64)
    rng = np.random.default_rng(4)
    paths = []
    for k in range(3):
        paths.append(tmp_path / f"cfg_{k}.npz")
        save_probabilities_npz(paths[-1], random_probabilities(shape, n_classes, rng))
    one_case_float16 = 2 * n_classes * int(np.prod(shape))
    monkeypatch.setattr(export_module, "SLAB_BYTES", 64 << 10)  # slabs small next to the case, as for a CT
    monkeypatch.setattr(export_module, "READ_PIECE_BYTES", 64 << 10)
    ensemble_label_map(paths)  # warm-up: zlib's and numpy's first allocations are not counted
    tracemalloc.start()
    try:
        ensemble_label_map(paths)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        old_ensemble(paths)
        _, old_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.5 * one_case_float16, (peak, one_case_float16)
    assert old_peak > 6 * one_case_float16, (old_peak, one_case_float16)
