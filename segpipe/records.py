"""Stage records: what a stage read (content hashes), its settings and what it wrote.

A stage whose record matches its current inputs and settings, and whose outputs all exist, is skipped;
anything changed makes it run again. Artifacts are hashed by content (sha256); raw data files, which can be
large, by size and modification time.

Paths inside the dataset folder are recorded relative to it (``plans.json``, ``raw/imagesTr/a.nii.gz``), so a
workspace that is moved or copied elsewhere (``mv``, ``cp -a``) still skips its up-to-date stages; paths
outside it (the user's source folder in the onboard record) stay absolute. Records written by older segpipe
versions, with absolute paths inside the same dataset folder, are read as if they were relative.

Records per stage (``records/<name>.json``): ``onboard``, ``fingerprint``, ``plan``, ``preprocess_<config>``,
``train_<config>_fold_<k>``, ``select``, and ``predict_<hash>`` where ``<hash>`` is a short hash of the
output folder (relative to the dataset folder when inside it, else absolute): nothing is ever written into
the user's output folder besides the predictions. Predict records are provenance only (prediction always
runs). Evaluation records use the same keying (``evaluate_<hash>``, :func:`write_output_record`) when a
workspace is involved; ``segpipe evaluate`` without a workspace writes no record.

A trained fold also keeps ``trained_with.json`` in its folder: the hash of the plan configuration entry and
of the preprocessing record it was trained with, so that training refuses to continue or reuse a fold made
with another plan or other preprocessed data, and prediction refuses a fold whose plan differs.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from segpipe.errors import SegpipeError
from segpipe.io.jsonio import read_json, refuse_if_newer, write_json
from segpipe.workspace import Workspace

if TYPE_CHECKING:
    from segpipe.planning.plans import Configuration

log = logging.getLogger(__name__)


def content_hash(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def stat_hash(path: str | os.PathLike) -> str:
    st = os.stat(path)
    return f"stat:{st.st_size}:{st.st_mtime_ns}"


def input_state(artifacts: list[Path], raw_files: list[Path] | None = None) -> dict[str, str]:
    """Fingerprints of a stage's inputs: content hashes of artifacts, size+mtime of raw files.

    Keys are the paths as given; :func:`up_to_date` and :func:`write_record` make them workspace-relative.
    """
    state = {str(p): content_hash(p) for p in artifacts}
    for p in raw_files or []:
        state[str(p)] = stat_hash(p)
    return state


def rel_key(ws: Workspace, path: str | os.PathLike) -> str:
    """``path`` relative to the dataset folder (POSIX separators) when inside it, else unchanged."""
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    try:
        return p.relative_to(ws.dir).as_posix()
    except ValueError:
        return str(p)


def relative_state(ws: Workspace, state: dict[str, str]) -> dict[str, str]:
    """``state`` with its path keys made workspace-relative (see :func:`rel_key`)."""
    return {rel_key(ws, k): v for k, v in state.items()}


def up_to_date(ws: Workspace, stage: str, inputs: dict[str, str], settings: dict, outputs: list[Path]) -> bool:
    """True when ``stage`` already ran on exactly these inputs and settings and its outputs exist.

    A record written by a newer segpipe is refused (an error), never silently redone.
    """
    path = ws.record(stage)
    if not path.is_file():
        return False
    refuse_if_newer(path)
    try:
        rec = read_json(path, kind="stage_record")
    except SegpipeError:  # a damaged record (not JSON, not a record) just means: run again
        log.info("%s: its record %s is damaged; running the stage again", stage, path)
        return False
    if relative_state(ws, rec.get("inputs") or {}) != relative_state(ws, inputs):
        return False
    if rec.get("settings") != _norm(settings):
        return False
    if not all(Path(o).exists() for o in outputs):
        return False
    recorded = relative_state(ws, rec.get("outputs") or {})
    return all(recorded.get(rel_key(ws, o)) == content_hash(o) for o in outputs if Path(o).is_file())


def write_record(ws: Workspace, stage: str, inputs: dict[str, str], settings: dict, outputs: list[Path],
                 info: dict | None = None) -> None:
    """Record what ``stage`` read and wrote (paths workspace-relative). ``info`` is kept for people, never
    compared."""
    rec = {"stage": stage, "inputs": relative_state(ws, inputs), "settings": _norm(settings),
           "outputs": {rel_key(ws, o): content_hash(o) for o in outputs if Path(o).is_file()}}
    if info:
        rec["info"] = _norm(info)
    write_json(ws.record(stage), rec, kind="stage_record")


def record_hash(ws: Workspace, stage: str) -> str | None:
    """A hash of what ``stage`` last ran on (its record's inputs and settings), or None without a record.

    Independent of where the workspace lies and of when the record was written.
    """
    path = ws.record(stage)
    if not path.is_file():
        return None
    rec = read_json(path, kind="stage_record")
    return _hash({"inputs": relative_state(ws, rec.get("inputs") or {}), "settings": rec.get("settings")})


def config_hash(config: dict) -> str:
    """A hash of a plan configuration entry, without its human-readable ``why`` texts."""
    return _hash({k: v for k, v in config.items() if k != "why"})


def _hash(obj) -> str:
    import json

    text = json.dumps(_norm(obj), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _norm(settings: dict) -> dict:
    import json

    from segpipe.io.jsonio import dumps

    return json.loads(dumps(settings))


# ------------------------------------------------------------------------------------------ trained folds
TRAIN_ORIGIN = "trained_with.json"


def train_stage(config: str, fold: str | int) -> str:
    return f"train_{config}_fold_{fold}"


def fold_origin(ws: Workspace, config: Configuration) -> dict:
    """What a fold of ``config`` trained now would be trained with: plan entry and preprocessing."""
    config_name = config.name
    return {"config": config_name, "plan_hash": config_hash(config.to_json()),
            "preprocess_hash": record_hash(ws, f"preprocess_{config.data_identifier}")}


def read_fold_origin(fold_dir: Path) -> dict | None:
    """The fold's ``trained_with.json``, or None for folds trained before segpipe recorded it."""
    path = Path(fold_dir) / TRAIN_ORIGIN
    return read_json(path, kind="train_origin") if path.is_file() else None


def write_fold_origin(fold_dir: Path, origin: dict) -> None:
    write_json(Path(fold_dir) / TRAIN_ORIGIN, origin, kind="train_origin")


def origin_differences(old: dict, new: dict, keys: tuple[str, ...] = ("plan_hash", "preprocess_hash")) -> list[str]:
    """Which of ``keys`` differ between a fold's recorded origin and the current one."""
    names = {"plan_hash": "plan configuration (plans.json)", "preprocess_hash": "preprocessed data"}
    return [names.get(k, k) for k in keys if old.get(k) != new.get(k)]


def output_stage(ws: Workspace, kind: str, output_dir: Path) -> str:
    """Record name of a ``kind`` run ("predict", "evaluate") writing into ``output_dir``:
    ``<kind>_<12 hex digits of the folder's path>`` (relative to the dataset folder when inside it)."""
    key = rel_key(ws, Path(output_dir).absolute())
    return f"{kind}_" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


def predict_stage(ws: Workspace, output_dir: Path) -> str:
    return output_stage(ws, "predict", output_dir)


def write_output_record(ws: Workspace, kind: str, output_dir: Path, inputs: dict[str, str], settings: dict,
                        outputs: list[Path], info: dict | None = None) -> None:
    """Record a run that wrote into a user's folder (predict, evaluate) in the workspace's records/, never in
    that folder. Provenance only; a workspace that cannot be written (read-only models) just logs a warning."""
    output_dir = Path(output_dir).absolute()
    try:
        write_record(ws, output_stage(ws, kind, output_dir), inputs, settings, outputs,
                     info={"output": rel_key(ws, output_dir), **(info or {})})
    except OSError as e:
        log.warning("could not write the %s record in %s (%s)", kind, ws.records, e.strerror or e)
