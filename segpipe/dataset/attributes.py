"""Per-case attributes: a CSV with a case-id column and attribute columns (sex, age group, site, scanner, ...).

The case-id column is found by its header (case-insensitive, spaces, ``_`` and ``-`` ignored): ``case_id``,
``case``, ``id``, ``subject_id``, ``file``, ``filename``, ``image``, ``name``, ..., the first one in
:data:`CASE_COLUMNS`' order. A case id in the CSV matches an evaluated case when it is equal to it, or equal
to it once a file ending is stripped (``0522c0017.nii.gz`` gives ``0522c0017``). Values are kept as text,
stripped of surrounding spaces.

Every problem names the CSV, what is wrong and the fix (:class:`~segpipe.errors.Problem`). Two users: ``evaluate
--attributes CSV --group-by COL`` (fairness per group) and ``onboard --attributes CSV``, which stores each case's
row in the workspace's dataset.json (:func:`attach_attributes`) so that trainers' losses see them in the batch
metadata and ``evaluate -w W -n N --group-by COL`` finds them without the CSV.
"""
from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from segpipe.dataset.model import CaseEntry
from segpipe.errors import Problem, SegpipeError, did_you_mean, fail
from segpipe.io.images import file_ending

# accepted headers of the case-id column, normalized (lower case, no spaces/_/-), in order of preference
CASE_COLUMNS = ("caseid", "case", "casename", "id", "subjectid", "subject", "file", "filename", "image",
                "imageid", "imagename", "name")
MAX_NAMED = 10  # cases named in one message


def _normalize(header: str) -> str:
    return re.sub(r"[\s_\-]+", "", header.strip().lower())


def strip_ending(case_id: str) -> str:
    """``case_id`` without its image file ending (``a.nii.gz`` -> ``a``), unchanged when it has none."""
    end = file_ending(case_id)
    return case_id[: -len(end)] if end and len(case_id) > len(end) else case_id


def _named(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:MAX_NAMED])
    return shown + (f" and {len(ids) - MAX_NAMED} more" if len(ids) > MAX_NAMED else "")


@dataclass(frozen=True)
class CaseAttributes:
    """The attribute CSV: ``rows[case id] = {column: value}`` (case ids as written in the CSV)."""

    file: Path
    case_column: str
    columns: tuple[str, ...]  # the attribute columns (header order, without the case column)
    rows: dict[str, dict[str, str]]
    stripped: dict[str, str] = field(init=False, repr=False)  # id without file ending -> the CSV's id

    def __post_init__(self) -> None:
        index: dict[str, str] = {}
        for rid in self.rows:
            index.setdefault(strip_ending(rid), rid)
        object.__setattr__(self, "stripped", index)

    def row_id(self, case_id: str) -> str | None:
        """The CSV's id for evaluated case ``case_id``: the same id, else one whose file ending stripped gives
        it; None when the CSV has no row for it."""
        return case_id if case_id in self.rows else self.stripped.get(case_id)

    def column(self, name: str) -> str:
        """The attribute column called ``name`` (exact, else the one column equal ignoring case); an error
        listing the columns there are when there is none."""
        if name in self.columns:
            return name
        same = [c for c in self.columns if c.lower() == name.lower()]
        if len(same) == 1:
            return same[0]
        raise fail(f"the attribute CSV has no column '{name}'{did_you_mean(name, self.columns)}; its attribute "
                   f"columns are: {', '.join(self.columns) or '(none)'}",
                   "give --group-by one of those columns (or add the column to the CSV)", file=self.file)


def _case_column(header: list[str], path: Path) -> int:
    normalized = [_normalize(h) for h in header]
    for wanted in CASE_COLUMNS:
        if wanted in normalized:
            return normalized.index(wanted)
    raise fail(f"the attribute CSV has no case-id column (header: {', '.join(header)})",
               "name the column of case ids 'case_id' (also accepted: case, id, file, image, name), holding the "
               "case ids or file names of the evaluated cases", file=path)


