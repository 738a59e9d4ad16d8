"""Progress a person can follow: a tqdm bar on a terminal, plain log lines otherwise (output to a file, CI).

Library code never prints; without a terminal, :class:`CaseProgress` logs one INFO line per finished case
(at most one a second, and always the last one), so a log file shows what a long stage is doing.
"""
from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm

log = logging.getLogger("segpipe.progress")

MIN_LOG_INTERVAL_S = 1.0


def on_terminal() -> bool:
    """True when stderr is a terminal (progress bars), False for files and pipes (log lines)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class CaseProgress:
    """Count finished cases of one stage: ``update(case_id)`` after each case, ``close()`` at the end."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.done = total, desc, 0
        self.start = self._last = time.monotonic()
        self.bar = tqdm(total=total, desc=desc, unit="case") if on_terminal() else None

    def update(self, case: str | None = None, failed: bool = False) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            return
        now = time.monotonic()
        if now - self._last >= MIN_LOG_INTERVAL_S or self.done == self.total:
            self._last = now
            elapsed = now - self.start
            eta = elapsed / self.done * (self.total - self.done)
            log.info("%s: %d/%d cases%s%s, %.0f s elapsed, ~%.0f s left", self.desc, self.done, self.total,
                     f" (last: {case}" + (", FAILED)" if failed else ")") if case else "",
                     "", elapsed, eta)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "CaseProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
