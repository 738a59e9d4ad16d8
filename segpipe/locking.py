"""One writer per dataset: stages hold locks on the workspace, and a second writer stops with a message that
names the holder (process id, command, start time).

Stages that change what every later stage reads (onboard, fingerprint, plan, preprocess) hold the dataset's
lock exclusively. Stages that only add their own artifacts (train, predict, select) hold it shared, so that
several folds can train at once, plus an exclusive lock of their own (one per fold, per prediction folder).
So ``plan --force`` cannot run while a fold trains or a preprocess runs, and two trainings of the same fold
cannot run at once. Locks are ``flock`` locks on files in ``<dataset>/.locks/``: the kernel releases them when
the process dies, however it dies, so a killed stage never leaves a lock behind. Holding a lock twice in one
process (``segpipe run`` calling stage after stage) is allowed.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

from segpipe.errors import error_context, fail
from segpipe.io.atomic import pid_alive, remove_stale_temporaries

if TYPE_CHECKING:
    from segpipe.workspace import Workspace

P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger(__name__)

LOCK_DIR = ".locks"
DATASET = "dataset"

_held: dict[str, list] = {}  # lock file -> [fd, exclusive, depth]


def _holders(lock: Path) -> list[dict]:
    out = []
    for p in sorted(lock.parent.glob(f"{lock.stem}.holder-*.json")):
        try:
            info = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if pid_alive(int(info.get("pid", -1))) and info.get("host") == socket.gethostname():
            out.append(info)
    return out


def _describe(holders: list[dict]) -> str:
    if not holders:
        return "another process"
    return "; ".join(f"pid {h['pid']} ({h.get('stage')}: `{h.get('command')}`, since {h.get('started')})"
                     for h in holders)


def _info_path(lock: Path) -> Path:
    return lock.parent / f"{lock.stem}.holder-{os.getpid()}.json"


@contextlib.contextmanager
def hold(lock: Path, stage: str, exclusive: bool) -> Iterator[None]:
    """Hold ``lock`` (exclusive or shared) for the block, or stop with a message naming the holder."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    key = str(lock)
    if key in _held and (_held[key][1] or not exclusive):
        _held[key][2] += 1
        try:
            yield
        finally:
            _held[key][2] -= 1
        return
    fd = _held[key][0] if key in _held else os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        if key not in _held:
            os.close(fd)
        what = "the data set" if lock.stem == DATASET else lock.stem
        raise fail(f"{stage}: {what} is being written by {_describe(_holders(lock))}",
                   "wait for that command to finish (or stop it), then re-run this one; two commands writing "
                   "the same artifacts at once could mix their results", file=lock.parent.parent) from None
    info = _info_path(lock)
    info.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "stage": stage,
                                "exclusive": exclusive, "command": " ".join(sys.argv),
                                "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
    previous = _held.get(key)
    _held[key] = [fd, exclusive, 1]
    try:
        yield
    finally:
        if previous is not None:  # an upgrade from shared to exclusive: back to shared
            fcntl.flock(fd, fcntl.LOCK_SH)
            _held[key] = previous
        else:
            del _held[key]
            with contextlib.suppress(FileNotFoundError):
                info.unlink()
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def lock_file(dataset_dir: Path, scope: str = DATASET) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in scope)
    if len(safe) > 80:
        safe = safe[:40] + "-" + hashlib.sha256(scope.encode()).hexdigest()[:16]
    return Path(dataset_dir) / LOCK_DIR / f"{safe}.lock"


@contextlib.contextmanager
def stage_lock(dataset_dir: Path, stage: str, exclusive: bool = True, own: str | None = None) -> Iterator[None]:
    """The locks of one stage run: the dataset's (exclusive or shared) and, with ``own``, an exclusive lock
    of the stage's own artifacts (e.g. ``train-3d_fullres-fold0``). On the first exclusive hold, temporary
    files left by dead processes are removed from the dataset folder."""
    if not exclusive and not os.access(dataset_dir, os.W_OK):
        log.debug("%s: %s is read-only; reading it without a lock", stage, dataset_dir)
        yield  # e.g. predicting with models in a read-only folder: nothing is written there
        return
    with hold(lock_file(dataset_dir), stage, exclusive):
        if exclusive and _held[str(lock_file(dataset_dir))][2] == 1:
            remove_stale_temporaries(dataset_dir, recursive=True)
        if own is None:
            yield
        else:
            with hold(lock_file(dataset_dir, own), stage, True):
                yield


def locked(stage: str, exclusive: bool = True, own: Callable[..., str | None] | None = None
           ) -> Callable[[Callable[Concatenate[Workspace, P], R]], Callable[Concatenate[Workspace, P], R]]:
    """Decorate a stage runner whose first argument is a :class:`~segpipe.workspace.Workspace`: it runs
    holding :func:`stage_lock` (``own`` computes the stage's own lock name from the call's arguments), and an
    unexpected exception inside it is re-raised naming the stage (:func:`segpipe.errors.error_context`)."""
    def deco(fn: Callable[Concatenate[Workspace, P], R]) -> Callable[Concatenate[Workspace, P], R]:
        @functools.wraps(fn)
        def wrapper(ws: Workspace, *args: P.args, **kwargs: P.kwargs) -> R:
            with error_context(stage), stage_lock(ws.dir, stage, exclusive,
                                                  own(ws, *args, **kwargs) if own else None):
                return fn(ws, *args, **kwargs)
        return wrapper
    return deco
