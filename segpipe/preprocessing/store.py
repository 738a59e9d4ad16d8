"""The preprocessed-case store: reading and writing ``preprocessed/<data_identifier>/`` (one writer: preprocess).

Per case, written in this order, each file atomically (temporary in the same folder, read back, fsync, rename):

- ``<case>_data.b2nd``: the image, (c, Z, Y, X) float32, channels first, array axis order;
- ``<case>_seg.b2nd``: the label map, (1, Z, Y, X) int8 (absent for cases without a label);
- ``<case>.json``: properties (geometry, crop box, shapes, spacings in mm, class locations, the hash of the plan
  entry the case was made with, and the storage format, ``"storage": "blosc2", "storage_version": 1``).

The arrays are blosc2 NDArrays (zstd level 3, no shuffle filter), chunked and blocked after the configuration's
patch size (:func:`blosc2_layout`), so that training reads one patch by decompressing only the blocks it touches
(:func:`open_case`) and never the whole volume. Names end in ``_data``/``_seg`` so that no case id can make one
case's file name another's (``a_seg.b2nd`` would be ambiguous between cases ``a`` and ``a_seg``).

A case is complete iff its json exists (written last), its data file exists, and the json names this storage
format; it belongs to the current plan iff its ``plan_hash`` matches. Folders written by segpipe before the
blosc2 store (``<case>.npz``) are refused by :func:`check_preprocessed` with the command that redoes them.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import blosc2
import numpy as np

from segpipe.errors import fail
from segpipe.io.atomic import atomic_path, atomic_write_text, verification_failed
from segpipe.io.jsonio import SCHEMA_VERSION, read_json
from segpipe.planning.plans import Configuration
from segpipe.records import config_hash

STORAGE = "blosc2"
STORAGE_VERSION = 1  # raise when the files change in a way this reader cannot read: old folders are then redone
DATA_SUFFIX = "_data.b2nd"
SEG_SUFFIX = "_seg.b2nd"
OLD_SUFFIX = ".npz"  # the store before blosc2 (storage version 0): refused with the fix, deleted when redone

# zstd level 3 without a shuffle filter. Measured on 20 hippocampus cases (float32 MRI) the data files take 1.9 MB
# against 3.6 MB with byte shuffle, and on a CT-like case of the scale benchmark (1x156x512x512, make_images.py)
# 8.9 MB against 13.9 MB (nnU-Net 2.8's lz4hc level 5: 11.7 MB); a 56x192x160 patch reads in 8.2 ms against 6.5
# ms. Level 1 compresses 50% less, level 8 writes 3x slower (docs/stages.md).
CODEC, CLEVEL, FILTER = blosc2.Codec.ZSTD, 3, blosc2.Filter.NOFILTER
BLOCK_BYTES = 32 * 1024         # a block (the unit blosc2 decompresses) fits a core's L1 data cache
MAX_CHUNK_BYTES = 256 * 1024 ** 2  # far below blosc2's 2 GiB limit on a chunk
WRITE_THREADS = 1               # preprocess runs cases in parallel processes: one compression thread each
PATCH_READ_THREADS = 1          # training reads patches in DataLoader workers: one decompression thread each


def storage_format() -> dict[str, Any]:
    """The storage format a case json records and the preprocess stage settings include."""
    return {"storage": STORAGE, "storage_version": STORAGE_VERSION}


def data_path(folder: str | Path, case_id: str) -> Path:
    return Path(folder) / f"{case_id}{DATA_SUFFIX}"


def seg_path(folder: str | Path, case_id: str) -> Path:
    return Path(folder) / f"{case_id}{SEG_SUFFIX}"


_STORAGE_RX = re.compile(rb'"storage":"([^"]+)","storage_version":(\d+)')


def case_storage(folder: Path, case_id: str) -> tuple[str, int] | None:
    """``(storage, version)`` recorded in a case's json (read from the file's first bytes only); None for a json
    without one (written before the blosc2 store) or no json."""
    try:
        with open(Path(folder) / f"{case_id}.json", "rb") as fh:
            m = _STORAGE_RX.search(fh.read(512))
    except OSError:
        return None
    return (m.group(1).decode(), int(m.group(2))) if m else None


def _is_complete(folder: Path, case_id: str) -> bool:
    return ((folder / f"{case_id}.json").is_file() and data_path(folder, case_id).is_file()
            and case_storage(folder, case_id) == (STORAGE, STORAGE_VERSION))


def plan_hash(cfg: Configuration) -> str:
    """The hash a preprocessed case records: of the configuration's preprocessing key (data identifier, spacing,
    normalization, resampling; see records.config_hash), so configurations sharing the data agree."""
    return config_hash(cfg.preprocessing_key())


_HASH_RX = re.compile(rb'"plan_hash":"([^"]+)"')


def case_plan_hash(folder: Path, case_id: str) -> str | None:
    """The plan hash recorded in a preprocessed case's properties (read from the file's first bytes only)."""
    try:
        with open(Path(folder) / f"{case_id}.json", "rb") as fh:
            m = _HASH_RX.search(fh.read(256))
    except OSError:
        return None
    return m.group(1).decode() if m else None


def stale_cases(folder: Path, case_ids: list[str], cfg: Configuration) -> tuple[list[str], list[str]]:
    """``(missing, other_plan)``: cases not (completely) preprocessed, and cases preprocessed with a plan
    other than ``cfg`` (e.g. re-planned while a preprocess was running)."""
    want = plan_hash(cfg)
    missing = [c for c in case_ids if not _is_complete(folder, c)]
    other = [c for c in case_ids if c not in missing and case_plan_hash(folder, c) != want]
    return missing, other


def old_format_cases(folder: Path, case_ids: list[str]) -> list[str]:
    """Cases whose files were written in a storage format this segpipe does not read: the npz store of earlier
    versions (``<case>.npz``), or a json that names another storage format or version."""
    out = []
    for c in case_ids:
        if not (folder / f"{c}.json").is_file():
            continue
        storage = case_storage(folder, c)
        if (storage is None and (folder / f"{c}{OLD_SUFFIX}").is_file()) or (
                storage is not None and storage != (STORAGE, STORAGE_VERSION)):
            out.append(c)
    return out


def check_preprocessed(folder: Path, case_ids: list[str], cfg: Configuration, config: str) -> None:
    """Refuse to use a preprocessed folder that lacks cases, was written in an older storage format or mixes
    plans (names the folder, the cases and the fix)."""
    old = old_format_cases(folder, case_ids)
    if old:
        kinds = {case_storage(folder, c) for c in old}
        what = ("as npz files (before the blosc2 store)" if kinds == {None} else
                f"in another storage format ({', '.join(sorted(f'{k[0]} v{k[1]}' for k in kinds if k))}; this "
                f"segpipe reads {STORAGE} v{STORAGE_VERSION})")
        raise fail(f"the preprocessed folder {folder} was written by an older segpipe {what}: {len(old)} of "
                   f"{len(case_ids)} case(s) (e.g. {old[:3]}) cannot be read",
                   f"preprocess it again: `segpipe preprocess --config {config}` redoes the folder "
                   f"(`segpipe preprocess --config {config} --force` to redo it whatever its state)", file=folder)
    missing, other = stale_cases(folder, case_ids, cfg)
    if missing:
        raise fail(f"{len(missing)} case(s) are not preprocessed for {config} (e.g. {missing[:3]})",
                   f"run `segpipe preprocess --config {config}` first", file=folder)
    if other:
        raise fail(f"{len(other)} preprocessed case(s) were made with another plan than the current plans.json "
                   f"(e.g. {other[:3]})", f"run `segpipe preprocess --config {config}` to redo them", file=folder)


def list_cases(folder: str | Path) -> list[str]:
    """Ids of the complete cases in a preprocessed folder (json, data file and this storage format), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.json") if not p.name.startswith(".") and _is_complete(folder, p.stem))


