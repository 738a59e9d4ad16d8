"""Training reads patches, not volumes: CaseStore slices the box each patch needs from the blosc2 arrays on disk.
The batches are the ones the whole-volume path (sample_patch on load_case's arrays) gives, padding at the borders
included, and reading patches from a large case allocates a few patches' worth of memory, not the volume."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from segpipe.preprocessing.case import sample_class_locations
from segpipe.preprocessing.store import load_case, write_case
from segpipe.training.data import FOREGROUND_FRACTION, CaseStore, batch_rng, make_batch
from segpipe.training.sampling import sample_patch


def _write(folder: Path, case_id: str, shape, patch, seed: int) -> None:
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(1, *shape)).astype(np.float32)
    seg = np.zeros(shape, np.int8)
    lo = [n // 3 for n in shape]
    seg[lo[0]:lo[0] + max(1, shape[0] // 4), lo[1]:lo[1] + 5, lo[2]:lo[2] + 4] = 1
    seg[-1, -3:, -2:] = 2  # foreground in a corner: centred patches reach past the borders
    seg = seg[None]
    props = {"plan_hash": "sha256:test", "class_locations": sample_class_locations(seg[0], seed)}
    write_case(folder, case_id, data, seg, props, patch)


def _whole_volume_batch(folder: Path, ids: list[str], index: int, seed: int, batch_size: int, patch) -> dict:
    """The batch as made before patch reading: whole arrays in memory, then sample_patch (no augmentation)."""
    rng = batch_rng(seed, index, 0)
    n_plain = round(batch_size * (1 - FOREGROUND_FRACTION))
    data, seg = [], []
    for b in range(batch_size):
        arr, lab, props = load_case(folder, ids[int(rng.integers(len(ids)))])
        d, s = sample_patch(arr, lab, props["class_locations"], list(patch), force_fg=b >= n_plain, rng=rng)
        data.append(d)
        seg.append(s)
    return {"data": np.stack(data), "seg": np.stack(seg).astype(np.int16)}


@pytest.mark.parametrize("patch, shapes", [
    ([16, 24, 16], [(20, 30, 25), (12, 18, 40), (40, 50, 35)]),  # smaller than the patch on some axes: padded
    ([24, 32], [(5, 40, 50), (1, 20, 60), (3, 24, 32)]),         # 2D configuration: one-slice boxes
])
def test_batches_read_by_patch_equal_the_whole_volume_ones(tmp_path: Path, patch, shapes):
    ids = [f"c{i}" for i in range(len(shapes))]
    for i, (cid, shape) in enumerate(zip(ids, shapes)):
        _write(tmp_path, cid, shape, patch, seed=i)
    store = CaseStore(tmp_path, ids, max_open=2)
    for index in range(12):
        got = make_batch(store, index, seed=5, batch_size=3, patch=patch, augment=False)
        ref = _whole_volume_batch(tmp_path, ids, index, seed=5, batch_size=3, patch=patch)
        assert got["data"].shape == (3, 1, *patch) and got["seg"].shape == (3, 1, *patch)
        assert np.array_equal(got["data"], ref["data"]) and np.array_equal(got["seg"], ref["seg"])
    assert len(store._open) <= 2  # open files bounded
    assert (make_batch(store, 3, 5, 3, patch, augment=True)["data"]
            == make_batch(CaseStore(tmp_path, ids), 3, 5, 3, patch, augment=True)["data"]).all()


BIG = (256, 256, 256)  # 64 MB of float32
PATCH = [64, 96, 96]   # 2.4 MB


@pytest.fixture(scope="module")
def big_case(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("big")
    _write(folder, "big", BIG, PATCH, seed=0)  # noise: every chunk is stored nearly uncompressed
    return folder


def test_reading_patches_does_not_allocate_the_volume(big_case: Path):
    """What numpy allocates (tracemalloc) while patches are read, borders included: the patch, not the volume."""
    volume, patch_bytes = int(np.prod(BIG)) * 4, int(np.prod(PATCH)) * 4
    store = CaseStore(big_case, ["big"])
    rng = np.random.default_rng(0)
    boxes = [[int(rng.integers(-p // 2, n - p // 2)) for n, p in zip(BIG, PATCH)] for _ in range(20)]
    store.read_patch("big", boxes[0], PATCH)  # opens the case
    tracemalloc.start()
    try:
        for lower in boxes:
            data, seg = store.read_patch("big", lower, PATCH)
            del data, seg
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # a patch (and its label) inside the image; at the borders also the part inside, copied into the padded patch
    assert peak < 2.5 * patch_bytes < volume / 8, f"peak {peak / 1e6:.1f} MB reading {patch_bytes / 1e6:.1f} MB patches"


def test_reading_patches_keeps_the_resident_memory_bounded(big_case: Path):
    """Resident memory, which also counts blosc2's own (C) buffers: peak growth over 40 patch reads (borders
    included), measured in a fresh process (the peak is reset after start-up where Linux allows it)."""
    script = textwrap.dedent(f"""
        import numpy as np
        from segpipe.training.data import CaseStore

        def status(key):
            return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024

        store = CaseStore({str(big_case)!r}, ["big"])
        rng = np.random.default_rng(0)
        boxes = [[int(rng.integers(-p // 2, n - p // 2)) for n, p in zip({BIG!r}, {PATCH!r})] for _ in range(40)]
        store.read_patch("big", boxes[0], {PATCH!r})
        try:
            open("/proc/self/clear_refs", "w").write("5")  # resets the peak (VmHWM) to the current RSS
        except OSError:
            pass
        base = status("VmRSS")
        for lower in boxes:
            data, seg = store.read_patch("big", lower, {PATCH!r})
            del data, seg
        print(status("VmHWM") - base)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    growth = int(out.stdout.split()[-1])
    volume = int(np.prod(BIG)) * 4
    assert growth < volume / 4, f"RSS grew by {growth / 1e6:.1f} MB reading patches of a {volume / 1e6:.0f} MB volume"
