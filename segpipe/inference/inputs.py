"""The input folder of ``segpipe predict``: which files make which case, and the checks made before any work.

Naming: ``<case>_0000<ending>``, ``<case>_0001<ending>``, ... per channel (nnU-Net), or for single-channel
data sets (and multi-channel 4D MSD data) one ``<case><ending>`` file per case. :func:`resolve_inputs` also

- refuses two files that give the same case id (e.g. ``a.nii.gz`` and ``a.nrrd``, or ``a_0000.nii.gz`` and
  ``a.nii.gz``), naming both;
- refuses 2D images (PNG, TIFF, BMP, JPEG carry no pixel spacing) unless the pixel size is given, either one
  for all (``pixel_spacing``, mm) or per file from the CSV onboarding reads (``spacing_csv``);
- warns when the first cases look like label maps (the user probably gave the labels folder).
"""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np

from segpipe.dataset.formats.common import check_spacing_options, read_spacing_csv, strip_ending, visible_files
from segpipe.dataset.model import CaseEntry, DatasetSpec, label_values
from segpipe.dataset.reading import map_label_values
from segpipe.errors import Problem, SegpipeError, fail
from segpipe.io.images import ENDINGS_2D, file_ending, read_image

log = logging.getLogger(__name__)

CHANNEL_RX = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")
LABEL_LIKE_CASES = 3          # at most this many cases are read to spot label maps given as images
LABEL_LIKE_SAMPLE = 1 << 20   # voxels sampled per case for that check


def _duplicate_problems(input_dir: Path, owners: dict[tuple[str, int | None], list[str]]) -> list[Problem]:
    """Problems for case ids (and channels) claimed by more than one file, and for a case given both as a
    plain file and as channel files."""
    problems = [Problem(f"{len(names)} files give case '{cid}'{'' if ch is None else f' channel {ch:04d}'}: "
                        f"{', '.join(names)}", "keep one file per case (and channel); move the others out of "
                        "the input folder", str(input_dir), cid)
                for (cid, ch), names in sorted(owners.items(),
                                               key=lambda kv: (kv[0][0], -1 if kv[0][1] is None else kv[0][1]))
                if len(names) > 1]
    plain_ids = {cid for cid, ch in owners if ch is None}
    for cid in sorted(plain_ids):
        channel_files = sorted(n for (c, ch), ns in owners.items() if c == cid and ch is not None for n in ns)
        if channel_files:
            problems.append(Problem(f"case '{cid}' is given both as {', '.join(owners[(cid, None)])} and as "
                                    f"{', '.join(channel_files)}", "keep one naming per case: either "
                                    "<case><ending> or <case>_0000<ending>; move the other file(s) out",
                                    str(input_dir), cid))
    return problems


def discover_inputs(input_dir: Path, spec: DatasetSpec) -> list[CaseEntry]:
    """Cases in ``input_dir``: ``<case>_0000<ending>``, ``_0001``, ... per channel (nnU-Net naming), or for
    single-channel data sets (and multi-channel 4D MSD data) one file per case. Two files giving the same
    case (and channel) are an error naming both."""
    files = [p for p in visible_files(input_dir) if file_ending(p.name)]
    if not files:
        raise fail("no image files found", "put the images to segment in this folder", file=input_dir)
    owners: dict[tuple[str, int | None], list[str]] = {}
    for p in files:
        m = CHANNEL_RX.match(strip_ending(p.name))
        key = (m["case"], int(m["ch"])) if m else (strip_ending(p.name), None)
        owners.setdefault(key, []).append(p.name)
    problems = _duplicate_problems(input_dir, owners)
    if problems:
        raise SegpipeError(problems)
    n_files = 1 if spec.channels_in_file else spec.n_channels
    plain = {cid: names[0] for (cid, ch), names in owners.items() if ch is None}
    by_case: dict[str, dict[int, str]] = {}
    for (cid, ch), names in owners.items():
        if ch is not None:
            by_case.setdefault(cid, {})[ch] = names[0]
    if plain and n_files != 1:
        raise fail(f"the model expects {n_files} channels {list(spec.channels.values())}; name the files "
                   "<case>_0000<ending>, <case>_0001<ending>, ...", "rename the input files", file=input_dir)
    cases = [CaseEntry(cid, [name]) for cid, name in plain.items()]
    for cid, chans in by_case.items():
        if sorted(chans) != list(range(n_files)):
            problems.append(Problem(f"expected channel files _0000.._{n_files - 1:04d}, found {sorted(chans)}",
                                    f"give {n_files} channel file(s) per case ({list(spec.channels.values())})",
                                    str(input_dir), cid))
        else:
            cases.append(CaseEntry(cid, [chans[i] for i in range(n_files)]))
    if problems:
        raise SegpipeError(problems)
    return sorted(cases, key=lambda c: c.id)


