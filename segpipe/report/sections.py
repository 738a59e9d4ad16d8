"""The report's sections, one function each: ``(ReportData, Images) -> Section | None`` (None when the stage it
shows has not run). Plots go through :class:`Images`, which writes them beside the page.

Axis order follows :mod:`segpipe.axes`: spacings and shapes in array order, ``(z, y, x)`` / ``(y, x)``.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segpipe.dataset.reading import read_case, read_channels, read_label
from segpipe.errors import SegpipeError
from segpipe.evaluation.summary import OVERLAP_METRICS, summarize
from segpipe.io.atomic import atomic_write_bytes
from segpipe.io.images import read_image
from segpipe.report import plots
from segpipe.report.collect import FoldRun, ReportData
from segpipe.report.html import Cell, Section, definition_list, esc, figure, fmt, paragraph, table, warning
from segpipe.report.overlays import (
    PREDICTION_COLOUR,
    REFERENCE_COLOUR,
    RankedCase,
    mean_foreground_dice,
    overlay_png,
    pick_cases,
)

log = logging.getLogger(__name__)

HISTOGRAM_CASES = 8  # cases read for the intensity histograms (evenly spread over the data set)
HISTOGRAM_SAMPLES_PER_CASE = 200_000  # foreground voxels per case and channel, at most
ANISOTROPY_THRESHOLD = 3.0  # as the planner's: coarsest spacing over the finest
IMAGE_DIR = "images"


class Images:
    """Writes the report's PNGs into ``<folder>/images/`` and returns their links relative to index.html."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.written: list[str] = []

    def add(self, stem: str, png: bytes) -> str:
        safe = re.sub(r"[^A-Za-z0-9_-]+", "_", stem)[:60] or "image"
        name = f"{len(self.written) + 1:02d}_{safe}.png"
        atomic_write_bytes(self.folder / IMAGE_DIR / name, png)
        self.written.append(name)
        return f"{IMAGE_DIR}/{name}"


def _labels_text(labels: Mapping[str, Any]) -> str:
    """``name = value`` pairs; a region (a list of values) as ``name = (1, 2)``."""
    return ", ".join(f"{name} = {tuple(value) if isinstance(value, (list, tuple)) else value}"
                     for name, value in labels.items())


def _foreground_classes(data: ReportData) -> dict[str, int | tuple[int, ...]]:
    """The foreground classes (name -> label value, or the tuple of values of a region)."""
    return {n: v for n, v in data.spec.classes.items() if v != 0}


# ------------------------------------------------------------------------------------------------ data set
def sample_intensities(data: ReportData, seed: int = 0) -> tuple[dict[str, np.ndarray], list[str]]:
    """Foreground intensities (label > 0) per channel name from up to :data:`HISTOGRAM_CASES` cases spread over
    the data set (at most :data:`HISTOGRAM_SAMPLES_PER_CASE` voxels each, seeded), and the cases that could not
    be read."""
    spec = data.spec
    cases = [c for c in spec.cases if c.label]
    if len(cases) > HISTOGRAM_CASES:
        cases = [cases[int(i)] for i in np.linspace(0, len(cases) - 1, HISTOGRAM_CASES).round()]
    names = list(spec.channels.values())
    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    failed: list[str] = []
    rng = np.random.default_rng(seed)
    for case in cases:
        try:
            image, label, _ = read_case(spec, data.ws.raw, case)
        except SegpipeError as e:
            failed.append(f"{case.id}: {e.format()}")
            continue
        fg = label > 0
        n = int(np.count_nonzero(fg))
        if n == 0:
            continue
        idx = rng.choice(n, HISTOGRAM_SAMPLES_PER_CASE, replace=False) if n > HISTOGRAM_SAMPLES_PER_CASE else None
        for c, name in enumerate(names[: image.shape[0]]):
            values = image[c][fg]
            out[name].append(values[idx] if idx is not None else values)
    return {n: np.concatenate(v) if v else np.zeros(0, np.float32) for n, v in out.items()}, failed


