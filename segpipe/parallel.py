"""Running per-case work in worker processes with a progress bar, failing loudly instead of hanging."""
from __future__ import annotations

import ctypes
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Sequence

from tqdm import tqdm

from segpipe.errors import fail

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Worker initializer: on Linux, ask the kernel to kill this worker when its parent dies (e.g. SIGKILL),
    so no orphaned workers linger after an interrupted stage."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except OSError:
            pass


def map_cases(fn: Callable[[Any], Any], args: Sequence[Any], workers: int, desc: str) -> list:
    """``[fn(a) for a in args]`` in ``workers`` processes (in order), with a tqdm progress bar.

    A worker that dies (e.g. killed by the system for lack of memory) stops the stage with a clear error.
    """
    if workers <= 1 or len(args) <= 1:
        return [fn(a) for a in tqdm(args, desc=desc, unit="case", disable=None)]
    try:
        with ProcessPoolExecutor(max_workers=workers, initializer=_die_with_parent) as pool:
            return list(tqdm(pool.map(fn, args, chunksize=max(1, len(args) // (workers * 8))), total=len(args),
                             desc=desc, unit="case", disable=None))
    except BrokenProcessPool:
        raise fail("a worker process died (most often: killed by the system for lack of memory)",
                   f"re-run with fewer workers (--workers {max(1, workers // 2)})") from None