def read_attributes(path: Path) -> CaseAttributes:
    """Read the attribute CSV at ``path``: the header, the case-id column and one row per case. A missing or
    unreadable file, a CSV without a header, rows, or case-id column, and a case id given twice are errors."""
    path = Path(path)
    if not path.is_file():
        raise fail("attribute CSV not found", "check the path given to --attributes (a CSV with a case_id "
                   "column and one column per attribute)", file=path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            table = [r for r in csv.reader(fh) if any(v.strip() for v in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise fail(f"cannot read the attribute CSV ({e})", "give a UTF-8 CSV file with a header row",
                   file=path) from e
    if len(table) < 2:
        raise fail("the attribute CSV has no rows below its header", "give one row per case: case_id,attribute,...",
                   file=path)
    header = [h.strip() for h in table[0]]
    col = _case_column(header, path)
    columns = tuple(h for i, h in enumerate(header) if i != col)
    rows: dict[str, dict[str, str]] = {}
    dupes: list[str] = []
    for r in table[1:]:
        values = [v.strip() for v in r] + [""] * (len(header) - len(r))
        cid = values[col]
        if not cid:
            continue
        if cid in rows:
            dupes.append(cid)
        rows[cid] = {h: values[i] for i, h in enumerate(header) if i != col}
    if dupes:
        raise fail(f"case id(s) given on more than one row: {_named(sorted(set(dupes)))}",
                   "keep one row per case", file=path)
    return CaseAttributes(path, header[col], columns, rows)


def _column_groups(attrs: CaseAttributes, cases: list[str], column: str) -> tuple[dict[str, str], list[Problem]]:
    """``{case: value}`` for ``column`` and the problem of the cases whose value is empty (cases without a row
    are left out: :func:`case_groups` reports them once for all columns)."""
    try:
        name = attrs.column(column)
    except SegpipeError as e:
        return {}, e.problems
    out: dict[str, str] = {}
    empty: list[str] = []
    for cid in cases:
        rid = attrs.row_id(cid)
        if rid is not None:
            if attrs.rows[rid][name]:
                out[cid] = attrs.rows[rid][name]
            else:
                empty.append(cid)
    if not empty:
        return out, []
    return out, [Problem(f"{len(empty)} evaluated case(s) have an empty value in column '{name}': {_named(empty)}",
                         f"fill in '{name}' for them (e.g. 'unknown', which makes its own group), or leave their "
                         "predictions out of --pred", str(attrs.file))]


def case_groups(attrs: CaseAttributes, cases: Iterable[str], columns: Sequence[str]) -> dict[str, dict[str, str]]:
    """``{column: {case: its value in column}}`` for every case of ``cases`` and every column of ``columns``.
    Every problem at once: a column that does not exist (the columns there are, did-you-mean), evaluated cases
    without a row in the CSV (named), cases with an empty value (named)."""
    cases = list(cases)
    problems: list[Problem] = []
    absent = [cid for cid in cases if attrs.row_id(cid) is None]
    if absent:
        problems.append(Problem(f"{len(absent)} evaluated case(s) have no row in the attribute CSV (column "
                                f"'{attrs.case_column}'): {_named(absent)}",
                                "add a row for each of them (their case id or file name), or leave their "
                                "predictions out of --pred", str(attrs.file)))
    out: dict[str, dict[str, str]] = {}
    for column in columns:
        out[column], column_problems = _column_groups(attrs, cases, column)
        problems += column_problems
    if problems:
        raise SegpipeError(problems)
    return out


def unused_rows(attrs: CaseAttributes, cases: Iterable[str]) -> list[str]:
    """The CSV's case ids that match none of ``cases`` (rows ignored by an evaluation of ``cases``)."""
    used = {attrs.row_id(c) for c in cases}
    return sorted(rid for rid in attrs.rows if rid not in used)


def attach_attributes(cases: Sequence[CaseEntry], path: Path) -> tuple[list[str], list[Problem]]:
    """Onboarding (``onboard --attributes CSV``): give every case of ``cases`` its row of the CSV at ``path``
    (``case.attributes``, column -> value). Returns the attribute columns and the warnings: cases without a row
    (they get no attributes; the loss sees none for them and ``evaluate --group-by`` refuses them) and rows that
    match no case. An unreadable CSV or one without a case-id column is an error (:func:`read_attributes`)."""
    attrs = read_attributes(path)
    absent: list[str] = []
    for case in cases:
        rid = attrs.row_id(case.id)
        if rid is None:
            absent.append(case.id)
            case.attributes = None
        else:
            case.attributes = {c: attrs.rows[rid][c] for c in attrs.columns}
    problems: list[Problem] = []
    if absent:
        problems.append(Problem(f"{len(absent)} case(s) have no row in the attribute CSV: {_named(absent)}",
                                "add a row (case id or file name) for each, e.g. with the value 'unknown'",
                                str(path), severity="warning"))
    unused = unused_rows(attrs, [c.id for c in cases])
    if unused:
        problems.append(Problem(f"{len(unused)} row(s) of the attribute CSV match no case: {_named(unused)}",
                                "check their case ids (ignored otherwise)", str(path), severity="warning"))
    return list(attrs.columns), problems
