"""Running per-case work in worker processes with a progress bar, failing loudly instead of hanging."""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Sequence

from tqdm import tqdm

from segpipe.errors import fail


def map_cases(fn: Callable[[Any], Any], args: Sequence[Any], workers: int, desc: str) -> list:
    """``[fn(a) for a in args]`` in ``workers`` processes (in order), with a tqdm progress bar.

    A worker that dies (e.g. killed by the system for lack of memory) stops the stage with a clear error.
    """
    if workers <= 1 or len(args) <= 1:
        return [fn(a) for a in tqdm(args, desc=desc, unit="case", disable=None)]
    try:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            return list(tqdm(pool.map(fn, args, chunksize=max(1, len(args) // (workers * 8))), total=len(args),
                             desc=desc, unit="case", disable=None))
    except BrokenProcessPool:
        raise fail("a worker process died (most often: killed by the system for lack of memory)",
                   f"re-run with fewer workers (--workers {max(1, workers // 2)})") from None
