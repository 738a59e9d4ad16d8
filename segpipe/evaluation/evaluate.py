"""``segpipe evaluate``: compare a folder of predicted label maps with a folder of reference label maps.

Cases are matched by file name (image ending removed). Writes ``summary.json`` (per case and class, means per
class, foreground mean) and ``metrics.csv`` (one row per case and class).
"""
from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np

from segpipe.errors import Problem, SegpipeError, fail
from segpipe.evaluation.metrics import case_metrics
from segpipe.io.atomic import atomic_write_text
from segpipe.io.images import file_ending, read_image
from segpipe.io.jsonio import write_json
from segpipe.parallel import map_cases

log = logging.getLogger(__name__)

CSV_METRICS = ("dice", "iou", "precision", "recall", "hd95_mm", "surface_dice", "volume_pred_mm3",
               "volume_ref_mm3", "empty_reference_and_prediction")


def _cases(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise fail("folder not found", "check the path", file=folder)
    out = {}
    for p in sorted(folder.iterdir()):
        end = file_ending(p.name)
        if end and p.is_file() and not p.name.startswith("."):
            out[p.name[: -len(end)]] = p
    return out


def _one(args) -> tuple[str, dict | None, list[Problem]]:
    cid, pred_path, ref_path, labels, tol, surface = args
    pred, pg = read_image(pred_path)
    ref, rg = read_image(ref_path)
    if pg.extra.get("components", 1) > 1:
        pred = pred[0]
    if rg.extra.get("components", 1) > 1:
        ref = ref[0]
    diff = pg.mismatches(rg)
    if diff:
        return cid, None, [Problem(f"prediction geometry differs from the reference: {'; '.join(diff)}",
                                   "export predictions in the reference images' geometry", str(pred_path), cid)]
    return cid, case_metrics(np.rint(pred).astype(np.int32), np.rint(ref).astype(np.int32), labels, rg.spacing,
                             tol, surface), []


def summarize(per_case: dict[str, dict[str, dict]], labels: dict[str, int]) -> dict:
    """Means per class of every numeric metric (NaN skipped, with counts) and the foreground mean Dice."""
    mean: dict[str, dict] = {}
    for name, value in labels.items():
        if value == 0:
            continue
        rows = [c[name] for c in per_case.values() if name in c]
        m: dict = {}
        for key in ("dice", "iou", "precision", "recall", "hd95_mm", "surface_dice"):
            vals = [r[key] for r in rows if key in r and r[key] is not None and not np.isnan(r[key])]
            m[key] = float(np.mean(vals)) if vals else float("nan")
        m["n_cases"] = len(rows)
        m["n_empty_both"] = sum(bool(r.get("empty_reference_and_prediction")) for r in rows)
        mean[name] = m
    dices = [m["dice"] for m in mean.values() if not np.isnan(m["dice"])]
    return {"mean": mean, "foreground_mean_dice": float(np.mean(dices)) if dices else float("nan")}


def evaluate_folders(pred_dir: Path, ref_dir: Path, labels: dict[str, int], output: Path | None = None,
                     tolerance_mm: float | dict[str, float] = 1.0, workers: int = 1, surface: bool = True) -> dict:
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    preds, refs = _cases(pred_dir), _cases(ref_dir)
    missing = sorted(set(refs) - set(preds))
    if not preds:
        raise fail("no predictions found", "point --pred at a folder of label maps", file=pred_dir)
    if missing:
        log.warning("%d reference case(s) have no prediction and are skipped: %s", len(missing), missing[:5])
    common = sorted(set(refs) & set(preds))
    if not common:
        raise fail("no prediction matches a reference file name", "name predictions like the references",
                   file=pred_dir)
    results = map_cases(_one, [(c, preds[c], refs[c], labels, tolerance_mm, surface) for c in common], workers,
                        "evaluate")
    problems = [p for _, _, ps in results for p in ps]
    if problems:
        raise SegpipeError(problems)
    per_case = {cid: m for cid, m, _ in results}
    summary = {"pred": str(pred_dir), "ref": str(ref_dir), "labels": labels, "tolerance_mm": tolerance_mm,
               "missing_predictions": missing, "cases": per_case, **summarize(per_case, labels)}
    if output is not None:
        write_json(Path(output) / "summary.json", summary, kind="evaluation")
        atomic_write_text(Path(output) / "metrics.csv", to_csv(per_case))
    return summary


def to_csv(per_case: dict[str, dict[str, dict]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["case", "class", *CSV_METRICS])
    for cid, classes in per_case.items():
        for name, m in classes.items():
            w.writerow([cid, name, *[m.get(k, "") for k in CSV_METRICS]])
    return buf.getvalue()


def labels_from_references(ref_dir: Path) -> dict[str, int]:
    """Labels named ``label_<v>`` for every value found in the references (when none are given)."""
    values: set[int] = set()
    for p in _cases(Path(ref_dir)).values():
        arr, _ = read_image(p)
        values |= {int(v) for v in np.unique(arr)}
    return {"background": 0, **{f"label_{v}": v for v in sorted(values - {0})}}
