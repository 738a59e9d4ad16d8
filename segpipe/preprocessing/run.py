"""``segpipe preprocess``: preprocess every case for one configuration, in worker processes, resumably.

Output folder ``preprocessed/<config>/``: per case ``<case>.npz`` (uncompressed; arrays ``data`` (c, Z, Y, X)
float32 and ``seg`` (1, Z, Y, X) int8) and then ``<case>.json`` (properties), both written atomically, the json
last: a case is complete iff both exist. A killed run continues where it stopped. The folder's
``.preprocess_state.json`` names the inputs and settings its case files were made from; when those change (or
with ``--force``) the folder's case files are deleted first. The stage record is written once every case is
complete; a run whose record matches and whose cases are all complete is skipped.
"""
from __future__ import annotations

import json
import logging
import re
import zlib
from pathlib import Path

import numpy as np

from segpipe.dataset.model import CaseEntry, DatasetSpec
from segpipe.dataset.onboard import load_dataset
from segpipe.dataset.reading import read_channels, read_label
from segpipe.errors import SegpipeError, fail
from segpipe.io.atomic import TMP_PREFIX, atomic_save_npz, atomic_write_text, remove_stale_temporaries
from segpipe.locking import locked
from segpipe.io.jsonio import SCHEMA_VERSION, read_json, refuse_if_newer, write_json
from segpipe.planning.run import get_configuration
from segpipe.parallel import map_cases
from segpipe.preprocessing.case import preprocess_case
from segpipe.records import _norm, config_hash, input_state, relative_state, up_to_date, write_record
from segpipe.workspace import Workspace

log = logging.getLogger(__name__)

STATE_FILE = ".preprocess_state.json"
SEED = 12345  # class location sampling: per case seed = SEED + crc32(case id), independent of order and workers


def stage_name(config: str) -> str:
    return f"preprocess_{config}"


def case_seed(case_id: str, base: int = SEED) -> int:
    return base + zlib.crc32(case_id.encode("utf-8"))


def _is_complete(folder: Path, case_id: str) -> bool:
    return (folder / f"{case_id}.json").is_file() and (folder / f"{case_id}.npz").is_file()


def plan_hash(cfg: dict) -> str:
    """The hash of a configuration's plan entry that a preprocessed case records (see records.config_hash)."""
    return config_hash(cfg)


_HASH_RX = re.compile(rb'"plan_hash":"([^"]+)"')


def case_plan_hash(folder: Path, case_id: str) -> str | None:
    """The plan hash recorded in a preprocessed case's properties (read from the file's first bytes only)."""
    try:
        with open(Path(folder) / f"{case_id}.json", "rb") as fh:
            m = _HASH_RX.search(fh.read(256))
    except OSError:
        return None
    return m.group(1).decode() if m else None


def stale_cases(folder: Path, case_ids: list[str], cfg: dict) -> tuple[list[str], list[str]]:
    """``(missing, other_plan)``: cases not (completely) preprocessed, and cases preprocessed with a plan
    other than ``cfg`` (e.g. re-planned while a preprocess was running)."""
    want = plan_hash(cfg)
    missing = [c for c in case_ids if not _is_complete(folder, c)]
    other = [c for c in case_ids if c not in missing and case_plan_hash(folder, c) != want]
    return missing, other


def check_preprocessed(folder: Path, case_ids: list[str], cfg: dict, config: str) -> None:
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

    out = {}
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


def _one(args: tuple[DatasetSpec, Path, CaseEntry, dict, str, Path, int]) -> str:
    """Worker: preprocess one case and write its npz, then its json. Returns the case id (no arrays)."""
    spec, raw, case, cfg, config, out, seed = args
    data, geo = read_channels(spec, raw, case)
    label = None
    if case.label:
        lab, _ = read_label(spec, raw, case)
        label = np.rint(lab).astype(np.int16)
    data, seg, props = preprocess_case(data, label, geo, cfg, config, seed=seed, case_id=case.id,
                                       file=str(raw / case.images[0]))
    props["plan_hash"] = plan_hash(cfg)
    arrays = {"data": data} if seg is None else {"data": data, "seg": seg}
    atomic_save_npz(out / f"{case.id}.npz", compress=False, **arrays)
    write_properties(out / f"{case.id}.json", props)
    return case.id


def _wipe(folder: Path) -> int:
    """Delete the case outputs (npz, json, temporaries, state file) of a preprocessed folder."""
    n = 0
    if not folder.is_dir():
        return 0
    for p in folder.iterdir():
        if p.is_file() and (p.suffix in (".npz", ".json") or p.name.startswith(TMP_PREFIX)):
            p.unlink()
            n += 1
    return n


@locked("preprocess", exclusive=True)
def run_preprocess(ws: Workspace, config: str, workers: int = 1, force: bool = False) -> tuple[int, bool]:
    """Preprocess ``ws``'s dataset for ``config``. Returns (number of cases written now, skipped)."""
    spec = load_dataset(ws)
    plans = read_json(ws.plans_json, kind="plans")
    cfg = get_configuration(plans, config, ws.plans_json)
    out = ws.preprocessed(config)
    stage = stage_name(config)
    raw_files = [ws.raw / f for c in spec.cases for f in c.images + ([c.label] if c.label else [])]
    inputs = input_state([ws.dataset_json, ws.plans_json], raw_files)
    settings = {"config": config, "plan": cfg}
    state = {"inputs": relative_state(ws, inputs), "settings": _norm(settings)}

    record_ok = up_to_date(ws, stage, inputs, settings, [])
    stale = remove_stale_temporaries(out)
    if stale:
        log.info("preprocess: removed %d temporary file(s) left by an interrupted run", stale)
    folder_state = None
    refuse_if_newer(out / STATE_FILE, writing=True)  # never wipe what a newer segpipe wrote, even with --force
    if (out / STATE_FILE).is_file():
        try:
            folder_state = read_json(out / STATE_FILE, kind="preprocess_state")
        except SegpipeError:  # a damaged state file: the case files' origin is unknown, so they are redone
            folder_state = None
    folder_ok = folder_state is not None and {k: folder_state.get(k) for k in state} == state
    if force or not (folder_ok or record_ok):
        n = _wipe(out)
        if n:
            log.info("preprocess: %s; deleted %d existing file(s) in %s",
                     "--force" if force else "plan, dataset or raw files changed", n, out)
        if ws.record(stage).is_file():
            ws.record(stage).unlink()
        record_ok = False
    if not folder_ok or force:
        write_json(out / STATE_FILE, state, kind="preprocess_state")

    missing, other = stale_cases(out, [c.id for c in spec.cases], cfg)
    if other:
        log.warning("preprocess %s: %d case(s) were made with another plan; redoing them", config, len(other))
    todo = [c for c in spec.cases if c.id in set(missing) | set(other)]
    if not todo and record_ok:
        log.info("preprocess %s: inputs unchanged and all %d cases complete; skipping (use --force to redo)",
                 config, len(spec.cases))
        return 0, True
    if todo and len(todo) < len(spec.cases):
        log.info("preprocess %s: %d of %d cases already complete; continuing with the other %d", config,
                 len(spec.cases) - len(todo), len(spec.cases), len(todo))
    args = [(spec, ws.raw, c, cfg, config, out, case_seed(c.id)) for c in todo]
    map_cases(_one, args, workers, f"preprocess {config}", cases=[c.id for c in todo])
    check_preprocessed(out, [c.id for c in spec.cases], cfg, config)
    write_record(ws, stage, inputs, settings, [])
    return len(todo), False
