"""Atomic, verified writes: every artifact is written to a temporary file in the same folder, flushed to disk,
checked, and only then renamed over the target.

A process killed half-way, a full disk or a writer that fails silently (SimpleITK does not raise on a full
disk) leave the old file in place, never a truncated or empty artifact, and never report success.
Temporary files and folders are named ``.tmp-<pid>-<random>-<name>``; :func:`remove_stale_temporaries` deletes
those whose process is gone and never touches a live process's.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import shutil
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
LOW_SPACE_BYTES = 1 << 20  # a failed verification with less free space than this is reported as a full disk

Verifier = Callable[[Path], None]


class WriteVerificationError(OSError):
    """What was written is not what was meant to be written (raised before anything is replaced)."""


def _tmp_name(path: Path) -> Path:
    # the temporary keeps the final suffixes so that writers choosing a format by extension still work
    return path.with_name(f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{path.name}")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def verification_failed(path: Path, why: str) -> OSError:
    """The error for a written file that failed its check: a full disk when the disk is (nearly) full."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if free is not None and free < LOW_SPACE_BYTES:
        return OSError(errno.ENOSPC, f"no space left on the device ({why})", str(path))
    return WriteVerificationError(errno.EIO, f"the written file failed its check ({why})", str(path))


def verify_not_empty(tmp: Path) -> None:
    if tmp.stat().st_size == 0:
        raise verification_failed(tmp, "0 bytes written")


def verify_zip(tmp: Path) -> None:
    """npz files and torch checkpoints are zip archives: a truncated one has no readable central directory."""
    verify_not_empty(tmp)
    try:
        with zipfile.ZipFile(tmp) as zf:
            for info in zf.infolist():
                if info.header_offset + info.compress_size > tmp.stat().st_size:
                    raise zipfile.BadZipFile(f"member {info.filename} extends past the end of the file")
    except zipfile.BadZipFile as e:
        raise verification_failed(tmp, f"incomplete archive: {e}") from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], verify: Verifier | None = verify_not_empty) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it, run ``verify`` on it (a file; folders are
    not checked), rename it onto ``path`` and fsync the folder; on any failure delete it and keep ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        yield tmp
        if tmp.is_file() and not tmp.is_symlink():
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            if verify is not None:
                verify(tmp)
        elif not (tmp.is_dir() or tmp.is_symlink()):
            raise verification_failed(tmp, "the writer produced no file")
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    def same_size(tmp: Path) -> None:
        if tmp.stat().st_size != len(data):
            raise verification_failed(tmp, f"{tmp.stat().st_size} of {len(data)} bytes written")

    with atomic_path(path, verify=same_size) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_npz(path: str | os.PathLike[str], compress: bool = True, **arrays: npt.NDArray[Any]) -> None:
    """Save arrays to a ``.npz`` (compressed by default) atomically; no pickled objects (object arrays are
    refused)."""
    for name, arr in arrays.items():
        if np.asarray(arr).dtype == object:
            raise TypeError(f"refusing to save object array '{name}' (would need pickle)")
    with atomic_path(path, verify=verify_zip) as tmp:
        with open(tmp, "wb") as fh:
            # typed as a plain callable: numpy's stubs would match an array named 'allow_pickle' to that flag
            save: Callable[..., None] = np.savez_compressed if compress else np.savez
            save(fh, **arrays)


def exchange_paths(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2(RENAME_EXCHANGE)``). False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def replace_tree(new: Path, target: Path) -> None:
    """Put the complete folder (or link) ``new`` at ``target``, replacing what is there only now.

    The old content is swapped out atomically where the system allows it, then deleted; a process killed at
    any point leaves either the old or the new tree at ``target`` (and a stale temporary that the next run
    removes). Elsewhere the old tree is renamed aside first, a window of two renames.
    """
    new, target = Path(new), Path(target)
    if not (target.exists() or target.is_symlink()):
        os.replace(new, target)
    elif target.is_symlink() or target.is_file():
        os.replace(new, target)  # a link or file is replaced atomically by rename
        return
    elif exchange_paths(new, target):
        shutil.rmtree(new) if new.is_dir() and not new.is_symlink() else new.unlink()
    else:
        aside = _tmp_name(target)
        os.replace(target, aside)
        os.replace(new, target)
        shutil.rmtree(aside)
    _fsync_dir(target.parent)


def _pid_of(name: str) -> int | None:
    """The writer's process id in a temporary's name ``.tmp-<pid>-<random>-<name>``, or None."""
    pid = name[len(TMP_PREFIX):].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike[str], recursive: bool = False) -> int:
    """Delete temporary files and folders in ``folder`` whose writing process is gone. Returns how many.

    A temporary of a live process (another segpipe command running now) is never touched. With
    ``recursive``, sub-folders are searched too; symbolic links (such as ``raw/``) are never followed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    for p in list(folder.iterdir()):
        if p.is_symlink():
            continue
        if p.name.startswith(TMP_PREFIX):
            pid = _pid_of(p.name)
            if pid is not None and pid_alive(pid):
                continue
            with contextlib.suppress(FileNotFoundError):
                if p.is_dir():
                    shutil.rmtree(p)
                else:
                    p.unlink()
                n += 1
        elif recursive and p.is_dir():
            n += remove_stale_temporaries(p, recursive=True)
    if n:
        log.info("removed %d temporary file(s) left by interrupted runs in %s", n, folder)
    return n
