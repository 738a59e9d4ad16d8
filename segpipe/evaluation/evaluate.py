"""``segpipe evaluate``: compare a folder of predicted label maps with a folder of reference label maps.

Cases are matched by file name (image ending removed), or with ``ref_glob`` by a pattern whose ``*`` is the
case id (HC18: ``*_Mask.png``). Label maps are read the way onboarding reads them: multi-component (RGB) masks
use their first component, and 2D masks (PNG, TIFF, ...) stored as 0/255 are mapped 255 -> 1 unless 255 is a
declared label. 2D files carry no pixel spacing: give ``pixel_spacing`` (mm) or a ``spacing_csv`` (the CSV
onboarding reads) so that HD95, surface Dice and volumes are in mm. Every problem of every case is reported
before anything is written: ``summary.json`` (per case and class, means per class with the number of cases
each is over, foreground mean; :func:`segpipe.evaluation.summary.summarize`) and ``metrics.csv`` (one row per
case and class) go to a folder outside the prediction and reference folders. Registered metrics
(:mod:`segpipe.evaluation.metric_registry`, plug-ins' included) are added to both, per case and class and in the
means: every cheap one by default, or those named by ``metrics``.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from segpipe.dataset.attributes import CaseAttributes
from segpipe.dataset.formats.common import check_spacing_options, read_spacing_csv
from segpipe.dataset.model import label_values
from segpipe.dataset.reading import map_label_values
from segpipe.errors import Problem, SegpipeError, fail
from segpipe.evaluation.fairness import fairness, load_groupings
from segpipe.evaluation.metric_registry import add_registered_metrics, chosen_metrics, metric_key
from segpipe.evaluation.metrics import case_metrics
from segpipe.evaluation.summary import SUMMARY_METRICS, SummaryMetric, summarize
from segpipe.io.atomic import atomic_write_text
from segpipe.io.images import ENDINGS_2D, Geometry, file_ending, read_image
from segpipe.io.jsonio import write_json
from segpipe.parallel import map_cases

log = logging.getLogger(__name__)

CSV_METRICS = ("dice", "iou", "precision", "recall", "hd95_mm", "surface_dice", "volume_pred_mm3",
               "volume_ref_mm3", "empty_reference_and_prediction")
OUTPUT_SUFFIX = "_evaluation"


def default_output(pred_dir: Path) -> Path:
    """The default output folder: ``<pred>_evaluation`` beside the prediction folder (a new folder, so that
    nothing is written into the user's folders)."""
    pred = Path(pred_dir).resolve()
    return pred.parent / f"{pred.name}{OUTPUT_SUFFIX}"


def check_output_folder(output: Path, pred_dir: Path, ref_dir: Path) -> None:
    """Refuse an output folder that is, or lies inside, the prediction or the reference folder (symlinks
    resolved), or that exists as a file."""
    out = Path(output).resolve()
    for role, option, folder in (("prediction", "--pred", pred_dir), ("reference", "--ref", ref_dir)):
        real = Path(folder).resolve()
        if out == real or real in out.parents:
            where = "is" if out == real else "lies inside"
            raise fail(f"the output folder {where} the {role} folder ({option} {folder}); segpipe never writes "
                       "into the user's folders",
                       f"give --output a folder outside --pred and --ref, e.g. --output {default_output(pred_dir)}",
                       file=output)
    if out.exists() and not out.is_dir():
        raise fail("the output path exists and is not a folder", "give --output a folder (it is created)",
                   file=output)


def check_tolerance(tolerance_mm: float | dict[str, float]) -> None:
    """Refuse a negative, NaN or infinite surface Dice tolerance (mm)."""
    items = tolerance_mm.items() if isinstance(tolerance_mm, dict) else [(None, tolerance_mm)]
    for name, tol in items:
        ok = isinstance(tol, (int, float)) and not isinstance(tol, bool) and math.isfinite(tol) and tol >= 0
        if not ok:
            what = f" of class '{name}'" if name else ""
            raise fail(f"surface Dice tolerance{what} {tol!r} mm is not a finite number >= 0",
                       "give --tolerance in mm, 0 or more (default 1), e.g. --tolerance 2")


def _glob_cases(folder: Path, pattern: str) -> dict[str, list[Path]]:
    """Files of ``folder`` matching ``pattern`` (relative, one ``*`` = the case id), by case id."""
    if pattern.count("*") != 1 or ".." in Path(pattern).parts or Path(pattern).is_absolute():
        raise fail(f"--ref-glob '{pattern}' must be relative to --ref, without '..', and hold exactly one '*' "
                   "(the case id)", "write e.g. --ref-glob '*_Mask.png'")
    rx = re.compile("^" + re.escape(pattern).replace(r"\*", "(.+)") + "$")
    out: dict[str, list[Path]] = {}
    for p in sorted(folder.glob(pattern)):
        m = rx.match(p.relative_to(folder).as_posix())
        if m and p.is_file() and not p.name.startswith("."):
            out.setdefault(m.group(1), []).append(p)
    if not out:
        raise fail(f"no file matches --ref-glob '{pattern}'", "check the pattern ('*' stands for the case id, "
                   "e.g. '*_Mask.png' for 000_HC_Mask.png)", file=folder)
    return out


def _cases(folder: Path, option: str = "--ref", glob: str | None = None) -> dict[str, Path]:
    """Label map files of ``folder`` by case id (file name without its image ending, or what ``*`` of
    ``glob`` matched). Two files with the same case id are an error naming both."""
    if not folder.is_dir():
        raise fail("folder not found", f"check the path given to {option}", file=folder)
    if glob is not None:
        found = _glob_cases(folder, glob)
    else:
        found = {}
        for p in sorted(folder.iterdir()):
            end = file_ending(p.name)
            if end and p.is_file() and not p.name.startswith("."):
                found.setdefault(p.name[: -len(end)], []).append(p)
    dupes = [Problem(f"{len(ps)} files have case id '{cid}': {', '.join(p.name for p in ps)}",
                     f"keep one file per case in the {option} folder (move the others elsewhere)", str(folder), cid)
             for cid, ps in found.items() if len(ps) > 1]
    if dupes:
        raise SegpipeError(dupes)
    return {cid: ps[0] for cid, ps in found.items()}


def value_map_for(path: Path, labels: Mapping[str, Any] | None,
                  label_value_map: dict[str, int] | None = None) -> dict[str, int] | None:
    """The label value map used for ``path``, as onboarding chooses it: the data set's own map when given,
    else ``{"255": 1}`` for 2D formats unless 255 is a declared label."""
    if label_value_map:
        return label_value_map
    if file_ending(path) in ENDINGS_2D and (labels is None or 255 not in label_values(labels)):
        return {"255": 1}
    return None


def read_label_map(path: Path, labels: Mapping[str, Any] | None,
                   label_value_map: dict[str, int] | None = None) -> tuple[np.ndarray, Geometry]:
    """A label map ``(z, y, x)`` / ``(y, x)`` as onboarding reads it: first component of RGB(A) masks, values
    mapped by :func:`value_map_for`. Values are returned as stored (not rounded)."""
    arr, geo = read_image(path)
    if geo.extra.get("components", 1) > 1:
        arr = arr[0]
    return map_label_values(arr, value_map_for(path, labels, label_value_map)), geo


def _values(arr: np.ndarray) -> list[int]:
    """Distinct values of an integer-valued array (bincount when small and non-negative: fast on big volumes)."""
    a = arr.astype(np.int64, copy=False).ravel()
    if a.size and a.min() >= 0 and a.max() < 1 << 16:
        return [int(v) for v in np.flatnonzero(np.bincount(a))]
    return [int(v) for v in np.unique(a)]


def _label_problems(arr: np.ndarray, path: Path, cid: str, labels: Mapping[str, Any], role: str) -> list[Problem]:
    """Non-integer values, or values that are not declared labels, in a prediction or reference."""
    if arr.dtype.kind == "f" and (not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.rint(arr))):
        return [Problem(f"{role} holds non-integer values: not a label map",
                        "give label maps (one integer class value per voxel), not probabilities or images",
                        str(path), cid)]
    extra = sorted(set(_values(arr)) - label_values(labels))
    if not extra:
        return []
    fix = ("predict with the model of this data set, or declare the classes with --labels NAME=VALUE ..."
           if role == "prediction" else
           "declare every class with --labels NAME=VALUE ... (or give --workspace of the data set the references "
           "belong to)")
    return [Problem(f"{role} has label value(s) {extra[:10]} that are not among the labels {labels}", fix,
                    str(path), cid)]


