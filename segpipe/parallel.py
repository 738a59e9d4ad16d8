"""Per-case work in worker processes: every failure reaches the user whole, and the other cases still finish.

One helper for every parallel stage (fingerprint, validation, preprocess, predict, evaluate, export):

* :func:`run_case` runs in the worker and turns any failure of one case into :class:`~segpipe.errors.Problem`
  records that name the stage and the case (a :class:`SegpipeError` keeps its file, problem and fix; an
  unexpected exception keeps its type, message and traceback), so ``--workers 2`` reports exactly what
  ``--workers 1`` reports.
* :class:`CasePool` submits cases and hands back their outcomes. When a worker process dies (killed by the
  system for lack of memory, most often), the cases that were in flight are re-run one at a time in a fresh
  process, so the case that kills a worker is named and the others finish.
* :func:`map_cases` maps a function over cases, and raises one :class:`SegpipeError` listing every failed case
  after all the others have finished.
"""
from __future__ import annotations

import ctypes
import logging
import multiprocessing
import multiprocessing.context
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from segpipe.errors import NO_SPACE, Problem, SegpipeError, failure_problems
from segpipe.progress import CaseProgress

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Worker initializer: on Linux, ask the kernel to kill this worker when its parent dies (e.g. SIGKILL),
    so no orphaned workers linger after an interrupted stage."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except OSError:
            pass


def run_case(fn: Callable[[Any], Any], arg: Any, case: str | None, stage: str) -> tuple[bool, Any]:
    """``(True, fn(arg))``, or ``(False, problems)`` when it fails. Runs inside the worker process."""
    try:
        return True, fn(arg)
    except Exception as e:  # noqa: BLE001 - every failure becomes a reported problem of this case
        return False, failure_problems(e, stage, case)


def _worker_died(stage: str, case: str | None, workers: int) -> Problem:
    return Problem(f"{stage}: the worker process died while processing this case (most often: killed by the "
                   "system for lack of memory)", "re-run with fewer --workers"
                   + (f" (e.g. --workers {max(1, workers // 2)})" if workers > 1 else "")
                   + ", or on a machine with more memory", case=case)


class CaseTask:
    """One submitted case: its function, argument and, once known, its outcome."""

    def __init__(self, fn: Callable[[Any], Any], arg: Any, case: str | None):
        self.fn, self.arg, self.case = fn, arg, case
        self.future: Future | None = None
        self.outcome: tuple[bool, Any] | None = None


def worker_context() -> multiprocessing.context.BaseContext:
    """How worker processes start: ``forkserver`` (``spawn`` where there is none), never a plain ``fork`` of this
    process. A forked child inherits the parent's library thread pools in whatever state they were (blosc2's,
    OpenMP's), and one that was locked at that moment deadlocks the child: preprocessing hung that way in
    blosc2's reader. Workers of the forkserver start from a clean process and import what they run."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


class CasePool:
    """Runs per-case functions in ``workers`` processes, or lazily in this process when ``workers <= 1``.

    ``submit`` starts a case; ``outcome`` waits for it and returns ``(True, value)`` or ``(False, problems)``;
    it never raises for a failure of the case itself.
    """

    def __init__(self, workers: int, stage: str):
        self.workers, self.stage = max(1, int(workers)), stage
        self._pool: ProcessPoolExecutor | None = None
        self._live: list[CaseTask] = []

    def __enter__(self) -> CasePool:
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=exc[0] is None, cancel_futures=True)
            self._pool = None

    def submit(self, fn: Callable[[Any], Any], arg: Any, case: str | None) -> CaseTask:
        task = CaseTask(fn, arg, case)
        if self.workers > 1:
            for _ in range(2):
                if self._pool is None:
                    self._pool = ProcessPoolExecutor(self.workers, mp_context=worker_context(),
                                                     initializer=_die_with_parent)
                try:
                    task.future = self._pool.submit(run_case, fn, arg, case, self.stage)
                    break
                except BrokenProcessPool:  # a worker died since the last outcome: settle that first
                    self._recover()
            self._live.append(task)
        return task

    def outcome(self, task: CaseTask) -> tuple[bool, Any]:
        if task.outcome is None:
            if task.future is None:
                task.outcome = run_case(task.fn, task.arg, task.case, self.stage)
            else:
                try:
                    task.outcome = task.future.result()
                except BrokenProcessPool:
                    self._recover()
                except Exception as e:  # noqa: BLE001 - e.g. a result that cannot be sent between processes
                    task.outcome = (False, failure_problems(e, self.stage, task.case))
                if task in self._live:
                    self._live.remove(task)
        assert task.outcome is not None
        return task.outcome

    def _recover(self) -> None:
        """A worker died and took the pool with it: re-run each case that was in flight alone, in a fresh
        one-worker pool, so that the case that kills its worker is named and every other case finishes."""
        in_flight = [t for t in self._live if t.outcome is None]
        self._live = []
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        log.warning("%s: a worker process died; re-running the %d case(s) that were in flight one at a time",
                    self.stage, len(in_flight))
        for t in in_flight:
            with ProcessPoolExecutor(1, mp_context=worker_context(), initializer=_die_with_parent) as single:
                try:
                    t.outcome = single.submit(run_case, t.fn, t.arg, t.case, self.stage).result()
                except BrokenProcessPool:
                    t.outcome = (False, [_worker_died(self.stage, t.case, self.workers)])
                except Exception as e:  # noqa: BLE001
                    t.outcome = (False, failure_problems(e, self.stage, t.case))


def case_failures_error(failures: dict[str, list[Problem]], total: int, stage: str) -> SegpipeError:
    """One error listing every failed case's problems, then which cases failed out of how many."""
    problems = [p for ps in failures.values() for p in ps]
    names = list(failures)
    problems.append(Problem(f"{stage}: {len(names)} of {total} case(s) failed: {names[:20]}"
                            + (" ..." if len(names) > 20 else "") + "; the other cases finished",
                            "fix the problems above, then re-run the same command"))
    return SegpipeError(problems)


def map_cases(fn: Callable[[Any], Any], args: Sequence[Any], workers: int, desc: str,
              cases: Sequence[str] | None = None) -> list:
    """``[fn(a) for a in args]`` in ``workers`` processes (results in order), with progress.

    ``cases`` names the case of each argument (for messages). Every case runs even when some fail; then
    failures are raised together as one :class:`SegpipeError` naming each failed case.
    """
    names = [str(c) for c in cases] if cases is not None else [None] * len(args)
    results: list = [None] * len(args)
    failures: dict[str, list[Problem]] = {}
    window = max(1, workers) * 2
    with CasePool(workers if len(args) > 1 else 1, desc) as pool, CaseProgress(len(args), desc) as bar:
        tasks: list[tuple[int, CaseTask]] = []
        nxt = 0
        while nxt < len(args) or tasks:
            while nxt < len(args) and len(tasks) < window:
                tasks.append((nxt, pool.submit(fn, args[nxt], names[nxt])))
                nxt += 1
            i, task = tasks.pop(0)
            ok, value = pool.outcome(task)
            if ok:
                results[i] = value
            else:
                failures[names[i] or f"#{i}"] = value
                if any(p.problem.startswith(NO_SPACE) for p in value) and nxt < len(args):
                    log.error("%s: the disk is full; not starting the remaining %d case(s)", desc, len(args) - nxt)
                    nxt = len(args)
            bar.update(names[i], failed=not ok)
    if failures:
        raise case_failures_error(failures, len(args), desc)
    return results