def _require_complete(folder: Path, case_id: str) -> None:
    if not _is_complete(folder, case_id):
        raise fail(f"preprocessed case '{case_id}' is missing, incomplete or in an older storage format",
                   "run `segpipe preprocess` (it continues where it stopped and redoes old cases)",
                   file=data_path(folder, case_id), case=case_id)


def load_properties(folder: str | Path, case_id: str) -> dict:
    """A complete preprocessed case's properties (its json), without reading its arrays."""
    folder = Path(folder)
    _require_complete(folder, case_id)
    return read_json(folder / f"{case_id}.json", kind="case_properties")


def open_case(folder: str | Path, case_id: str, threads: int = PATCH_READ_THREADS
              ) -> tuple[blosc2.NDArray, blosc2.NDArray | None]:
    """``(data, seg)`` of a preprocessed case as blosc2 arrays on disk (``seg`` None without a label), for
    reading parts: ``data[:, z0:z1, y0:y1, x0:x1]`` decompresses only the blocks of that box into a numpy array.

    Each open array holds a file descriptor until it is garbage collected: keep a bounded number open."""
    folder = Path(folder)
    _require_complete(folder, case_id)
    dparams = {"nthreads": threads}
    data = blosc2.open(str(data_path(folder, case_id)), mode="r", dparams=dparams)
    sp = seg_path(folder, case_id)
    seg = blosc2.open(str(sp), mode="r", dparams=dparams) if sp.is_file() else None
    return data, seg


