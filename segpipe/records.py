"""Stage records: what a stage read (content hashes), its settings and what it wrote.

A stage whose record matches its current inputs and settings, and whose outputs all exist, is skipped;
anything changed makes it run again. Artifacts are hashed by content (sha256); raw data files, which can be
large, by size and modification time.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from segpipe.io.jsonio import read_json, write_json
from segpipe.workspace import Workspace

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
    """Fingerprints of a stage's inputs: content hashes of artifacts, size+mtime of raw files."""
    state = {str(p): content_hash(p) for p in artifacts}
    for p in raw_files or []:
        state[str(p)] = stat_hash(p)
    return state


def up_to_date(ws: Workspace, stage: str, inputs: dict[str, str], settings: dict, outputs: list[Path]) -> bool:
    """True when ``stage`` already ran on exactly these inputs and settings and its outputs exist."""
    path = ws.record(stage)
    if not path.is_file():
        return False
    try:
        rec = read_json(path, kind="stage_record")
    except Exception:  # a damaged record just means: run again
        return False
    if rec.get("inputs") != inputs or rec.get("settings") != _norm(settings):
        return False
    if not all(Path(o).exists() for o in outputs):
        return False
    recorded = rec.get("outputs", {})
    return all(recorded.get(str(o)) == content_hash(o) for o in outputs if Path(o).is_file())


def write_record(ws: Workspace, stage: str, inputs: dict[str, str], settings: dict, outputs: list[Path]) -> None:
    write_json(ws.record(stage), {"stage": stage, "inputs": inputs, "settings": _norm(settings),
                                  "outputs": {str(o): content_hash(o) for o in outputs if Path(o).is_file()}},
               kind="stage_record")


def _norm(settings: dict) -> dict:
    import json

    from segpipe.io.jsonio import dumps

    return json.loads(dumps(settings))
