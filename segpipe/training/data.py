"""The stream of training and validation batches.

Batch ``i`` is a pure function of ``(seed, i)``: it draws its cases, patches and augmentation from generators
seeded with both. So a run resumed at iteration ``i`` sees exactly the batches an uninterrupted run would, and
the result does not depend on how many worker processes build the batches. Workers are torch DataLoader
processes: one that dies raises an error in the trainer instead of hanging it.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from segpipe.errors import fail
from segpipe.preprocessing.cascade import one_hot_channels
from segpipe.training.augmentation import augmented_sample
from segpipe.training.sampling import crop_padded, patch_box

FOREGROUND_FRACTION = 1 / 3  # the last third of every batch is centred on foreground


@dataclass(frozen=True)
class CascadeInput:
    """A cascade stage's extra input: the previous stage's segmentations (``folder``, written by preprocess,
    read through :mod:`segpipe.preprocessing.store`) given to the network as one channel per ``foreground``
    label value, after the image channels."""
    folder: Path
    foreground: tuple[int, ...]


@dataclass(frozen=True)
class CaseInfo:
    """What sampling needs of a case, kept in memory: its array shape ``(c, Z, Y, X)`` and, per class, up to
    10,000 foreground voxel coordinates ``(z, y, x)`` as an ``(n, 3)`` int32 array (~120 kB per class)."""
    shape: tuple[int, ...]
    class_locations: dict[str, np.ndarray]


class UnknownLabel:
    """The label of an unlabelled case: reads as 0 everywhere inside the image (shape ``(1, Z, Y, X)``), so that
    :func:`~segpipe.training.sampling.crop_padded` marks only the padding outside the image (-1). Nothing is
    stored or allocated beyond the box read. Trainers that use unlabelled cases (``bcp``) replace the 0s by
    pseudo-labels; the 0s are never a loss target."""

    dtype = np.dtype(np.int8)

    def __init__(self, shape: tuple[int, ...]):
        self.shape = (1, *shape[1:])

    def __getitem__(self, index: tuple[slice, ...]) -> np.ndarray:
        return np.zeros([len(range(*sl.indices(n))) for sl, n in zip(index, self.shape)], dtype=self.dtype)


class CaseStore:
    """Preprocessed cases of one configuration, read patch by patch.

    Only :class:`CaseInfo` (shape, class locations) stays in memory per case; :meth:`read_patch` slices the box it
    is asked for from the case's blosc2 arrays on disk (decompressing only the blocks it overlaps), so a worker's
    memory does not grow with the data set or the image size. At most ``max_open`` cases are kept open (each holds
    a file descriptor), least recently used first out. With ``labelled=False`` the cases are unlabelled images
    (no segmentation on disk): their label reads as :class:`UnknownLabel` (0 inside the image, -1 in padding).
    """

    def __init__(self, folder: Path, case_ids: list[str], max_open: int = 16, cascade: CascadeInput | None = None,
                 labelled: bool = True):
        self.folder, self.case_ids, self.max_open = Path(folder), list(case_ids), max_open
        self.cascade, self.labelled = cascade, labelled
        if cascade is not None and not labelled:
            raise ValueError("unlabelled cases have no previous-stage segmentation (cascade)")
        self._info: dict[str, CaseInfo] = {}
        self._open: OrderedDict[str, tuple] = OrderedDict()

    def info(self, case_id: str) -> CaseInfo:
        if case_id not in self._info:
            from segpipe.preprocessing.store import load_properties

            props = load_properties(self.folder, case_id)
            locs = {k: np.asarray(v, dtype=np.int32).reshape(-1, 3) for k, v in props["class_locations"].items()}
            data = self._arrays(case_id)[0]
            self._info[case_id] = CaseInfo(tuple(int(n) for n in data.shape), locs)
        return self._info[case_id]

    def _arrays(self, case_id: str) -> tuple:
        """``(data, seg)`` blosc2 arrays of a case, opened on first use and kept in a small LRU."""
        if case_id in self._open:
            self._open.move_to_end(case_id)
            return self._open[case_id]
        from segpipe.preprocessing.store import open_case, seg_path

        data, seg = open_case(self.folder, case_id)
        if not self.labelled:
            self._open[case_id] = (data, UnknownLabel(tuple(data.shape)))
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)
            return self._open[case_id]
        if seg is None:
            raise fail(f"preprocessed case '{case_id}' has no segmentation, which training needs",
                       "give the case a label and re-run `segpipe preprocess --force`",
                       file=seg_path(self.folder, case_id), case=case_id)
        if self.cascade is not None:
            from segpipe.preprocessing.store import open_previous_stage

            self._open[case_id] = (data, seg, open_previous_stage(self.cascade.folder, case_id))
        else:
            self._open[case_id] = (data, seg)
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return self._open[case_id]

    def read_patch(self, case_id: str, lower: list[int], size: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The box ``lower .. lower + size`` (spatial ``(z, y, x)``) of a case: the network's input channels
        ``(c, *size)`` float32 and the label ``(1, *size)`` int8, padded with 0 and -1 where the box leaves the
        image. Reads only the box. For a cascade the label has a second channel, the previous stage's
        segmentation (padded with 0): it goes through spatial augmentation with the label and becomes input
        channels afterwards (:func:`move_previous_stage_to_data`)."""
        arrays = self._arrays(case_id)
        data, seg = crop_padded(arrays[0], lower, size, 0.0), crop_padded(arrays[1], lower, size, -1)
        if len(arrays) == 3:
            seg = np.concatenate([seg, crop_padded(arrays[2], lower, size, 0)])
        return data, seg


