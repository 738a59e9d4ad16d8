"""Options and helpers shared by the onboarding converters."""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from segpipe.errors import Problem, fail
from segpipe.io.images import file_ending


@dataclass
class OnboardOptions:
    """What the user told ``segpipe onboard`` about the folder.

    ``labels``: name -> value when the folder does not declare them. ``channels``: channel names in order.
    ``image_globs``/``label_glob``: flat layout patterns with one ``*`` standing for the case id.
    ``spacing_csv``/``pixel_spacing``: pixel size (mm) for 2D formats that carry none.
    ``subject_csv`` (+ ``subject_column``) or ``subject_pattern``: which subject each case belongs to, so that
    cross-validation keeps a subject's cases in one fold (see :mod:`segpipe.dataset.subjects`).
    ``attributes_csv``: per-case attributes (a case-id column plus columns such as sex, site, scanner), stored
    per case in dataset.json (see :func:`segpipe.dataset.attributes.attach_attributes`).
    """

    name: str
    format: str = "auto"
    channels: list[str] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)
    image_globs: list[str] = field(default_factory=list)
    label_glob: str | None = None
    spacing_csv: Path | None = None
    pixel_spacing: float | None = None
    subject_csv: Path | None = None
    subject_column: str | None = None
    subject_pattern: str | None = None
    attributes_csv: Path | None = None


def visible_files(folder: Path) -> list[Path]:
    """Files in ``folder`` that are not hidden (skips macOS ``._*`` resource forks and dot-files)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def strip_ending(name: str) -> str:
    end = file_ending(name)
    return name[: -len(end)] if end else name


def channel_key_problems(declared: dict, field_name: str, path: Path) -> list[Problem]:
    """Problems with a dataset.json channel map (``modality``/``channel_names``): its keys must be the channel
    indices ``"0"``, ``"1"``, ... each once. Empty list when it is fine."""
    if not declared:
        return [Problem(f"dataset.json '{field_name}' declares no channel",
                        f'name the channels, e.g. "{field_name}": {{"0": "CT"}}', str(path))]
    bad = [k for k in declared if not str(k).strip().isdigit()]
    if bad:
        return [Problem(f"dataset.json '{field_name}' key(s) {bad} are not channel numbers",
                        f'number the channels from 0, e.g. "{field_name}": {{"0": "{declared[bad[0]]}"}} '
                        "(or give the channel names with --channels)", str(path))]
    indices = sorted(int(k) for k in declared)
    if indices != list(range(len(declared))):
        return [Problem(f"dataset.json '{field_name}' keys {list(declared)} are not the channel numbers "
                        f"0..{len(declared) - 1}, each once",
                        "number the channels 0, 1, 2, ... in file order (or give --channels)", str(path))]
    return []


def channels_from(options: OnboardOptions, declared: dict[str, str] | None, n_default: int = 1) -> dict[str, str]:
    """Channel index (``"0"``, ...) -> name: from ``--channels``, else the checked ``declared`` map, else defaults."""
    if options.channels:
        return {str(i): c for i, c in enumerate(options.channels)}
    if declared:
        return {str(k): str(v) for k, v in sorted(declared.items(), key=lambda kv: int(kv[0]))}
    return {str(i): "image" if n_default == 1 else f"channel_{i}" for i in range(n_default)}


def check_spacing_options(pixel_spacing: float | None, spacing_csv: Path | None) -> None:
    """Refuse ``--pixel-spacing`` together with ``--spacing-csv``, and a pixel size that is not positive mm."""
    if pixel_spacing is not None and spacing_csv is not None:
        raise fail("both --pixel-spacing and --spacing-csv given", "give one of them")
    if pixel_spacing is not None and not (math.isfinite(pixel_spacing) and pixel_spacing > 0):
        raise fail(f"--pixel-spacing {pixel_spacing} is not a positive number of mm",
                   "give the pixel size in mm, e.g. --pixel-spacing 0.08")


def read_spacing_csv(path: Path) -> dict[str, float]:
    """Pixel size per image file name from a CSV (a 'file'/'name' column and a 'pixel size'/'spacing' column)."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
    except OSError as e:
        raise fail(f"cannot read spacing CSV ({e.strerror})", "check the path given to --spacing-csv",
                   file=path) from e
    if len(rows) < 2:
        raise fail("spacing CSV has no rows", "give a CSV with a header and one row per image", file=path)
    header = [h.strip().lower() for h in rows[0]]
    name_col = next((i for i, h in enumerate(header) if "file" in h or "name" in h or "image" in h), None)
    sp_col = next((i for i, h in enumerate(header) if "pixel size" in h or "spacing" in h or "pixel_size" in h),
                  None)
    if name_col is None or sp_col is None:
        raise fail(f"spacing CSV header {rows[0]} has no file-name column or no 'pixel size'/'spacing' column",
                   "name the columns e.g. 'filename,pixel size(mm)'", file=path)
    out: dict[str, float] = {}
    for r in rows[1:]:
        if len(r) <= max(name_col, sp_col) or not r[name_col].strip():
            continue
        try:
            out[Path(r[name_col].strip()).name] = float(r[sp_col])
        except ValueError as e:
            raise fail(f"spacing '{r[sp_col]}' for {r[name_col]} is not a number", "fix the CSV",
                       file=path) from e
    return out


def load_user_json(path: Path, fields: tuple[tuple[str, type], ...], layout: str) -> tuple[dict, list[Problem]]:
    """Read a user's dataset.json and check that ``fields`` exist with the right types (all problems at once)."""
    import json

    try:
        d = json.loads(path.read_text())
    except ValueError as e:
        raise fail(f"dataset.json is not valid JSON ({e})", "fix its syntax", file=path) from None
    if not isinstance(d, dict):
        raise fail("dataset.json must hold a JSON object", f"write it as in the {layout} format", file=path)
    problems = []
    for key, typ in fields:
        if key not in d:
            problems.append(Problem(f"dataset.json has no '{key}' field", f"add '{key}' as in the {layout} format",
                                    str(path)))
        elif not isinstance(d[key], typ):
            problems.append(Problem(f"dataset.json field '{key}' should be a {typ.__name__}, found "
                                    f"{type(d[key]).__name__}", "fix the field's type", str(path)))
    return d, problems
