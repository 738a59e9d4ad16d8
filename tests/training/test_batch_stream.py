"""The augmented batch stream is a pure function of (seed, batch index): the same batches, in the same order,
whether they are made in the training process or in 1 or 2 worker processes, and when resumed half-way."""
from __future__ import annotations

from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from segpipe.preprocessing.store import list_cases
from segpipe.training.data import BatchStream, make_loader


def _batches(folder: Path, workers: int, start: int = 0, n: int = 6) -> list[dict]:
    stream = BatchStream(folder, list_cases(folder), seed=3, batch_size=2, patch=[16, 24, 16], augment=True,
                         start=start, count=n)
    return [{k: np.asarray(v) for k, v in b.items()} for b in islice(iter(make_loader(stream, workers)), n)]


@pytest.fixture(scope="module")
def reference(tiny_ws_template: Path) -> tuple[Path, list[dict]]:
    folder = tiny_ws_template / "tiny" / "preprocessed" / "3d_fullres"
    return folder, _batches(folder, 0)


@pytest.mark.parametrize("workers", [1, 2])
def test_batches_do_not_depend_on_the_number_of_workers(reference, workers: int):
    folder, ref = reference
    got = _batches(folder, workers)
    assert len(got) == len(ref) == 6
    for a, b in zip(ref, got):
        assert a["data"].shape == (2, 1, 16, 24, 16) and a["seg"].shape == (2, 1, 16, 24, 16)
        assert np.array_equal(a["data"], b["data"]) and np.array_equal(a["seg"], b["seg"])
    assert not np.array_equal(ref[0]["data"], ref[1]["data"])  # and they are not all the same batch


def test_a_resumed_stream_continues_with_the_same_batches(reference):
    folder, ref = reference
    got = _batches(folder, 2, start=3, n=3)
    assert len(got) == len(ref[3:]) == 3
    for a, b in zip(ref[3:], got):
        assert np.array_equal(a["data"], b["data"]) and np.array_equal(a["seg"], b["seg"])
