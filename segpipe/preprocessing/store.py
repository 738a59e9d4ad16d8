"""The preprocessed-case store: reading and writing ``preprocessed/<config>/`` (one writer: preprocess).

Per case ``<case>.npz`` (uncompressed, so that training can memory-map it; arrays ``data`` (c, Z, Y, X) float32
and ``seg`` (1, Z, Y, X) int8, channels first, array axis order) and then ``<case>.json`` (properties: geometry,
crop box, shapes, spacings in mm, class locations, and the hash of the plan entry the case was made with). A case
is complete iff both exist; it belongs to the current plan iff its ``plan_hash`` matches.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from segpipe.errors import fail
from segpipe.io.atomic import atomic_save_npz, atomic_write_text
from segpipe.io.jsonio import SCHEMA_VERSION, read_json
from segpipe.planning.plans import Configuration
from segpipe.records import config_hash


def _is_complete(folder: Path, case_id: str) -> bool:
    return (folder / f"{case_id}.json").is_file() and (folder / f"{case_id}.npz").is_file()


def plan_hash(cfg: Configuration) -> str:
    """The hash of a configuration's plan entry that a preprocessed case records (see records.config_hash)."""
    return config_hash(cfg.to_json())


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


def check_preprocessed(folder: Path, case_ids: list[str], cfg: Configuration, config: str) -> None:
    """Refuse to use a preprocessed folder that lacks cases or mixes plans (names the cases and the fix)."""
    missing, other = stale_cases(folder, case_ids, cfg)
    if missing:
        raise fail(f"{len(missing)} case(s) are not preprocessed for {config} (e.g. {missing[:3]})",
                   f"run `segpipe preprocess --config {config}` first", file=folder)
    if other:
        raise fail(f"{len(other)} preprocessed case(s) were made with another plan than the current plans.json "
                   f"(e.g. {other[:3]})", f"run `segpipe preprocess --config {config}` to redo them", file=folder)


def list_cases(folder: str | Path) -> list[str]:
    """Ids of the complete cases in a preprocessed folder (json and npz present), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.json")
                  if not p.name.startswith(".") and (folder / f"{p.stem}.npz").is_file())


def load_case(folder: str | Path, case_id: str, mmap: bool = False) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """``(data, seg, props)`` of a preprocessed case; ``seg`` is None for cases without a label.

    With ``mmap`` the arrays are memory-mapped from the (uncompressed) npz instead of read into memory.
    """
    folder = Path(folder)
    path = folder / f"{case_id}.npz"
    if not _is_complete(folder, case_id):
        raise fail(f"preprocessed case '{case_id}' is missing or incomplete", "run `segpipe preprocess` "
                   "(it continues where it stopped)", file=path, case=case_id)
    props = read_json(folder / f"{case_id}.json", kind="case_properties")
    if mmap:
        arrays = _mmap_npz(path)
    else:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    return arrays["data"], arrays.get("seg"), props


def _mmap_npz(path: Path) -> dict[str, np.ndarray]:
    """Memory-map the arrays of an uncompressed npz (a zip of stored .npy members)."""
    import zipfile

    out: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
    with open(path, "rb") as fh:
        for info in infos:
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"{path}: member {info.filename} is compressed; cannot memory-map")
            # local file header: 30 bytes + name + extra; then the .npy file
            fh.seek(info.header_offset)
            head = fh.read(30)
            n_name = int.from_bytes(head[26:28], "little")
            n_extra = int.from_bytes(head[28:30], "little")
            start = info.header_offset + 30 + n_name + n_extra
            fh.seek(start)
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            if dtype.hasobject:
                raise ValueError(f"{path}: object arrays are not allowed")
            out[info.filename[:-4] if info.filename.endswith(".npy") else info.filename] = np.memmap(
                path, dtype=dtype, mode="r", offset=fh.tell(), shape=shape, order="F" if fortran else "C")
    return out


def write_properties(path: Path, props: dict) -> None:
    """Write a case's properties as a ``case_properties`` artifact (readable by ``read_json``), atomically.

    Compact JSON: the class locations hold up to 10,000 coordinates per class, and the indented form that
    ``write_json`` produces takes ~20x longer to write (it dominated the stage's run time).
    """
    doc = {"schema_version": SCHEMA_VERSION, "kind": "case_properties", "plan_hash": props.get("plan_hash"),
           **{k: v for k, v in props.items() if k not in ("schema_version", "kind", "plan_hash")}}
    atomic_write_text(path, json.dumps(doc, separators=(",", ":"), allow_nan=False, default=_np_default) + "\n")


def _np_default(obj):
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_case(folder: Path, case_id: str, data: np.ndarray, seg: np.ndarray | None, props: dict) -> None:
    """Write a case: its arrays first, then its properties (which make it complete), both atomically."""
    arrays = {"data": data} if seg is None else {"data": data, "seg": seg}
    atomic_save_npz(Path(folder) / f"{case_id}.npz", compress=False, **arrays)
    write_properties(Path(folder) / f"{case_id}.json", props)