def data_section(data: ReportData, images: Images) -> Section:
    """What the data look like: cases, channels, labels; with a fingerprint also spacing and shape
    distributions, intensity statistics and histograms per channel, orientation warnings and a per-case table."""
    spec = data.spec
    s = Section("data", "Data set")
    subjects = set(spec.subjects.values())
    items: list[tuple[str, object]] = [
        ("name", spec.name), ("cases", len(spec.cases)),
        ("channels", ", ".join(f"{k}: {v}" for k, v in spec.channels.items())),
        ("labels", _labels_text(spec.labels)), ("format", f"{spec.format} ({spec.file_ending} files)"),
        ("source", spec.source), ("raw data", "linked" if spec.raw_mode == "link" else "copied")]
    if subjects:
        items.append(("subjects", f"{len(subjects)} (cases of one subject stay in one fold)"))
    if spec.unlabelled:
        items.append(("unlabelled images", f"{len(spec.unlabelled)} (for semi-supervised trainers)"))
    if spec.attribute_columns:
        items.append(("case attributes", ", ".join(spec.attribute_columns)))
    if spec.label_value_map:
        items.append(("label values in the files", ", ".join(f"{k} \u2192 {v}" for k, v in
                                                            spec.label_value_map.items())))
    if spec.ignore_value is not None:
        items.append(("sparse labels", f"voxels labelled {spec.ignore_value} ('ignore') are not annotated"))
    s.add(definition_list(items))
    for note in spec.notes:
        s.add(paragraph(note, "note"))
    fp = data.fingerprint
    if fp is None:
        return s.add(paragraph("Run `segpipe fingerprint` for the spacing, shape and intensity distributions.",
                               "note"))
    ndim = int(fp.get("ndim") or len(fp["median_spacing"]))
    names = plots.axis_names(ndim)
    spacings, shapes = fp.get("spacings") or [], fp.get("shapes_after_crop") or []
    s.subsection("Geometry")
    median_spacing = [float(v) for v in fp["median_spacing"]]
    s.add(definition_list([
        ("dimensions", f"{ndim}D, array axes ({', '.join(names)})"),
        ("median spacing (mm)", median_spacing),
        ("median shape after cropping to the nonzero box (voxels)", [float(v) for v in fp["median_shape_after_crop"]]),
        ("median share of the image kept by cropping", f"{100 * float(fp['median_relative_size_after_crop']):.0f}%"),
        ("orientations", ", ".join(f"{k or 'none (2D)'}: {v} case(s)" for k, v in (fp.get("orientations") or
                                                                                   {}).items()))]))
    orientations = fp.get("orientations") or {}
    if len(orientations) > 1:
        s.add(warning("the cases have different orientations (" + ", ".join(f"{k}: {v}" for k, v in
                                                                            orientations.items())
                      + "): segpipe keeps each case's own geometry and exports predictions in it, but check that "
                      "the labels follow their images"))
    if min(median_spacing) > 0 and max(median_spacing) / min(median_spacing) > ANISOTROPY_THRESHOLD:
        s.add(warning(f"anisotropic spacing: the coarsest axis is {max(median_spacing) / min(median_spacing):.1f}x "
                      f"the finest (over {ANISOTROPY_THRESHOLD:g}x): it is resampled separately and pooled later"))
    spread = [names[i] for i in range(ndim) if spacings and
              max(sp[i] for sp in spacings) > 1.5 * min(sp[i] for sp in spacings)]
    if spread:
        s.add(paragraph(f"spacing varies over the cases along axis {', '.join(spread)} (more than 1.5x between the "
                        "finest and the coarsest case): every case is resampled to the plan's spacing", "note"))
    if spacings and shapes:
        s.add(figure(images.add("geometry", plots.geometry_plot(spacings, shapes)),
                     "spacing and shape distributions",
                     "Spacing (top) and shape after cropping (bottom) of every case, per array axis."))
    intensity = fp.get("intensity") or {}
    if intensity:
        s.subsection("Intensities (foreground voxels)")
        rows = [(st.get("name", k), st.get("n_samples"), st.get("mean"), st.get("std"), st.get("median"),
                 st.get("min"), st.get("max"), st.get("percentile_00_5"), st.get("percentile_99_5"))
                for k, st in intensity.items()]
        s.add(table(["channel", "voxels sampled", "mean", "std", "median", "min", "max", "0.5 percentile",
                     "99.5 percentile"], rows))
        samples, failed = sample_intensities(data)
        for f in failed:
            s.add(warning(f"intensity histogram without {f}"))
        if any(v.size for v in samples.values()):
            stats = {st.get("name", k): st for k, st in intensity.items()}
            n = min(HISTOGRAM_CASES, len(data.spec.cases))
            s.add(figure(images.add("intensities", plots.intensity_plot(samples, stats)), "intensity histograms",
                         f"Foreground intensities of {n} case(s) spread over the data set; the fingerprint's "
                         "statistics (over all cases) marked."))
    cases = fp.get("cases") or {}
    if cases:
        s.subsection("Cases")
        subject_of = spec.subjects
        rows2 = [(cid, c.get("shape"), c.get("spacing"), c.get("shape_after_crop"), c.get("orientation") or "\u2014",
                  c.get("foreground_voxels"), subject_of.get(cid, "\u2014")) for cid, c in cases.items()]
        s.add('<div class="scroll">' + table(["case", "shape (voxels)", "spacing (mm)", "shape after crop",
                                             "orientation", "foreground voxels", "subject"], rows2, sortable=True)
              + "</div>")
    return s