def _one(args) -> tuple[str, dict | None, list[Problem]]:
    cid, pred_path, ref_path, labels, tol, surface, value_map, spacing, registered = args
    pred, pg = read_label_map(pred_path, labels, value_map)
    ref, rg = read_label_map(ref_path, labels, value_map)
    problems = (_label_problems(pred, pred_path, cid, labels, "prediction")
                + _label_problems(ref, ref_path, cid, labels, "reference"))
    diff = pg.mismatches(rg)
    if diff:
        problems.append(Problem(f"prediction geometry differs from the reference: {'; '.join(diff)}",
                                "export predictions in the reference images' geometry", str(pred_path), cid))
    if problems:
        return cid, None, problems
    if spacing is not None:
        rg = rg.with_spacing(spacing)
    pred_i, ref_i = np.rint(pred).astype(np.int32), np.rint(ref).astype(np.int32)
    record = case_metrics(pred_i, ref_i, labels, rg.spacing, tol, surface)
    return cid, add_registered_metrics(record, pred_i, ref_i, labels, rg.spacing, registered), []


def _spacings(common: list[str], preds: dict[str, Path], refs: dict[str, Path], pixel_spacing: float | None,
              spacing_csv: Path | None) -> tuple[dict[str, tuple[float, float] | None], str]:
    """Pixel size (mm, ``(y, x)``) per case for 2D references, and where it came from."""
    is_2d = {c: file_ending(refs[c]) in ENDINGS_2D for c in common}
    if not any(is_2d.values()):
        if pixel_spacing is not None or spacing_csv is not None:
            raise fail("--pixel-spacing / --spacing-csv apply to 2D references (PNG, TIFF, ...); these carry "
                       "their own spacing", "leave out --pixel-spacing and --spacing-csv", file=refs[common[0]])
        return {c: None for c in common}, "files"
    if pixel_spacing is None and spacing_csv is None:
        log.warning("2D reference files carry no pixel spacing: HD95, surface Dice and volumes are in pixels "
                    "(1 mm assumed); give --pixel-spacing MM or --spacing-csv CSV for mm")
        return {c: None for c in common}, "assumed 1 mm (2D files carry none)"
    if pixel_spacing is not None:
        return {c: (pixel_spacing, pixel_spacing) if is_2d[c] else None for c in common}, "--pixel-spacing"
    assert spacing_csv is not None  # one of the two is given (checked above)
    by_name = read_spacing_csv(Path(spacing_csv))
    out: dict[str, tuple[float, float] | None] = {}
    problems = []
    for c in common:
        names = [preds[c].name, refs[c].name, *(c + e for e in ENDINGS_2D)]
        s = next((by_name[n] for n in names if n in by_name), None)
        if not is_2d[c]:
            out[c] = None
        elif s is None:
            problems.append(Problem(f"no pixel size for case '{c}' ({refs[c].name}) in the spacing CSV (looked "
                                    f"for {', '.join(names[:3])}, ...)", "add a row for it", str(spacing_csv), c))
        elif not (math.isfinite(s) and s > 0):
            problems.append(Problem(f"pixel size {s} for case '{c}' is not a positive number of mm",
                                    "fix the CSV", str(spacing_csv), c))
        else:
            out[c] = (s, s)
    if problems:
        raise SegpipeError(problems)
    return out, f"--spacing-csv {spacing_csv}"


