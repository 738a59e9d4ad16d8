"""Flat folders: images and labels matched by glob patterns in which ``*`` stands for the case id.

Example (HC18 fetal head PNGs): ``--image-glob 'images/*.png' --label-glob 'masks/*_Mask.png'`` matches
``images/000_HC.png`` with ``masks/000_HC_Mask.png`` as case ``000_HC``. Repeat ``--image-glob`` once per
channel. 2D formats (PNG, TIFF, ...) carry no spacing: give ``--spacing-csv`` or ``--pixel-spacing``
(default 1 mm, with a warning). Masks stored as 0/255 are mapped to 0/1.
"""
from __future__ import annotations

import re
from pathlib import Path

from segpipe.dataset.formats.common import OnboardOptions, channels_from, read_spacing_csv
from segpipe.dataset.model import CaseEntry, DatasetSpec
from segpipe.errors import Problem, fail
from segpipe.io.images import ENDINGS_2D, file_ending


def _match(source: Path, pattern: str) -> dict[str, str]:
    """Files matching ``pattern`` (relative to ``source``), keyed by what ``*`` matched."""
    if pattern.count("*") != 1 or ".." in Path(pattern).parts or Path(pattern).is_absolute():
        raise fail(f"pattern '{pattern}' must be relative, without '..', and hold exactly one '*' (the case id)",
                   "write e.g. 'images/*.nii.gz' or '*_seg.nii.gz'")
    rx = re.compile("^" + re.escape(pattern).replace(r"\*", "(.+)") + "$")
    out: dict[str, str] = {}
    for p in sorted(source.glob(pattern)):
        rel = p.relative_to(source).as_posix()
        m = rx.match(rel)
        if m and p.is_file() and not p.name.startswith("."):
            out[m.group(1)] = rel
    return out


def discover_flat(source: Path, options: OnboardOptions) -> tuple[DatasetSpec, list[Problem]]:
    problems: list[Problem] = []
    if not options.image_globs or not options.label_glob:
        raise fail("a flat folder needs --image-glob and --label-glob",
                   "e.g. --image-glob 'images/*.png' --label-glob 'masks/*_Mask.png'", file=source)
    per_channel = [_match(source, g) for g in options.image_globs]
    labels_by_id = _match(source, options.label_glob)
    if not per_channel[0]:
        raise fail(f"no file matches --image-glob '{options.image_globs[0]}'", "check the pattern", file=source)
    ids = sorted(set().union(*per_channel))
    first = per_channel[0][ids[0]] if ids[0] in per_channel[0] else next(iter(per_channel[0].values()))
    ending = file_ending(first)
    is_2d = ending in ENDINGS_2D
    spacing_by_name: dict[str, float] = {}
    if options.spacing_csv is not None:
        spacing_by_name = read_spacing_csv(options.spacing_csv)
    elif options.pixel_spacing is None and is_2d:
        problems.append(Problem(f"{ending} files carry no pixel spacing; assuming 1 mm",
                                "give --spacing-csv FILE or --pixel-spacing MM for physical units", str(source),
                                severity="warning"))
    cases = []
    for cid in ids:
        found = [ch.get(cid) for ch in per_channel]
        missing = [g for g, f in zip(options.image_globs, found) if f is None]
        if missing:
            problems.append(Problem(f"no channel file for pattern(s) {missing}", "add the files or fix the patterns",
                                    str(source), cid))
            continue
        files = [f for f in found if f is not None]
        spacing = None
        if is_2d:
            s = options.pixel_spacing or 1.0
            if spacing_by_name:
                name = Path(files[0]).name
                if name not in spacing_by_name:
                    problems.append(Problem(f"no pixel size for '{name}' in the spacing CSV",
                                            "add a row for it", str(options.spacing_csv), cid))
                    continue
                s = spacing_by_name[name]
            spacing = [s, s]
        cases.append(CaseEntry(cid, files, labels_by_id.get(cid), spacing))
    for lid in sorted(set(labels_by_id) - set(ids)):
        problems.append(Problem("label file without an image", "add the image or fix the patterns",
                                labels_by_id[lid], lid))
    channels = channels_from(options, None, n_default=len(options.image_globs))
    spec = DatasetSpec(name=options.name, source=str(source), format="flat", channels=channels,
                       labels=dict(options.labels), file_ending=ending, cases=cases)
    return spec, problems