# ------------------------------------------------------------------------------------------------ plans
def plans_section(data: ReportData, images: Images) -> Section | None:
    """The plans: each configuration's spacing, patch, batch and network with the planner's reason for every
    choice; the budget planner's candidates and choice when ``plan --budget`` ran."""
    plans = data.plans
    if plans is None:
        return None
    s = Section("plans", "Plans")
    mem = plans.memory_budget
    s.add(definition_list([
        ("planner", plans.planner), ("memory target", mem.get("assumed") or f"{mem.get('gb')} GB"),
        ("default configuration", plans.default_configuration),
        ("full-resolution spacing (mm)", list(plans.full_resolution_spacing)),
        ("median shape at full resolution (voxels)", list(plans.median_shape_at_full_resolution)),
        ("axis order", plans.axis_order)]))
    for note in plans.notes:
        s.add(paragraph(note, "note"))
    rows = []
    for name, c in plans.configurations.items():
        topo = c.network.topology
        rows.append((name + (" (default)" if name == plans.default_configuration else ""), list(c.spacing),
                     list(c.median_shape), list(c.patch_size), c.batch_size,
                     f"{c.network.name}, {topo.n_stages} stages, features {list(topo.features_per_stage)}",
                     c.trainer, c.previous_stage or "\u2014"))
    s.add(table(["configuration", "spacing (mm)", "median shape", "patch (voxels)", "batch", "network", "trainer",
                 "previous stage"], rows))
    for name, c in plans.configurations.items():
        s.subsection(f"{name}: why")
        why = [(k, v) for k, v in c.why.items()]
        norm = "; ".join(f"channel {n.channel}: {n.scheme}" + (f", clip {list(n.clip)}" if n.clip else "")
                         + (", inside the nonzero mask" if n.use_mask else "") for n in c.normalization)
        r = c.resampling
        facts = [("normalization", norm),
                 ("resampling", f"images order {r.image_order}, labels order {r.label_order} ({r.label_mode}); "
                                f"anisotropy threshold {r.anisotropy_threshold}, coarse axis order "
                                f"{r.coarse_axis_order}"),
                 ("memory", ", ".join(f"{k} {fmt(v)}" for k, v in c.memory.items()) or "\u2014")]
        s.add(table(["choice", "why"], why or [("\u2014", "the plan gives no reasons")], cls="why"),
              definition_list(facts))
    if plans.budget:
        _budget(s, plans.budget, data.calibration, images)
    return s


