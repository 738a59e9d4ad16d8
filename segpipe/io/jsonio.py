"""Versioned JSON artifacts. Every artifact carries ``schema_version`` and ``kind``; reading checks both."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from segpipe.errors import fail
from segpipe.io.atomic import atomic_write_text

SCHEMA_VERSION = 1


def _default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _clean_floats(obj: Any) -> Any:
    """Replace NaN/Inf by None so that files stay strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean_floats(v) for v in obj]
    return obj


def dumps(obj: Any) -> str:
    return json.dumps(_clean_floats(json.loads(json.dumps(obj, default=_default))), indent=2, allow_nan=False) + "\n"


def _newer_schema(path: Path) -> object | None:
    """The ``schema_version`` of an existing JSON artifact at ``path`` when it is newer than this segpipe's;
    None when the file is absent, unreadable, not an artifact, or not newer."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return _newer_version(obj)


def _newer_version(obj: object) -> object | None:
    version = obj.get("schema_version") if isinstance(obj, dict) else None
    newer = isinstance(version, (int, float)) and not isinstance(version, bool) and version > SCHEMA_VERSION
    return version if newer else None


def refuse_if_newer(path: str | os.PathLike[str], writing: bool = False) -> None:
    """Refuse an artifact written by a newer segpipe (its ``schema_version`` is above ours).

    Reading it could misinterpret fields; overwriting it (even with ``--force``) would destroy work of the
    newer version, so both are refused.
    """
    path = Path(path)
    _refuse_newer(_newer_schema(path), path, writing)


def _refuse_newer(version: object | None, path: Path, writing: bool = False) -> None:
    if version is None:
        return
    if writing:
        raise fail(f"written by a newer segpipe (schema_version {version}; this segpipe supports "
                   f"{SCHEMA_VERSION}); refusing to overwrite it, even with --force",
                   "use a newer segpipe or another workspace", file=path)
    raise fail(f"written by a newer segpipe (schema_version {version}; this segpipe supports {SCHEMA_VERSION})",
               "upgrade segpipe (pip install -U segpipe), or use another workspace", file=path)


def write_json(path: str | os.PathLike[str], obj: dict[str, Any], kind: str | None = None) -> None:
    """Write ``obj`` atomically as JSON; with ``kind``, stamp it with ``kind`` and ``schema_version``.

    An existing file written by a newer segpipe is never overwritten (see :func:`refuse_if_newer`).
    """
    refuse_if_newer(path, writing=True)
    if kind is not None:
        obj = {"schema_version": SCHEMA_VERSION, "kind": kind, **{k: v for k, v in obj.items()
                                                                   if k not in ("schema_version", "kind")}}
    atomic_write_text(path, dumps(obj))


def read_json(path: str | os.PathLike[str], kind: str | None = None) -> dict[str, Any]:
    """Read a JSON file; with ``kind``, check that it is a segpipe artifact of that kind and schema version."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise fail("file not found", "run the stage that creates it first, or check the path", file=path) from None
    except OSError as e:
        raise fail(f"cannot read file ({e.strerror})", "check permissions", file=path) from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise fail(f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})",
                   "fix the syntax, or delete the file and re-run the stage that writes it", file=path) from None
    if not isinstance(obj, dict):
        raise fail(f"expected a JSON object, found {type(obj).__name__}", "fix the file's content", file=path)
    if kind is not None:
        _refuse_newer(_newer_version(obj), path)
        if obj.get("kind") != kind:
            raise fail(f"expected a segpipe '{kind}' artifact, found kind={obj.get('kind')!r}",
                       "point segpipe at the right workspace, or re-run the stage with --force", file=path)
        if obj.get("schema_version") != SCHEMA_VERSION:
            raise fail(f"schema_version {obj.get('schema_version')!r} is not the supported {SCHEMA_VERSION}",
                       "re-run the stage that wrote it with --force", file=path)
    return obj
