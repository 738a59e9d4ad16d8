"""The stream of training and validation batches.

Batch ``i`` is a pure function of ``(seed, i)``: it draws its cases, patches and augmentation from generators
seeded with both. So a run resumed at iteration ``i`` sees exactly the batches an uninterrupted run would, and
the result does not depend on how many worker processes build the batches. Workers are torch DataLoader
processes: one that dies raises an error in the trainer instead of hanging it.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from segpipe.errors import fail
from segpipe.training.augmentation import augmentation_patch_size, center_crop, training_transforms
from segpipe.training.sampling import sample_patch

FOREGROUND_FRACTION = 1 / 3  # the last third of every batch is centred on foreground


class CaseStore:
    """Preprocessed cases of one configuration, loaded on demand and kept in memory up to ``cache_bytes``."""

    def __init__(self, folder: Path, case_ids: list[str], cache_bytes: int = 2 << 30):
        self.folder, self.case_ids, self.cache_bytes = Path(folder), list(case_ids), cache_bytes
        self._cache: dict[str, tuple[np.ndarray, np.ndarray, dict]] = {}
        self._used = 0

    def get(self, case_id: str) -> tuple[np.ndarray, np.ndarray, dict]:
        if case_id in self._cache:
            return self._cache[case_id]
        from segpipe.preprocessing.store import load_case

        data, seg, props = load_case(self.folder, case_id)
        if seg is None:
            raise fail(f"preprocessed case '{case_id}' has no segmentation, which training needs",
                       "give the case a label and re-run `segpipe preprocess --force`",
                       file=self.folder / f"{case_id}.npz", case=case_id)
        item = (data, seg, props)
        size = data.nbytes + seg.nbytes
        if self._used + size <= self.cache_bytes:
            self._cache[case_id] = item
            self._used += size
        return item


def batch_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, index])


def make_batch(store: CaseStore, index: int, seed: int, batch_size: int, patch, augment: bool,
               stream: int = 0) -> dict[str, np.ndarray]:
    """Batch number ``index``: ``{"data": (b, c, *patch) float32, "seg": (b, 1, *patch) int16}``.

    ``stream`` separates independent streams (training 0, validation 1, DDP ranks offset further).
    """
    rng = batch_rng(seed, index, stream)
    crop = augmentation_patch_size(patch) if augment else list(patch)
    n_plain = round(batch_size * (1 - FOREGROUND_FRACTION))
    data, seg = [], []
    for b in range(batch_size):
        cid = store.case_ids[int(rng.integers(len(store.case_ids)))]
        arr, lab, props = store.get(cid)
        d, s = sample_patch(arr, lab, props["class_locations"], crop, force_fg=b >= n_plain, rng=rng)
        data.append(d)
        seg.append(s)
    batch = {"data": np.stack(data), "seg": np.stack(seg).astype(np.float32)}
    if augment:
        aug_seed = int(rng.integers(2 ** 31))
        np.random.seed(aug_seed)  # batchgenerators draws from numpy's global generator
        random.seed(aug_seed)
        batch = training_transforms(list(patch))(**batch)
    else:
        batch = center_crop(batch, patch)
    return {"data": batch["data"].astype(np.float32, copy=False),
            "seg": np.rint(batch["seg"]).astype(np.int16)}


class BatchStream(IterableDataset):
    """Batches ``start, start+1, ...`` (forever, or ``count`` of them); worker ``w`` of ``W`` makes the
    batches ``start + w + k*W``, and the DataLoader returns them in order."""

    def __init__(self, folder: Path, case_ids: list[str], seed: int, batch_size: int, patch, augment: bool,
                 start: int = 0, count: int | None = None, stream: int = 0):
        super().__init__()
        self.args = (Path(folder), list(case_ids))
        self.seed, self.batch_size, self.patch, self.augment = seed, batch_size, list(patch), augment
        self.start, self.count, self.stream = start, count, stream

    def __iter__(self):
        info = get_worker_info()
        wid, n = (info.id, info.num_workers) if info else (0, 1)
        store = CaseStore(*self.args)
        if info is not None:
            torch.set_num_threads(1)  # worker processes leave the cores to the training process
        i = self.start + wid
        end = None if self.count is None else self.start + self.count
        while end is None or i < end:
            yield make_batch(store, i, self.seed, self.batch_size, self.patch, self.augment, self.stream)
            i += n


def make_loader(stream: BatchStream, workers: int) -> DataLoader:
    """A DataLoader over ``stream`` with ``workers`` background processes (0: in the main process)."""
    return DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=torch.cuda.is_available(),
                      persistent_workers=False, prefetch_factor=2 if workers else None,
                      )