def evaluate_folders(pred_dir: Path, ref_dir: Path, labels: Mapping[str, Any], output: Path | None = None,
                     tolerance_mm: float | dict[str, float] = 1.0, workers: int = 1, surface: bool = True, *,
                     ref_glob: str | None = None, pixel_spacing: float | None = None,
                     spacing_csv: Path | None = None, label_value_map: dict[str, int] | None = None,
                     attributes: Path | CaseAttributes | None = None, group_by: Sequence[str] = (),
                     metrics: Sequence[str] | None = None) -> dict:
    """Metrics of every prediction that has a reference; writes ``summary.json`` and ``metrics.csv`` to
    ``output`` (when given) only after every case passed its checks.

    ``tolerance_mm``: surface Dice tolerance (mm, >= 0; one for all classes or per class name). ``ref_glob``:
    reference file pattern whose ``*`` is the case id. ``pixel_spacing`` (mm) / ``spacing_csv``: pixel size of
    2D references. ``label_value_map``: the data set's value map (default: 255 -> 1 for 2D files).
    ``attributes`` (a CSV: case id + attribute columns) with ``group_by`` (its columns): every metric per group
    and ES-Dice in ``summary["groups"]`` (:mod:`segpipe.evaluation.fairness`), the CSV checked before any case is
    evaluated; the group columns are appended to metrics.csv. ``metrics``: the registered metrics to add
    (:func:`segpipe.evaluation.metric_registry.chosen_metrics`; default every cheap one), per case and class and
    averaged like the built-in ones; ``summary["registered_metrics"]`` maps each to its key in the records.
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    check_tolerance(tolerance_mm)
    check_spacing_options(pixel_spacing, spacing_csv)
    registered = chosen_metrics(metrics)
    preds, refs = _cases(pred_dir, "--pred"), _cases(ref_dir, "--ref", ref_glob)
    missing = sorted(set(refs) - set(preds))
    if not preds:
        raise fail("no predictions found", "point --pred at a folder of label maps", file=pred_dir)
    if missing:
        log.warning("%d reference case(s) have no prediction and are skipped: %s", len(missing), missing[:5])
    common = sorted(set(refs) & set(preds))
    if not common:
        raise fail(f"no prediction matches a reference (predictions e.g. {sorted(preds)[:3]}, references e.g. "
                   f"{sorted(refs)[:3]})", "name predictions like the references, or match the references with "
                   "--ref-glob (e.g. --ref-glob '*_Mask.png' for <case>_Mask.png)", file=pred_dir)
    spacings, spacing_source = _spacings(common, preds, refs, pixel_spacing, spacing_csv)
    groupings, attributes_info = load_groupings(attributes, group_by, common)
    results = map_cases(_one, [(c, preds[c], refs[c], labels, tolerance_mm, surface, label_value_map, spacings[c],
                                registered) for c in common], workers, "evaluate", cases=common)
    problems = [p for _, _, ps in results for p in ps]
    if problems:
        raise SegpipeError(problems)
    per_case = {cid: m for cid, m, _ in results}
    extra = tuple(k for k in dict.fromkeys(metric_key(n) for n in registered) if k not in SUMMARY_METRICS)
    averaged = cast("tuple[SummaryMetric, ...]", (*SUMMARY_METRICS, *extra))  # and the registered metrics' keys
    summary = {"pred": str(pred_dir), "ref": str(ref_dir), "labels": labels, "tolerance_mm": tolerance_mm,
               "spacing": spacing_source, "missing_predictions": missing,
               "registered_metrics": {n: metric_key(n) for n in registered}, "cases": per_case,
               **summarize(per_case, labels, averaged)}
    if groupings:
        summary["attributes"] = attributes_info
        summary["groups"] = fairness(per_case, groupings, labels, averaged, overall=summary)
    if output is not None:
        write_json(Path(output) / "summary.json", summary, kind="evaluation")
        atomic_write_text(Path(output) / "metrics.csv", to_csv(per_case, groupings, extra))
    return summary


def to_csv(per_case: dict[str, dict[str, dict]], groupings: Mapping[str, Mapping[str, str]] | None = None,
           registered: Sequence[str] = ()) -> str:
    """metrics.csv: one row per case and class; ``registered`` (record keys of registered metrics) appends one
    column each after the built-in ones, and ``groupings`` (``{column: {case: group}}``) one column per grouping
    (named ``group_<column>`` where the column's name is already taken)."""
    groupings = groupings or {}
    columns = [*CSV_METRICS, *(k for k in registered if k not in CSV_METRICS)]
    taken = {"case", "class", *columns}
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["case", "class", *columns, *(f"group_{c}" if c in taken else c for c in groupings)])
    for cid, classes in per_case.items():
        groups = [g[cid] for g in groupings.values()]
        for name, m in classes.items():
            w.writerow([cid, name, *[m.get(k, "") for k in columns], *groups])
    return buf.getvalue()


def labels_from_references(ref_dir: Path, ref_glob: str | None = None,
                           label_value_map: dict[str, int] | None = None) -> dict[str, int]:
    """Labels named ``label_<v>`` for every value found in the references (when none are given), after the
    value map (0/255 2D masks give ``label_1``)."""
    values: set[int] = set()
    for p in _cases(Path(ref_dir), "--ref", ref_glob).values():
        arr, _ = read_label_map(p, None, label_value_map)
        values |= {int(v) for v in np.unique(np.rint(arr[np.isfinite(arr)]))}
    return {"background": 0, **{f"label_{v}": v for v in sorted(values - {0})}}


def record_evaluation(ws, pred_dir: Path, ref_dir: Path, output: Path, settings: dict) -> None:
    """Record an evaluation in the workspace's records/ (provenance: which files were compared, how, and
    what was written), never in the user's folders."""
    from segpipe import records

    files = [p for d in (pred_dir, ref_dir) for p in sorted(Path(d).iterdir()) if p.is_file()]
    records.write_output_record(ws, "evaluate", output, records.input_state([], files), settings,
                                [Path(output) / "summary.json", Path(output) / "metrics.csv"])
