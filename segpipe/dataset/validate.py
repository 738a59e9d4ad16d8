"""Validation of a dataset before anything is written: every problem of every case, reported at once.

Checks per case: files readable, channel count, dimensionality, image/label geometry (shape exact; spacing,
origin and direction within tolerance), NaN/Inf intensities, integer label values that are declared and fit the
int8 label storage (0..127), single-valued (not colour) label maps, empty label maps (warning). Checks across
cases: duplicate or unsafe ids, consistent dimensionality.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segpipe.dataset.model import CaseEntry, DatasetSpec, case_id_problem, label_values, relative_path_problem
from segpipe.dataset.reading import map_label_values, resolve
from segpipe.errors import Problem, SegpipeError
from segpipe.io.images import Geometry, read_image
from segpipe.parallel import map_cases

log = logging.getLogger(__name__)

# Preprocessing stores label maps as int8 (segpipe/preprocessing/case.py): larger values cannot be kept.
MAX_LABEL_VALUE = int(np.iinfo(np.int8).max)
LABEL_RANGE_FIX = (f"renumber the classes to consecutive values 0, 1, 2, ... (at most {MAX_LABEL_VALUE} foreground "
                   "classes; store a 0/255 mask as 0/1)")


@dataclass
class CaseReport:
    """What validating one case found: problems, and facts used to complete the dataset description."""

    case: str
    problems: list[Problem] = field(default_factory=list)
    label_values: list[float] = field(default_factory=list)
    ndim: int | None = None


def _read(path: Path, case: str, problems: list[Problem]):
    try:
        return read_image(path)
    except SegpipeError as e:
        problems.extend(Problem(p.problem, p.fix, p.file, case, p.severity) for p in e.problems)
        return None, None


def validate_case(spec: DatasetSpec, raw_root: Path, case: CaseEntry, expect_ndim: int | None = None,
                  require_label: bool = True) -> CaseReport:
    """Validate one case; never raises for bad data, returns every problem found instead."""
    rep = CaseReport(case.id)
    P = rep.problems
    n_expected_files = 1 if spec.channels_in_file else spec.n_channels
    if len(case.images) != n_expected_files:
        P.append(Problem(f"expected {n_expected_files} image file(s) (channels {list(spec.channels.values())}), "
                         f"found {len(case.images)}: {case.images}",
                         "add the missing channel files (suffixes _0000, _0001, ...) or fix the channel list",
                         case=case.id))
    img_geo: Geometry | None = None
    for ch, rel in enumerate(case.images):
        try:
            path = resolve(raw_root, rel, spec.allow_external_links)
        except SegpipeError as e:
            P.extend(Problem(p.problem, p.fix, p.file, case.id) for p in e.problems)
            continue
        arr, geo = _read(path, case.id, P)
        if arr is None:
            continue
        if geo.extra.get("components", 1) > 1:
            if not np.all(arr == arr[:1]):
                P.append(Problem(f"colour image with {arr.shape[0]} components, expected a single-valued image",
                                 "convert it to grayscale", str(path), case.id))
                continue
            arr = arr[0]
        spatial_ndim = arr.ndim
        if spec.channels_in_file and spec.n_channels > 1:
            if arr.ndim != 4 or arr.shape[0] != spec.n_channels:
                P.append(Problem(f"expected a 4D file with {spec.n_channels} channels, found shape {arr.shape}",
                                 "check the dataset's modality list", str(path), case.id))
                continue
            spatial_ndim = 3
            geo = Geometry(geo.shape[1:], geo.spacing[1:], geo.origin[:3],
                           tuple(np.asarray(geo.direction).reshape(4, 4)[:3, :3].ravel()), geo.extra)
        elif arr.ndim == 4:
            P.append(Problem(f"4D image (shape {arr.shape}) where a {expect_ndim or 3}D image is expected",
                             "split the 4th dimension into one file per channel (suffixes _0000, _0001, ...)",
                             str(path), case.id))
            continue
        if expect_ndim is not None and spatial_ndim != expect_ndim:
            P.append(Problem(f"{spatial_ndim}D image in a {expect_ndim}D data set",
                             f"convert it to {expect_ndim}D or onboard it separately", str(path), case.id))
            continue
        rep.ndim = spatial_ndim
        if not np.all(np.isfinite(arr)):
            n_bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            P.append(Problem(f"{n_bad} NaN/Inf intensity value(s)", "replace them (e.g. by 0) or remove the case",
                             str(path), case.id))
        elif arr.size and np.all(arr == arr.flat[0]):
            P.append(Problem(f"image is constant (every voxel is {float(arr.flat[0]):g}): nothing to segment",
                             "re-export the image (it is probably empty or broken) or remove the case",
                             str(path), case.id))
        if case.spacing is not None:
            geo = geo.with_spacing(tuple(case.spacing))
        if img_geo is None:
            img_geo = geo
        else:
            diff = img_geo.mismatches(geo)
            if diff:
                P.append(Problem(f"channel {ch} geometry differs from channel 0: {'; '.join(diff)}",
                                 "resample all channels onto the same grid", str(path), case.id))
    if case.label is None:
        if require_label:
            P.append(Problem("training image has no label file", "add the label map, or remove the image (or, for "
                             "an nnU-Net folder used semi-supervised, declare it unlabelled in dataset.json: "
                             '"unlabelled": {"images_without_labels": true})',
                             case.images[0] if case.images else None, case.id))
        return rep
    try:
        lpath = resolve(raw_root, case.label, spec.allow_external_links)
    except SegpipeError as e:
        P.extend(Problem(p.problem, p.fix, p.file, case.id) for p in e.problems)
        return rep
    lab, lgeo = _read(lpath, case.id, P)
    if lab is None:
        return rep
    if lgeo.extra.get("components", 1) > 1:
        if not np.all(lab == lab[:1]):
            P.append(Problem(f"colour label map with {lab.shape[0]} differing components, expected one class value "
                             "per pixel", "store the label map as a single-channel (grayscale) image of class values",
                             str(lpath), case.id))
            return rep
        lab = lab[0]
    if case.spacing is not None:
        lgeo = lgeo.with_spacing(tuple(case.spacing))
    if img_geo is not None:
        diff = img_geo.mismatches(lgeo)
        if diff:
            P.append(Problem(f"label geometry differs from the image (image vs label): {'; '.join(diff)}",
                             "resample the label onto the image grid (nearest neighbour), or fix the header",
                             str(lpath), case.id))
    lab = map_label_values(lab, spec.label_value_map)
    if np.issubdtype(lab.dtype, np.floating):
        if not np.all(np.isfinite(lab)):
            P.append(Problem("label map holds NaN/Inf", "store labels as integers", str(lpath), case.id))
            return rep
        frac = lab != np.round(lab)
        if frac.any():
            bad = np.unique(lab[frac])[:5]
            P.append(Problem(f"label map holds non-integer values {[float(b) for b in bad]}",
                             "store integer class values (nearest-neighbour resampling keeps them integer)",
                             str(lpath), case.id))
            return rep
    values = np.unique(lab)
    rep.label_values = [float(v) for v in values]
    too_large = [int(v) for v in rep.label_values if v > MAX_LABEL_VALUE]
    if too_large:
        P.append(Problem(f"label value(s) {too_large[:10]} exceed {MAX_LABEL_VALUE}, the largest class value segpipe "
                         "can store (labels are kept as 8-bit integers)", LABEL_RANGE_FIX, str(lpath), case.id))
    if spec.labels:
        declared = label_values(spec.labels)
        undeclared = [v for v in rep.label_values if int(v) not in declared and v <= MAX_LABEL_VALUE]
        if undeclared:
            P.append(Problem(f"label values {[int(v) for v in undeclared]} are not declared; declared: "
                             f"{sorted(declared)}", "declare them in the labels (dataset.json or --labels) or fix "
                             "the label map", str(lpath), case.id))
    if np.all(values == 0):
        P.append(Problem("label map is empty (background only)", "check the annotation; the case is kept",
                         str(lpath), case.id, severity="warning"))
    return rep


def declared_label_problems(spec: DatasetSpec) -> list[Problem]:
    """Declared label values that preprocessing could not store (above :data:`MAX_LABEL_VALUE`)."""
    too_large = {name: v for name, v in spec.labels.items() if max(label_values({name: v})) > MAX_LABEL_VALUE}
    if not too_large:
        return []
    dj = Path(spec.source) / "dataset.json"
    where = str(dj) if spec.format in ("msd", "nnunet") and dj.is_file() else spec.source
    return [Problem(f"label value(s) {too_large} declared (dataset.json or --labels) exceed {MAX_LABEL_VALUE}, the "
                    "largest class value segpipe can store (labels are kept as 8-bit integers)", LABEL_RANGE_FIX,
                    where)]


def _validate_one(args) -> CaseReport:
    return validate_case(*args)


def validate_dataset(spec: DatasetSpec, raw_root: Path, workers: int = 1, require_label: bool = True,
                     extra_problems: list[Problem] | None = None) -> tuple[list[Problem], list[CaseReport]]:
    """Validate all cases, the unlabelled images too (as images: no label is required of them), in ``workers``
    processes. Returns (problems incl. warnings, per-case reports, the labelled cases' first)."""
    problems: list[Problem] = list(extra_problems or []) + declared_label_problems(spec)
    if not spec.cases:
        problems.append(Problem("no cases found", "check the folder and the file patterns", spec.source))
        return problems, []
    counts = Counter(c.id for c in spec.all_cases)
    for cid, n in counts.items():
        if n > 1:
            problems.append(Problem(f"case id '{cid}' occurs {n} times", "give every case a unique file name",
                                    case=cid))
    safe_cases = []
    for c in spec.all_cases:
        why = case_id_problem(c.id)
        for rel in c.images + ([c.label] if c.label else []):
            why = why or relative_path_problem(rel)
        if why:
            problems.append(Problem(why, "rename the file to a plain name (letters, digits, _ - .)",
                                    c.images[0] if c.images else None, c.id))
        else:
            safe_cases.append(c)
    expect_ndim = 2 if spec.file_ending.lower() in (".png", ".bmp", ".jpg", ".jpeg") else None
    unlabelled = {c.id for c in spec.unlabelled}
    args = [(spec, raw_root, c, expect_ndim, require_label and c.id not in unlabelled) for c in safe_cases]
    reports = map_cases(_validate_one, args, workers if len(args) > 8 else 1, "validate",
                        cases=[c.id for c in safe_cases])
    ndims = Counter(r.ndim for r in reports if r.ndim is not None)
    if len(ndims) > 1:
        major = ndims.most_common(1)[0][0]
        for r in reports:
            if r.ndim is not None and r.ndim != major:
                r.problems.append(Problem(f"{r.ndim}D image in a data set of {major}D images",
                                          "onboard 2D and 3D data as separate data sets", case=r.case))
    for r in reports:
        problems.extend(r.problems)
    return problems, reports
