"""Progress a person can follow: a tqdm bar on a terminal, plain log lines otherwise (output to a file, CI).

Library code never prints; without a terminal, :class:`CaseProgress` logs one INFO line per finished case
(at most one a second, and always the last one), so a log file shows what a long stage is doing.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable

from tqdm import tqdm

log = logging.getLogger("segpipe.progress")

MIN_LOG_INTERVAL_S = 1.0
HEARTBEAT_S = 30.0  # without a terminal, a line at least this often, even inside one long step


class Heartbeat:
    """Without a terminal, log ``status()`` whenever nothing was logged for ``every`` seconds (from a daemon
    thread, so that a single long step, such as one iteration or one big case, still shows signs of life).
    Call :meth:`beat` whenever the caller logs a line of its own. Does nothing on a terminal."""

    def __init__(self, status: Callable[[], str], every: float = HEARTBEAT_S):
        self.status, self.every = status, every
        self.last = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        self.last = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(min(self.every / 3, 5.0)):
            if time.monotonic() - self.last >= self.every:
                try:
                    log.info("%s", self.status())
                except Exception:  # noqa: BLE001 - a status line must never break the work it reports on
                    log.info("still working")
                self.beat()

    def __enter__(self) -> Heartbeat:
        if not on_terminal():
            self._thread = threading.Thread(target=self._run, name="segpipe-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)


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
        self.heartbeat = Heartbeat(lambda: f"{self.desc}: {self.done}/{self.total} cases done, "
                                           f"{time.monotonic() - self.start:.0f} s elapsed, working on the next")
        self.heartbeat.__enter__()

    def update(self, case: str | None = None, failed: bool = False) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            return
        now = time.monotonic()
        if now - self._last >= MIN_LOG_INTERVAL_S or self.done == self.total:
            self._last = now
            self.heartbeat.beat()
            elapsed = now - self.start
            eta = elapsed / self.done * (self.total - self.done)
            log.info("%s: %d/%d cases%s%s, %.0f s elapsed, ~%.0f s left", self.desc, self.done, self.total,
                     f" (last: {case}" + (", FAILED)" if failed else ")") if case else "",
                     "", elapsed, eta)

    def close(self) -> None:
        self.heartbeat.__exit__(None, None, None)
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> CaseProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
