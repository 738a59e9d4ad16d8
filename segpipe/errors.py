"""Errors that users see: each names the file, the problem and the fix.

Library code raises :class:`SegpipeError` with one or more :class:`Problem` records; the CLI prints them
(all at once) and exits non-zero without a traceback unless ``--debug`` is given.
"""
from __future__ import annotations

import contextlib
import os
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the user's input.

    ``severity`` is ``"error"`` (the stage refuses to write anything) or ``"warning"`` (reported, not fatal).
    """

    problem: str
    fix: str
    file: str | None = None
    case: str | None = None
    severity: str = "error"
    detail: str | None = None  # e.g. the traceback of an unexpected error; shown with --debug only

    def format(self) -> str:
        where = []
        if self.case:
            where.append(f"case '{self.case}'")
        if self.file:
            where.append(f"file {self.file}")
        head = f"[{self.severity}] " + (", ".join(where) + ": " if where else "")
        return f"{head}{self.problem}\n    fix: {self.fix}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SegpipeError(Exception):
    """A user-facing error made of one or more problems."""

    def __init__(self, problems: Problem | Iterable[Problem]):
        self.problems: list[Problem] = [problems] if isinstance(problems, Problem) else list(problems)
        super().__init__(self.format())

    def __reduce__(self) -> tuple[type[SegpipeError], tuple[list[Problem]]]:
        # pickled with its problems (not the formatted text), so an error raised in a worker process reaches
        # the main process whole: same case, file, problem and fix as with --workers 1
        return (type(self), (self.problems,))

    def with_context(self, case: str | None = None, file: str | None = None) -> SegpipeError:
        """The same error with ``case``/``file`` filled in where its problems name none."""
        return SegpipeError(Problem(p.problem, p.fix, p.file or file, p.case or case, p.severity, p.detail)
                            for p in self.problems)

    def format(self) -> str:
        errors = [p for p in self.problems if p.severity == "error"]
        lines = [f"{len(errors)} problem(s) found:" if len(errors) > 1 else ""]
        lines += [p.format() for p in self.problems]
        return "\n".join(line for line in lines if line)


def did_you_mean(name: str, choices: Iterable[object], cutoff: float = 0.6) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` to ``name`` (case-insensitive), or ''."""
    import difflib

    by_lower = {str(c).lower(): str(c) for c in choices}
    close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=1, cutoff=cutoff)
    return f" (did you mean '{by_lower[close[0]]}'?)" if close else ""


def fail(problem: str, fix: str, file: str | os.PathLike[str] | None = None, case: str | None = None) -> SegpipeError:
    """Build a single-problem :class:`SegpipeError` (``raise fail(...)``)."""
    return SegpipeError(Problem(problem=problem, fix=fix, file=None if file is None else str(file), case=case))


NO_SPACE = "no space left on the device"


def os_error_problem(e: OSError, case: str | None = None) -> Problem:
    """A user-facing problem for an operating-system error while reading or writing (disk full, read-only...)."""
    import errno

    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        problem, fix = (f"{NO_SPACE} (nothing partial was kept: artifacts are written to a "
                        "temporary file, verified and only then renamed)",
                        "free disk space or choose another --workspace/--output, then re-run the command")
    elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        problem, fix = (f"cannot write here ({e.strerror})",
                        "make the folder writable or choose another --workspace/--output")
    else:
        problem, fix = (f"{e.strerror or e}", "check the path and permissions, then re-run the command")
    return Problem(problem, fix, None if e.filename is None else str(e.filename), case)


def failure_problems(e: BaseException, stage: str, case: str | None) -> list[Problem]:
    """The problems to report for exception ``e`` raised while ``stage`` worked on ``case``."""
    if isinstance(e, SegpipeError):
        return e.with_context(case=case).problems
    if isinstance(e, MemoryError):
        return [Problem(f"{stage}: ran out of memory on this case", "re-run with fewer --workers, or on a "
                        "machine with more memory", case=case)]
    if isinstance(e, OSError):
        return [os_error_problem(e, case)]
    tb = traceback.extract_tb(e.__traceback__)
    where = f" at {tb[-1].filename}:{tb[-1].lineno}" if tb else ""
    return [Problem(f"{stage}: unexpected {type(e).__name__}: {e}{where}",
                    "re-run with --debug for the full traceback and report it", case=case,
                    detail="".join(traceback.format_exception(type(e), e, e.__traceback__)))]


@contextlib.contextmanager
def error_context(stage: str, case: str | None = None, file: str | None = None) -> Iterator[None]:
    """Re-raise what goes wrong inside ``stage`` (on ``case``) with that context, as MONAI's ``apply_transform``
    names the transform that failed.

    A :class:`SegpipeError` gets ``case``/``file`` where its problems name none; any other exception (a bug, a
    library's ValueError, a full disk) becomes a :class:`SegpipeError` naming the stage, the case and where it
    was raised, chained to the original (``raise ... from``) and with its traceback as ``detail`` (shown with
    ``--debug``). ``KeyboardInterrupt`` and ``SystemExit`` pass unchanged.
    """
    try:
        yield
    except SegpipeError as e:
        if case is None and file is None:
            raise
        raise e.with_context(case=case, file=file) from e
    except Exception as e:  # noqa: BLE001 - re-raised with its context, never swallowed
        raise SegpipeError(failure_problems(e, stage, case)) from e