def apply_spacing(input_dir: Path, cases: list[CaseEntry], pixel_spacing: float | None = None,
                  spacing_csv: Path | None = None) -> None:
    """Set ``case.spacing`` (mm, ``(y, x)``) of 2D cases from ``pixel_spacing`` or ``spacing_csv``; refuse 2D
    cases without either, and either given for images that carry their own spacing."""
    check_spacing_options(pixel_spacing, spacing_csv)
    two_d = [c for c in cases if file_ending(c.images[0]) in ENDINGS_2D]
    if not two_d:
        if pixel_spacing is not None or spacing_csv is not None:
            raise fail("--pixel-spacing / --spacing-csv apply to 2D images (PNG, TIFF, BMP, JPEG); these images "
                       "carry their own spacing", "leave out --pixel-spacing and --spacing-csv",
                       file=input_dir / cases[0].images[0])
        return
    if pixel_spacing is None and spacing_csv is None:
        ending = file_ending(two_d[0].images[0])
        raise fail(f"{ending} images carry no pixel spacing; predicting needs the pixel size to resample to the "
                   "model's spacing (assuming 1 mm would resample e.g. a 0.08 mm ultrasound image ~12x per axis)",
                   "give --pixel-spacing MM (one size for all images) or --spacing-csv CSV (file name and pixel "
                   "size columns, as for onboarding)", file=input_dir / two_d[0].images[0])
    if pixel_spacing is not None:
        for c in two_d:
            c.spacing = [pixel_spacing, pixel_spacing]
        return
    assert spacing_csv is not None  # one of the two is given (checked above)
    by_name = read_spacing_csv(Path(spacing_csv))
    problems = []
    for c in two_d:
        name = Path(c.images[0]).name
        s = by_name.get(name)
        if s is None:
            problems.append(Problem(f"no pixel size for '{name}' in the spacing CSV", f"add a row for {name}",
                                    str(spacing_csv), c.id))
        elif not (math.isfinite(s) and s > 0):
            problems.append(Problem(f"pixel size {s} for '{name}' is not a positive number of mm", "fix the CSV",
                                    str(spacing_csv), c.id))
        else:
            c.spacing = [s, s]
    if problems:
        raise SegpipeError(problems)


def looks_like_label_map(arr: np.ndarray, spec: DatasetSpec) -> bool:
    """Whether an image (any axis order) holds only a few integer values that are all declared labels (after
    the data set's value map). Judged on at most :data:`LABEL_LIKE_SAMPLE` evenly spaced voxels."""
    flat = arr.ravel()
    sample = flat[:: max(1, flat.size // LABEL_LIKE_SAMPLE)]
    sample = map_label_values(sample, spec.label_value_map)
    if not np.all(np.isfinite(sample)) or not np.array_equal(sample, np.rint(sample)):
        return False
    values = set(np.unique(sample).astype(np.int64).tolist())
    return len(values) <= 2 * spec.n_classes and values <= label_values(spec.labels)


def warn_if_label_maps(input_dir: Path, cases: list[CaseEntry], spec: DatasetSpec) -> bool:
    """Log a warning when the first few cases' first files look like label maps; cheap: stops at the first
    case that does not. Returns whether it warned."""
    looked = cases[:LABEL_LIKE_CASES]
    for c in looked:
        arr, geo = read_image(input_dir / c.images[0])
        if geo.extra.get("components", 1) > 1:
            arr = arr[0]
        if not looks_like_label_map(arr, spec):
            return False
    log.warning("the input images in %s look like label maps (the first %d hold only a few integer values, all "
                "of them labels %s): did you point --input at the labels folder? Give the images to segment.",
                input_dir, len(looked), spec.labels)
    return True


def input_spec(spec: DatasetSpec, root: Path, cases: list[CaseEntry]) -> DatasetSpec:
    """The data set ``spec`` describing ``cases`` of an input folder ``root`` (outside the workspace): what
    :func:`segpipe.dataset.reading.read_channels` reads a predict input with."""
    return DatasetSpec(spec.name, str(root), spec.format, spec.channels, spec.labels, spec.file_ending, cases,
                       channels_in_file=spec.channels_in_file, allow_external_links=True,
                       regions_class_order=spec.regions_class_order)


def resolve_inputs(input_dir: Path, spec: DatasetSpec, pixel_spacing: float | None = None,
                   spacing_csv: Path | None = None) -> list[CaseEntry]:
    """The cases of ``input_dir`` ready for prediction: discovered (:func:`discover_inputs`), 2D cases given
    their pixel size in mm (:func:`apply_spacing`), and a warning when they look like label maps."""
    input_dir = Path(input_dir)
    cases = discover_inputs(input_dir, spec)
    apply_spacing(input_dir, cases, pixel_spacing, spacing_csv)
    warn_if_label_maps(input_dir, cases, spec)
    return cases