def load_case(folder: str | Path, case_id: str) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """``(data, seg, props)`` of a preprocessed case as numpy arrays in memory (whole volumes, as validation
    needs them); ``seg`` is None for cases without a label. Training reads patches through :func:`open_case`."""
    props = load_properties(folder, case_id)
    data, seg = open_case(folder, case_id, threads=blosc2.ncores)
    return data[...], None if seg is None else seg[...], props


def blosc2_layout(shape: Sequence[int], patch: Sequence[int], itemsize: int, block_bytes: int = BLOCK_BYTES
                  ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(chunks, blocks)`` for an array ``shape`` (c, Z, Y, X) of ``itemsize`` bytes read in patches of
    ``patch`` voxels ((pz, py, px), or (py, px) for 2D configurations, whose patches are one slice thick).

    As nnU-Net (>= 2.6) does it: a block (the unit blosc2 decompresses) holds every channel and, starting from
    the patch rounded up to powers of two, is halved along the axis where it is largest relative to the patch
    until it fits ``block_bytes`` (the L1 cache); a chunk (the unit stored and indexed) is the patch rounded up to
    whole blocks, so one patch read touches a few chunks (at most 2 per axis) and only the blocks it overlaps.
    Both are clamped to the array's shape.
    """
    c, spatial = int(shape[0]), [int(n) for n in shape[1:]]
    want = [1, *patch] if len(patch) == 2 else list(patch)
    if len(spatial) != 3 or len(want) != 3:
        raise ValueError(f"expected a (c, z, y, x) array and a 2D or 3D patch, got {tuple(shape)} and {patch}")
    want = [max(1, min(int(p), n)) for p, n in zip(want, spatial)]
    block = [1 << max(0, math.ceil(math.log2(p))) for p in want]
    while c * math.prod(block) * itemsize > block_bytes and max(block) > 1:
        axis = max((i for i in range(3) if block[i] > 1), key=lambda i: (block[i] / want[i], -i))
        block[axis] //= 2
    block = [min(b, n) for b, n in zip(block, spatial)]
    chunk = [min(n, math.ceil(p / b) * b) for p, b, n in zip(want, block, spatial)]
    while c * math.prod(chunk) * itemsize > MAX_CHUNK_BYTES and any(ch > b for ch, b in zip(chunk, block)):
        axis = max((i for i in range(3) if chunk[i] > block[i]), key=lambda i: (chunk[i] / block[i], -i))
        chunk[axis] = math.ceil(chunk[axis] / 2 / block[axis]) * block[axis]
    return (c, *chunk), (c, *block)


def _write_array(path: Path, arr: np.ndarray, patch: Sequence[int]) -> None:
    """Write one array as a blosc2 NDArray, atomically: to a temporary beside ``path``, opened again and checked
    (shape, dtype, its last element) before it is renamed onto ``path``."""
    arr = np.ascontiguousarray(arr)
    chunks, blocks = blosc2_layout(arr.shape, patch, arr.dtype.itemsize)
    last = tuple(n - 1 for n in arr.shape)

    def verify(tmp: Path) -> None:
        try:
            back = blosc2.open(str(tmp), mode="r")
            ok = back.shape == arr.shape and back.dtype == arr.dtype and back[last] == arr[last]
            what = f"reads back as {back.shape} {back.dtype}"
            del back
        except (RuntimeError, ValueError, OSError) as e:
            raise verification_failed(tmp, f"not a readable blosc2 array: {e}") from None
        if not ok:
            raise verification_failed(tmp, f"{what}, not {arr.shape} {arr.dtype} as written")

    cparams = {"codec": CODEC, "clevel": CLEVEL, "filters": [FILTER], "filters_meta": [0], "nthreads": WRITE_THREADS}
    with atomic_path(path, verify=verify) as tmp:
        try:
            out = blosc2.asarray(arr, urlpath=str(tmp), mode="w", chunks=chunks, blocks=blocks, cparams=cparams)
        except RuntimeError as e:  # blosc2 reports a failed write (a full disk) as a RuntimeError
            raise verification_failed(tmp, f"blosc2 could not write the array: {e}") from None
        del out  # closes the file before it is checked and renamed


def write_properties(path: Path, props: dict) -> None:
    """Write a case's properties as a ``case_properties`` artifact (readable by ``read_json``), atomically.

    Compact JSON: the class locations hold up to 10,000 coordinates per class, and the indented form that
    ``write_json`` produces takes ~20x longer to write (it dominated the stage's run time).
    """
    head = ("schema_version", "kind", "plan_hash", "storage", "storage_version")  # first: read by case_storage
    doc = {"schema_version": SCHEMA_VERSION, "kind": "case_properties", "plan_hash": props.get("plan_hash"),
           **{k: props[k] for k in head[3:] if k in props}, **{k: v for k, v in props.items() if k not in head}}
    atomic_write_text(path, json.dumps(doc, separators=(",", ":"), allow_nan=False, default=_np_default) + "\n")


def _np_default(obj):
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_case(folder: Path, case_id: str, data: np.ndarray, seg: np.ndarray | None, props: dict,
               patch: Sequence[int]) -> None:
    """Write a case (the store's one writer): its json is removed first, then the arrays and last the json are
    written, each atomically, so that a case is complete iff its json exists. ``patch`` (the configuration's
    patch size, voxels) sets the arrays' chunks and blocks (:func:`blosc2_layout`)."""
    folder = Path(folder)
    (folder / f"{case_id}.json").unlink(missing_ok=True)
    _write_array(data_path(folder, case_id), data, patch)
    if seg is None:
        seg_path(folder, case_id).unlink(missing_ok=True)
    else:
        _write_array(seg_path(folder, case_id), seg, patch)
    (folder / f"{case_id}{OLD_SUFFIX}").unlink(missing_ok=True)
    write_properties(folder / f"{case_id}.json", {**props, **storage_format()})


# ---------------------------------------------------------------- a cascade stage's previous-stage segmentations
# ``<folder>/<case>_prev.b2nd``: (1, z, y, x) int8 on the case's preprocessed grid, written by preprocess for a
# cascade configuration (segpipe/preprocessing/previous_stage.py), read by training and validation.

def previous_stage_path(folder: str | Path, case_id: str) -> Path:
    return Path(folder) / f"{case_id}_prev.b2nd"


def write_previous_stage(folder: Path, case_id: str, seg: np.ndarray, patch: Sequence[int]) -> None:
    """Write a case's previous-stage segmentation ``(z, y, x)`` (stored ``(1, z, y, x)`` int8), atomically."""
    arr = np.asarray(seg, dtype=np.int8)
    _write_array(previous_stage_path(folder, case_id), arr[None] if arr.ndim == 3 else arr, patch)


def open_previous_stage(folder: str | Path, case_id: str, threads: int = PATCH_READ_THREADS) -> blosc2.NDArray:
    """A case's previous-stage segmentation as a blosc2 array ``(1, z, y, x)``, for reading patches."""
    return blosc2.open(str(previous_stage_path(folder, case_id)), mode="r", dparams={"nthreads": threads})


def load_previous_stage(folder: str | Path, case_id: str) -> np.ndarray:
    """A case's previous-stage segmentation in memory, ``(1, z, y, x)`` int8."""
    arr: np.ndarray = open_previous_stage(folder, case_id, threads=blosc2.ncores)[...]
    return arr