def _budget(s: Section, budget: Mapping[str, Any], calibration: Mapping[str, Any] | None, images: Images) -> None:
    s.subsection("Time budget")
    machine = budget.get("machine") or {}
    seconds = budget.get("budget_s")
    items: list[tuple[str, object]] = [
        ("budget per fold", f"{float(seconds) / 60:.1f} min" if isinstance(seconds, (int, float)) else seconds),
        ("machine", ", ".join(f"{k} {v}" for k, v in machine.items())),
        ("rule", budget.get("rule")), ("chosen", f"{budget.get('chosen')} (candidate {budget.get('candidate')})"),
        ("why", budget.get("reason"))]
    if calibration:
        measured = calibration.get("seconds_per_iteration") or {}
        items.append(("calibration", f"{len(measured)} speed measurement(s) on this machine (calibration.json)"))
    s.add(definition_list(items))
    candidates = budget.get("candidates") or []
    if candidates:
        chosen = budget.get("candidate")
        rows = [(Cell("\u2713" if c.get("name") == chosen else "", 1 if c.get("name") == chosen else 0),
                 c.get("name"), c.get("description"), c.get("spacing"), c.get("patch_size"), c.get("batch_size"),
                 c.get("features_per_stage"), c.get("fidelity"), c.get("seconds_per_iteration"), c.get("measured"),
                 c.get("expected_iterations")) for c in candidates]
        s.add(figure(images.add("budget", plots.budget_plot(candidates, chosen)), "budget candidates",
                     "Each candidate plan: how many iterations it is expected to train in the budget and how close it "
                     "stays to nnU-Net's plan."))
        s.add('<div class="scroll">' + table(
            ["chosen", "candidate", "description", "spacing", "patch", "batch", "features", "fidelity",
             "s / iteration", "measured", "expected iterations"], rows, sortable=True) + "</div>")


# ------------------------------------------------------------------------------------------------ training
def _num(v: object) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) else None


def training_section(data: ReportData, images: Images) -> Section | None:
    """Training curves of every fold, per configuration, and a table of the folds."""
    configs = {c: fs for c, fs in data.folds.items() if any(f.history for f in fs.values())}
    if not configs:
        return None
    s = Section("training", "Training")
    for config, folds in configs.items():
        s.subsection(config)
        histories = {k: f.history for k, f in folds.items() if f.history}
        s.add(figure(images.add(f"training_{config}", plots.training_plot(config, histories)),
                     f"training curves of {config}"))
        rows = []
        for k, f in folds.items():
            h = f.history
            emas = [e for e in (_num(x.get("ema_pseudo_dice")) for x in h) if e is not None]
            v = f.validation
            rows.append((k, len(h), sum(int(x.get("iterations") or 0) for x in h),
                         _minutes(h[-1].get("elapsed_seconds") if h else None),
                         emas[-1] if emas else None, max(emas) if emas else None,
                         _num(v.get("foreground_mean_dice")) if v else None,
                         v.get("n_cases") if v else None,
                         "finished" if f.finished else "in progress or stopped"))
        s.add(table(["fold", "epochs", "iterations", "time (min)", "last pseudo Dice (average)",
                     "best pseudo Dice (average)", "validation Dice", "validation cases", "state"], rows))
    return s


def _minutes(seconds: object) -> float | None:
    v = _num(seconds)
    return None if v is None else round(v / 60, 2)