def batch_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, index])


def make_batch(store: CaseStore, index: int, seed: int, batch_size: int, patch, augment: bool,
               stream: int = 0) -> dict[str, np.ndarray]:
    """Batch number ``index``: ``{"data": (b, c, *patch) float32, "seg": (b, 1, *patch) int16, "keys": (b,) str}``
    (``keys``: the case id of each sample, for the loss's batch metadata).

    ``stream`` separates independent streams (training 0, validation 1, DDP ranks offset further). With
    ``augment`` each sample goes through :func:`segpipe.training.augmentation.augmented_sample`, which reads from
    disk only the box its rotated and scaled patch covers.
    """
    rng = batch_rng(seed, index, stream)
    n_plain = round(batch_size * (1 - FOREGROUND_FRACTION))
    data, seg, keys = [], [], []
    for b in range(batch_size):
        cid = store.case_ids[int(rng.integers(len(store.case_ids)))]
        keys.append(cid)
        info = store.info(cid)
        lower, size = patch_box(info.shape[1:], info.class_locations, patch, force_fg=b >= n_plain, rng=rng)
        read = partial(store.read_patch, cid)
        if augment:
            d, s = augmented_sample(read, lower, size, patch, rng)
        else:
            d, s = read(lower, size)
            if len(patch) == 2:  # a 2D patch is a box one slice thick
                d, s = d[:, 0], s[:, 0]
        data.append(d)
        seg.append(s)
    out: dict[str, np.ndarray] = {"data": np.stack(data).astype(np.float32, copy=False),
                                  "seg": np.stack(seg).astype(np.int16)}
    if store.cascade is not None:
        out = move_previous_stage_to_data(out, store.cascade.foreground)
    out["keys"] = np.array(keys, dtype=str)
    return out


def move_previous_stage_to_data(batch: dict[str, np.ndarray], foreground: Sequence[int]) -> dict[str, np.ndarray]:
    """A cascade batch: the label's second channel (the previous stage's segmentation, ``(b, 2, *patch)``)
    becomes one-hot input channels appended to ``data``: ``(b, c + len(foreground), *patch)``."""
    one_hot = np.moveaxis(one_hot_channels(batch["seg"][:, 1], foreground), 0, 1)  # (b, n_fg, *patch)
    return {"data": np.concatenate([batch["data"], one_hot], axis=1), "seg": batch["seg"][:, :1]}


class BatchStream(IterableDataset):
    """Batches ``start, start+1, ...`` (forever, or ``count`` of them); worker ``w`` of ``W`` makes the
    batches ``start + w + k*W``, and the DataLoader returns them in order."""

    def __init__(self, folder: Path, case_ids: list[str], seed: int, batch_size: int, patch, augment: bool,
                 start: int = 0, count: int | None = None, stream: int = 0, cascade: CascadeInput | None = None,
                 labelled: bool = True):
        super().__init__()
        self.args = (Path(folder), list(case_ids))
        self.cascade, self.labelled = cascade, labelled
        self.seed, self.batch_size, self.patch, self.augment = seed, batch_size, list(patch), augment
        self.start, self.count, self.stream = start, count, stream

    def __iter__(self):
        info = get_worker_info()
        wid, n = (info.id, info.num_workers) if info else (0, 1)
        store = CaseStore(*self.args, cascade=self.cascade, labelled=self.labelled)
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
