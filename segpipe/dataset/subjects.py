"""Which subject (person) each case belongs to, so that cross-validation keeps a subject's cases in one fold.

Two sources, given to ``segpipe onboard``:

- ``--subject-csv CSV [--subject-column COL]``: a CSV with a case column (header containing ``case``, ``id``,
  ``file``, ``image`` or ``name``; values are case ids or file names) and a subject column (``COL``, default
  ``subject``).
- ``--subject-pattern REGEX``: a regular expression searched in each case id; its named group ``subject``, or
  else its first group, is the subject (HC18: ``'^(\\d{3})_'`` groups ``010_HC`` with ``010_2HC``).

Every case must get a subject; anything else is an error naming the case (a case silently left ungrouped could
leak a subject across folds).
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

from segpipe.dataset.formats.common import OnboardOptions, strip_ending
from segpipe.dataset.model import CaseEntry
from segpipe.errors import Problem, fail

CASE_COLUMN_HINTS = ("case", "id", "file", "image", "name")


def assign_subjects(cases: list[CaseEntry], options: OnboardOptions) -> list[Problem]:
    """Set ``case.subject`` for every case from the options; returns per-case problems (cases left without one).

    Raises a :class:`~segpipe.errors.SegpipeError` for unusable options (both sources given, a bad regex, an
    unreadable CSV or one without the needed columns, a pattern matching no case at all).
    """
    if options.subject_csv is not None and options.subject_pattern is not None:
        raise fail("both --subject-csv and --subject-pattern given", "give only one of them")
    if options.subject_column is not None and options.subject_csv is None:
        raise fail("--subject-column given without --subject-csv", "add --subject-csv CSV, or drop --subject-column")
    if options.subject_pattern is not None:
        return _from_pattern(cases, options.subject_pattern)
    if options.subject_csv is not None:
        return _from_csv(cases, Path(options.subject_csv), options.subject_column or "subject")
    return []


def _from_pattern(cases: list[CaseEntry], pattern: str) -> list[Problem]:
    example = r"'^(\d{3})_' (or '^(?P<subject>\d{3})_')"
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise fail(f"--subject-pattern '{pattern}' is not a valid regular expression ({e})",
                   f"fix the pattern, e.g. {example}") from None
    if rx.groups == 0:
        raise fail(f"--subject-pattern '{pattern}' has no group marking the subject part of the case id",
                   f"put the subject part in parentheses, e.g. {example}")
    group: str | int = "subject" if "subject" in rx.groupindex else 1
    unmatched = []
    for c in cases:
        m = rx.search(c.id)
        subject = m.group(group) if m else None
        if subject:
            c.subject = subject
        else:
            unmatched.append(c)
    if cases and len(unmatched) == len(cases):
        raise fail(f"--subject-pattern '{pattern}' matches none of the {len(cases)} case ids "
                   f"(e.g. {[c.id for c in cases[:3]]})",
                   f"write a pattern for these ids, e.g. {example}")
    return [Problem(f"--subject-pattern '{pattern}' does not match the case id (or its subject group is empty)",
                    "widen the pattern so that it gives every case id a subject", case=c.id) for c in unmatched]


def _from_csv(cases: list[CaseEntry], path: Path, column: str) -> list[Problem]:
    by_key = read_subject_csv(path, column)
    problems = []
    for c in cases:
        keys = [c.id] + ([Path(c.images[0]).name, strip_ending(Path(c.images[0]).name)] if c.images else [])
        subject = next((by_key[k] for k in keys if k in by_key), None)
        if subject is None:
            problems.append(Problem("no row for this case in the subject CSV",
                                    f"add a row with the case id ('{c.id}') and its {column}", str(path), c.id))
        else:
            c.subject = subject
    return problems


def read_subject_csv(path: Path, column: str) -> dict[str, str]:
    """Subject per key, where keys are the case column's values as written, as file names and without ending."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
    except OSError as e:
        raise fail(f"cannot read subject CSV ({e.strerror})", "check the path given to --subject-csv",
                   file=path) from None
    except UnicodeDecodeError:
        raise fail("subject CSV is not a text file", "give a CSV (comma-separated text)", file=path) from None
    if len(rows) < 2:
        raise fail("subject CSV has no rows", "give a CSV with a header and one row per case", file=path)
    header = [h.strip() for h in rows[0]]
    lower = [h.lower() for h in header]
    if column.lower() not in lower:
        raise fail(f"subject CSV has no column '{column}' (columns: {header})",
                   "name the subject column with --subject-column", file=path)
    sub_col = lower.index(column.lower())
    case_col = next((i for w in CASE_COLUMN_HINTS for i, h in enumerate(lower) if i != sub_col and w in h), None)
    if case_col is None:
        raise fail(f"subject CSV has no case column (columns: {header})",
                   "add a column named 'case' holding the case ids (or file names)", file=path)
    out: dict[str, str] = {}
    for n, r in enumerate(rows[1:], start=2):
        if len(r) <= max(case_col, sub_col) or not r[case_col].strip():
            continue
        case, subject = r[case_col].strip(), r[sub_col].strip()
        if not subject:
            raise fail(f"row {n} ('{case}') has an empty {header[sub_col]}", "fill in the subject", file=path)
        name = Path(case.replace("\\", "/")).name
        for key in dict.fromkeys((case, name, strip_ending(name))):
            if out.get(key, subject) != subject:
                raise fail(f"'{key}' is given two subjects ('{out[key]}' and '{subject}')",
                           "give each case one subject", file=path)
            out[key] = subject
    return out