# ------------------------------------------------------------------------------------------------ cross-validation
def cv_records(folds: Mapping[str, FoldRun]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Case id -> (fold, per-class metrics) from the final validations of ``folds``."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for k, f in folds.items():
        if f.validation:
            for cid, rec in (f.validation.get("cases") or {}).items():
                out[cid] = (k, rec)
    return out


def cross_validation_section(data: ReportData, images: Images) -> Section | None:
    """Cross-validation metrics per case and class (a sortable table), their means and box plots."""
    configs = data.configs_with_validation()
    if not configs:
        return None
    s = Section("cross-validation", "Cross-validation")
    s.add(paragraph("Every case is validated by the one fold that did not train on it: the model's final "
                    "full-image prediction against the reference, before post-processing."))
    classes = _foreground_classes(data)
    per_config: dict[str, dict[str, list[float]]] = {}
    for config in configs:
        recs = cv_records(data.folds[config])
        per_config[config] = {c: [v for v in (_num(r.get(c, {}).get("dice")) for _, r in recs.values())
                                  if v is not None] for c in classes}
    s.add(figure(images.add("dice_boxplot", plots.dice_boxplot(per_config)), "Dice box plots",
                 "Dice per case and class; each dot a case."))
    n_folds = len(data.splits) if data.splits else None
    for config in configs:
        folds = data.folds[config]
        recs = cv_records(folds)
        validated = sum(1 for f in folds.values() if f.validation)
        s.subsection(config)
        s.add(paragraph(f"{len(recs)} case(s) from {validated}"
                        + (f" of {n_folds}" if n_folds else "") + " validated fold(s)."))
        summary = summarize({cid: r for cid, (_, r) in recs.items()}, data.spec.labels, OVERLAP_METRICS)
        mean_rows = [(name, m.get("dice"), m.get("iou"), m.get("precision"), m.get("recall"), m.get("n"),
                      m.get("n_missed"), m.get("n_spurious")) for name, m in summary["mean"].items()]
        s.add(table(["class", "mean Dice", "mean IoU", "mean precision", "mean recall", "cases in the Dice",
                     "missed", "spurious"], mean_rows),
              paragraph(f"mean foreground Dice {fmt(_num(summary['foreground_mean_dice']))}", "big"))
        rows = []
        for cid, (fold, rec) in sorted(recs.items()):
            for name in classes:
                m = rec.get(name) or {}
                rows.append((cid, fold, name, _num(m.get("dice")), _num(m.get("iou")), _num(m.get("precision")),
                             _num(m.get("recall")), _num(m.get("volume_ref_mm3")), _num(m.get("volume_pred_mm3"))))
        s.add('<div class="scroll">' + table(
            ["case", "fold", "class", "Dice", "IoU", "precision", "recall", "reference volume (mm\u00b3)",
             "predicted volume (mm\u00b3)"], rows, sortable=True) + "</div>",
            paragraph("Click a column's header to sort by it.", "note"))
    return s


# ------------------------------------------------------------------------------------------------ selection
def selection_section(data: ReportData, images: Images) -> Section | None:
    """``segpipe select``'s decision: every candidate's cross-validation Dice, the best, its post-processing."""
    sel = data.selection
    if sel is None:
        return None
    s = Section("selection", "Selection and post-processing")
    pp = sel.get("postprocessing") or {}
    steps = (["keep the largest foreground component"] if pp.get("foreground") else []) + [
        f"keep the largest component of {c}" for c in pp.get("classes") or []]
    before = (sel.get("cv_dice_before_postprocessing") or {}).get("foreground_mean_dice")
    after = (sel.get("cv_dice") or {}).get("foreground_mean_dice")
    s.add(definition_list([
        ("best", f"{sel.get('best')} (configurations {', '.join(sel.get('configs') or [])}, folds "
                 f"{', '.join(str(f) for f in sel.get('folds') or [])})"),
        ("post-processing", "; ".join(steps) or "none (it did not improve the cross-validation Dice)"),
        ("cross-validation Dice", f"{fmt(_num(before))} before post-processing, {fmt(_num(after))} after")]))
    rows = []
    for name, c in sorted((sel.get("candidates") or {}).items(), key=lambda kv: -(_num(kv[1].get(
            "foreground_mean_dice")) or -1.0)):
        per = c.get("dice") or {}
        rows.append((Cell("\u2713" if name == sel.get("best") else "", 1 if name == sel.get("best") else 0), name,
                     ", ".join(c.get("configs") or []), _num(c.get("foreground_mean_dice")),
                     "; ".join(f"{k} {fmt(_num(v))}" for k, v in per.items()), c.get("n_cases")))
    s.add(table(["chosen", "candidate", "configurations", "mean foreground Dice", "Dice per class", "cases"], rows,
                sortable=True))
    after_per = (sel.get("cv_dice") or {}).get("dice") or {}
    before_per = (sel.get("cv_dice_before_postprocessing") or {}).get("dice") or {}
    if after_per:
        s.add(table(["class", "Dice before post-processing", "Dice after"],
                    [(k, _num(before_per.get(k)), _num(v)) for k, v in after_per.items()]))
    return s


# ------------------------------------------------------------------------------------------------ cases
def overlay_config(data: ReportData) -> tuple[str, str] | None:
    """The configuration whose cross-validation predictions are shown, and why: the selected one (the first of
    a selected ensemble, whose averaged predictions are not stored), else the plan's default, else the first
    with validated folds."""
    configs = data.configs_with_validation()
    if not configs:
        return None
    sel = data.selection
    if sel and sel.get("configs") and sel["configs"][0] in configs:
        first = sel["configs"][0]
        if len(sel["configs"]) > 1:
            return first, (f"the selected ensemble's first member, {first} (the ensemble's averaged predictions are "
                           "not stored)")
        return first, f"the selected configuration, {first}"
    default = data.plans.default_configuration if data.plans else None
    if default in configs:
        return default, f"the plan's default configuration, {default}"
    return configs[0], f"{configs[0]}, the first configuration with validated folds"


def cases_section(data: ReportData, images: Images) -> Section | None:
    """Overlays of the best, median and worst cross-validation case (by mean foreground Dice): the image with
    the reference and predicted contours."""
    chosen = overlay_config(data)
    if chosen is None:
        return None
    config, why = chosen
    recs = cv_records(data.folds[config])
    scores = [RankedCase(cid, fold, d) for cid, (fold, rec) in recs.items()
              if (d := mean_foreground_dice(rec)) is not None]
    picks = pick_cases(scores)
    if not picks:
        return None
    s = Section("cases", "Best, median and worst case")
    s.add('<div class="cases">')
    s.add(paragraph(f"Cross-validation predictions of {why}, before post-processing, ranked by the mean Dice over "
                    f"the foreground classes of {len(scores)} case(s). Reference contours in blue "
                    f"({REFERENCE_COLOUR}), predicted contours in orange ({PREDICTION_COLOUR}); one line style per "
                    "class."))
    spec = data.spec
    classes = _foreground_classes(data)
    for pick in picks:
        fold = data.folds[config][pick.fold]
        title = f"{pick.role}: {pick.case} (fold {pick.fold}), mean Dice {pick.mean_dice:.3f}"
        pred_path = fold.validation_dir / f"{pick.case}{spec.file_ending}"
        try:
            case = spec.case(pick.case)
            image, geo = read_channels(spec, data.ws.raw, case)
            ref = np.rint(read_label(spec, data.ws.raw, case)[0]).astype(np.int16)
            pred = read_image(pred_path)[0]
        except (SegpipeError, KeyError) as e:
            s.add(warning(f"{title}: not shown: {e.format() if isinstance(e, SegpipeError) else e}"))
            continue
        if pred.ndim == ref.ndim + 1:  # a prediction stored with colour components: they repeat the label
            pred = pred[0]
        if pred.shape != ref.shape or image.shape[1:] != ref.shape:
            s.add(warning(f"{title}: not shown: image {image.shape[1:]}, reference {ref.shape} and prediction "
                          f"{pred.shape} differ in shape"))
            continue
        png, where = overlay_png(image, ref, np.rint(pred).astype(np.int16), geo.spacing, classes, title)
        s.add(figure(images.add(f"case_{pick.role}", png), f"{pick.role} case {pick.case}",
                     f"{title}. {where.capitalize()}; channel {next(iter(spec.channels.values()))}."))
    return s.add("</div>")


SECTIONS = (data_section, plans_section, training_section, cross_validation_section, selection_section,
            cases_section)


def stages_run(data: ReportData) -> tuple[list[str], list[str]]:
    """The stages whose artifacts the report found, and those still to run (in pipeline order)."""
    plans = data.plans
    preprocessed = plans is not None and any(data.ws.preprocessed(c.data_identifier).is_dir()
                                             for c in plans.configurations.values())
    n_folds = sum(len(f) for f in data.folds.values())
    done = {"onboard": True, "fingerprint": data.fingerprint is not None, "plan": plans is not None,
            "preprocess": preprocessed, f"train ({n_folds} fold(s))" if n_folds else "train": bool(n_folds),
            "select": data.selection is not None}
    return [k for k, v in done.items() if v], [k for k, v in done.items() if not v]


def html_list(items: Sequence[str]) -> str:
    return "<ul>" + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>"
