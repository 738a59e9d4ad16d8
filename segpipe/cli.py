"""``segpipe <stage>``: argument parsing only, one thin function per stage.

Exit codes: 0 success, 2 a problem with the input (message names file, problem and fix), 1 an unexpected
error (traceback with --debug), 130 interrupted.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from segpipe._version import __version__
from segpipe.errors import SegpipeError, fail, os_error_problem

if TYPE_CHECKING:
    from segpipe.dataset.attributes import CaseAttributes

log = logging.getLogger("segpipe")


def _default_workers() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def _labels(items: list[str] | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for it in items or []:
        name, sep, value = it.partition("=")
        if not sep or not value.strip().lstrip("-").isdigit():
            raise fail(f"--labels entry '{it}' is not NAME=VALUE", "write e.g. --labels background=0 tumour=1")
        out[name.strip()] = int(value)
    return out


def _add_ws(p: argparse.ArgumentParser, name_required: bool = False) -> None:
    p.add_argument("--workspace", "-w", help="workspace folder (default: $SEGPIPE_WORKSPACE or ./segpipe_workspace)")
    p.add_argument("--name", "-n", "-d", required=name_required,
                   help="dataset name in the workspace (default: the workspace's only dataset)")


def _step_size(text: str) -> float:
    v = float(text)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not in (0, 1]")
    return v


def _metric_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"'{text}' names no metric (give e.g. --metrics dice,volume-difference)")
    return names


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: fp16 mixed precision on CUDA; bf16 on CPUs with native bfloat16 (avx512_bf16/amx: "
                   "2x faster, equal Dice measured), else fp32")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="re-run even when the inputs did not change")
    p.add_argument("--workers", type=int, default=_default_workers(), help="worker processes (default: %(default)s)")


def cmd_onboard(a: argparse.Namespace) -> int:
    from segpipe.dataset.formats.common import OnboardOptions
    from segpipe.dataset.onboard import onboard
    from segpipe.workspace import default_root

    opts = OnboardOptions(name=a.name, format=a.format, channels=a.channels or [], labels=_labels(a.labels),
                          image_globs=a.image_glob or [], label_glob=a.label_glob,
                          spacing_csv=Path(a.spacing_csv) if a.spacing_csv else None, pixel_spacing=a.pixel_spacing,
                          subject_csv=Path(a.subject_csv) if a.subject_csv else None,
                          subject_column=a.subject_column, subject_pattern=a.subject_pattern,
                          attributes_csv=Path(a.attributes) if a.attributes else None)
    root = default_root(a.workspace)
    ws, spec, warnings, skipped = onboard(a.source, root, opts, copy=a.copy, workers=a.workers, force=a.force,
                                          allow_external_links=a.allow_external_links)
    for w in warnings:
        log.warning(w.format())
    state = "unchanged, skipped" if skipped else "onboarded"
    extra = (f", {len(spec.unlabelled)} unlabelled images" if spec.unlabelled else "") + (
        f", attributes {spec.attribute_columns}" if spec.attribute_columns else "")
    print(f"{spec.name}: {state}: {len(spec.cases)} cases{extra}, channels {list(spec.channels.values())}, "
          f"labels {spec.labels} -> {ws.dir}")
    return 0


def cmd_fingerprint(a: argparse.Namespace) -> int:
    from segpipe.fingerprint.run import run_fingerprint
    from segpipe.workspace import Workspace

    ws = Workspace.locate(a.workspace, a.name).require_dataset()
    fp, skipped = run_fingerprint(ws, workers=a.workers, force=a.force)
    state = "unchanged, skipped" if skipped else "written"
    print(f"{ws.fingerprint_json}: {state}; {fp['n_cases']} cases, median spacing "
          f"{[round(s, 4) for s in fp['median_spacing']]} mm, median shape after crop {fp['median_shape_after_crop']}")
    return 0


def cmd_plan(a: argparse.Namespace) -> int:
    from segpipe.planning.run import run_plan, summarize
    from segpipe.training.schedule import parse_duration
    from segpipe.workspace import Workspace

    ws = Workspace.locate(a.workspace, a.name).require_dataset()
    plans, skipped = run_plan(ws, memory_gb=a.memory_gb, spacing=a.spacing, patch_size=a.patch_size,
                              batch_size=a.batch_size, config=a.config, network=a.network, force=a.force,
                              budget_s=parse_duration(a.budget) if a.budget else None, device=a.device,
                              precision=a.precision, like=a.like, preset=a.preset)
    print(summarize(plans, explain=a.explain))
    print(f"{ws.plans_json}: {'unchanged, skipped' if skipped else 'written'}")
    return 0


def cmd_preprocess(a: argparse.Namespace) -> int:
    from segpipe.planning.plans import load_plans
    from segpipe.preprocessing.run import run_preprocess
    from segpipe.preprocessing.store import list_cases
    from segpipe.workspace import Workspace

    ws = Workspace.locate(a.workspace, a.name).require_dataset()
    plans = load_plans(ws)
    config = a.config or plans.default_configuration
    n, skipped = run_preprocess(ws, config, workers=a.workers, force=a.force)
    folder = ws.preprocessed(plans.configuration(config).data_identifier)
    state = "unchanged, skipped" if skipped else f"{n} case(s) written"
    print(f"{folder}: {state}; {len(list_cases(folder))} cases complete ({config})")
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from segpipe.planning.plans import load_plans
    from segpipe.training.run import run_train
    from segpipe.training.schedule import parse_duration
    from segpipe.training.trainer import TrainSettings
    from segpipe.workspace import Workspace

    ws = Workspace.locate(a.workspace, a.name).require_dataset()
    config = a.config or load_plans(ws).default_configuration
    settings = TrainSettings(epochs=a.epochs, iterations_per_epoch=a.iterations_per_epoch,
                             val_iterations=a.val_iterations,
                             budget_s=parse_duration(a.budget) if a.budget else None, lr=a.lr, seed=a.seed,
                             workers=a.workers, device=a.device, threads=a.threads, batch_size=a.batch_size,
                             precision=a.precision, started_at=a.started_at).check()
    folds: list[str] = []
    for f in a.fold:  # in the order given; 'each' is every fold of splits.json (5, fewer for small data sets)
        if f == "each":
            from segpipe.training.splits import fold_names

            new = fold_names(ws)
        else:
            new = [f]
        folds += [x for x in new if x not in folds]
    for i, fold in enumerate(folds):
        if i:  # --budget is per fold: each later fold's budget starts when it starts
            settings = dataclasses.replace(settings, started_at=None)
        res = run_train(ws, config, fold, settings, trainer=a.trainer,
                        resume=True if a.resume else (False if a.no_resume else None), force=a.force,
                        validate=not a.no_validation, init_from=a.init_from, init_mode=a.init_mode)
        st, v = res["state"], res["validation"]
        line = (f"{config} fold {fold}: {st['epoch']} epochs, {st['iteration']} iterations, "
                f"{st['elapsed_s'] / 60:.1f} min -> {res['out']}")
        if v is not None:
            per = ", ".join(f"{k} {m['dice']:.4f}" for k, m in v["mean"].items())
            line += f"\n  validation Dice: {per}; mean {v['foreground_mean_dice']:.4f}"
        print(line)
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    from segpipe.inference.run import run_predict
    from segpipe.workspace import Workspace

    ws = Workspace.locate(a.workspace, a.name).require_dataset()
    written, desc = run_predict(ws, Path(a.input), Path(a.output), configs=a.config, folds=a.folds, best=a.best,
                                mirror=not a.no_mirror, save_probabilities=a.save_probabilities,
                                checkpoint=a.checkpoint, device=a.device, workers=a.workers,
                                pixel_spacing=a.pixel_spacing, precision=a.precision,
                                spacing_csv=Path(a.spacing_csv) if a.spacing_csv else None, step=a.step_size,
                                uncertainty=a.uncertainty, predictor=a.predictor)
    print(f"{len(written)} case(s) predicted with {desc} -> {a.output}")
    return 0


def cmd_adapt(a: argparse.Namespace) -> int:
    from segpipe.adaptation.run import run_adapt
    from segpipe.adaptation.tent import TentSettings
    from segpipe.workspace import Workspace

    ws = Workspace.locate(a.workspace, a.name).require_dataset()
    settings = TentSettings(steps=a.steps, lr=a.lr, patches=a.patches, mirrorings=a.mirrorings, seed=a.seed,
                            balance_weight=a.balance_weight, max_drift=None if a.no_stop else a.max_drift,
                            check_every=a.check_every)
    res = run_adapt(ws, Path(a.input), Path(a.output), config=a.config, folds=a.folds, settings=settings,
                    checkpoint=a.checkpoint, device=a.device, precision=a.precision, workers=a.workers,
                    pixel_spacing=a.pixel_spacing, spacing_csv=Path(a.spacing_csv) if a.spacing_csv else None,
                    force=a.force)
    for fold, r in res.folds.items():
        print(f"{res.config} fold {fold}: mean entropy on {len(r['target']['cases'])} target case(s) "
              f"{r['entropy_before']:.4f} -> {r['entropy_after']:.4f} ({r['steps_run']} of {r['steps']} steps, "
              f"parameters of step {r['kept_step']} kept, {r['seconds']:.0f} s)")
        if r["stopped"]:
            print(f"{res.config} fold {fold}: {r['stopped']['message']}")
    print(f"adapted model -> {res.output.dir}; predict with `segpipe predict -w {res.output.root} -n "
          f"{res.output.dataset} -c {res.config} -i IN -o OUT`")
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from segpipe.evaluation.evaluate import (
        check_output_folder,
        check_tolerance,
        default_output,
        evaluate_folders,
        labels_from_references,
    )
    from segpipe.workspace import DEFAULT_WORKSPACE_ENV, Workspace

    pred, ref = Path(a.pred), Path(a.ref)
    out = Path(a.output) if a.output else default_output(pred)
    check_output_folder(out, pred, ref)
    check_tolerance(a.tolerance)
    value_map, ws = None, None
    if a.workspace or a.name or os.environ.get(DEFAULT_WORKSPACE_ENV):
        ws = Workspace.locate(a.workspace, a.name)
    labels: dict[str, int | list[int]]
    if a.labels:
        labels = dict(_labels(a.labels))
    elif ws is not None:
        from segpipe.dataset.store import load_dataset

        spec = load_dataset(ws)
        labels, value_map = spec.labels, spec.label_value_map
    else:
        labels = dict(labels_from_references(ref, a.ref_glob))
    attributes: Path | CaseAttributes | None = Path(a.attributes) if a.attributes else None
    if attributes is None and a.group_by and ws is not None and ws.dataset_json.is_file():
        from segpipe.dataset.store import load_dataset
        from segpipe.evaluation.fairness import workspace_attributes

        attributes = workspace_attributes(load_dataset(ws), ws.dataset_json)  # onboarded with --attributes
    summary = evaluate_folders(pred, ref, labels, out, a.tolerance, a.workers, surface=not a.no_surface,
                               ref_glob=a.ref_glob, pixel_spacing=a.pixel_spacing,
                               spacing_csv=Path(a.spacing_csv) if a.spacing_csv else None,
                               label_value_map=value_map,
                               attributes=attributes, group_by=a.group_by, metrics=a.metrics)
    if ws is not None and ws.dataset_json.is_file():
        from segpipe.evaluation.evaluate import record_evaluation

        record_evaluation(ws, pred, ref, out, {"labels": labels, "tolerance_mm": a.tolerance,
                                               "surface": not a.no_surface, "ref_glob": a.ref_glob,
                                               "metrics": list(summary["registered_metrics"]),
                                               "attributes": a.attributes, "group_by": a.group_by})
    for name, m in summary["mean"].items():
        print(f"{name:15s} Dice {m['dice']:.4f}  IoU {m['iou']:.4f}  HD95 {m['hd95_mm']:.2f} mm "
              f"(over {m['n_cases_per_metric']['hd95_mm']})  surface Dice {m['surface_dice']:.4f}  "
              f"({m['n_cases']} cases, {m['n_empty_both']} empty in both, {m['n_missed']} missed, "
              f"{m['n_spurious']} spurious)")
    shown = {"dice", "hd95_mm"}  # printed above
    for metric, key in summary["registered_metrics"].items():
        if key not in shown:
            means = ", ".join(f"{name} {m[key]:.4g}" for name, m in summary["mean"].items())
            print(f"registered metric {metric}: {means}")
    print(f"mean foreground Dice {summary['foreground_mean_dice']:.4f} (spacing: {summary['spacing']}) -> "
          f"{out / 'summary.json'}, {out / 'metrics.csv'}")
    if summary.get("groups"):
        from segpipe.evaluation.fairness import format_groups

        print("\n".join(format_groups(summary["groups"])))
        ignored = summary["attributes"]["n_rows_not_evaluated"]
        print(f"attributes: {summary['attributes']['file']} ({ignored} row(s) not among the evaluated cases, "
              "ignored)")
    return 0


def cmd_select(a: argparse.Namespace) -> int:
    from segpipe.evaluation.selection import format_selection, run_select
    from segpipe.workspace import Workspace

    ws = Workspace.locate(a.workspace, a.name).require_dataset()
    print(format_selection(run_select(ws, a.config)))
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from segpipe.report import write_report
    from segpipe.workspace import Workspace

    ws = Workspace.locate(a.workspace, a.name).require_dataset()
    r = write_report(ws, force=a.force)
    state = "unchanged, kept" if r.skipped else f"{len(r.sections)} section(s)"
    print(f"report ({state}): {r.index}")
    return 0


def cmd_export_model(a: argparse.Namespace) -> int:
    from segpipe.inference.package import export_model
    from segpipe.workspace import Workspace

    ws = Workspace.locate(a.workspace, a.name).require_dataset()
    manifest = export_model(ws, Path(a.output), a.config, [str(f) for f in a.folds] if a.folds else None,
                            best=a.best, force=a.force)
    models = ", ".join(f"{c} (folds {', '.join(fs)})" for c, fs in manifest["configurations"].items())
    print(f"{a.output}: {models}, {len(manifest['files'])} files with checksums")
    return 0


def cmd_export_network(a: argparse.Namespace) -> int:
    from segpipe.inference.network_export import export_network
    from segpipe.planning.plans import load_plans
    from segpipe.workspace import Workspace

    ws = Workspace.locate(a.workspace, a.name).require_dataset()
    config = a.config or load_plans(ws).default_configuration
    r = export_network(ws, config, a.fold, Path(a.output), fmt=a.format, checkpoint=a.checkpoint, force=a.force)
    kind = f"ONNX (opset {r['opset']}, batch axis dynamic)" if r["format"] == "onnx" else "TorchScript"
    print(f"{r['file']}: {kind} of {r['config']} fold {r['fold']}, input {r['input_shape']}; matches the "
          f"PyTorch network on {r['checked_on']} (max abs difference {r['max_abs_difference']:.1e})")
    return 0


def cmd_import_model(a: argparse.Namespace) -> int:
    from segpipe.inference.package import import_model
    from segpipe.workspace import default_root

    ws = import_model(Path(a.package), Path(default_root(a.workspace)), a.name, force=a.force)
    print(f"{a.package}: installed as data set '{ws.dataset}' in {ws.root}; predict with "
          f"`segpipe predict -w {ws.root} -n {ws.dataset} -i IN -o OUT`")
    return 0


def cmd_run(a: argparse.Namespace) -> int:
    from segpipe.pipeline import run_all
    from segpipe.workspace import default_root

    root = default_root(a.workspace)
    options, copy, allow_external_links, force = parse_onboard_args(a.source, a.name, a.onboard_args or [])
    run_all(a.source, Path(root), name=a.name, configs=a.config, folds=a.folds, budget=a.budget,
            epochs=a.epochs, iterations_per_epoch=a.iterations_per_epoch, workers=a.workers, device=a.device,
            precision=a.precision, batch_size=a.batch_size, options=options, copy=copy,
            allow_external_links=allow_external_links,
            force_onboard=force, echo=print, trainer=a.trainer)
    return 0


def parse_onboard_args(source, name: str, args: list[str]) -> tuple:
    """``segpipe onboard`` arguments (as for ``run --onboard-args``) as ``(OnboardOptions, copy,
    allow_external_links, force)``; invalid ones are a user error (argparse has printed why)."""
    from dataclasses import fields

    from segpipe.dataset.formats.common import OnboardOptions

    parser = build_parser()
    try:
        a = parser.parse_args(["onboard", str(source), "--name", name, *args])
    except SystemExit:
        raise fail(f"--onboard-args {' '.join(args)} are not valid `segpipe onboard` options",
                   "see `segpipe onboard --help`; --onboard-args must come last on the command line") from None
    values: dict = {"name": name, "channels": a.channels or [], "labels": _labels(a.labels),
                    "image_globs": a.image_glob or []}
    for f in fields(OnboardOptions):
        v = getattr(a, f.name, None)
        if f.name not in values and v is not None:
            values[f.name] = Path(v) if f.name.endswith("_csv") else v
    return OnboardOptions(**values), a.copy, a.allow_external_links, a.force


def cmd_demo(a: argparse.Namespace) -> int:
    from segpipe.demo import run_demo

    run_demo(Path(a.workspace), workers=a.workers, force=a.force, budget=a.budget, configs=a.config, echo=print,
             device=a.device, precision=a.precision)
    return 0


class _StageListFormatter(argparse.HelpFormatter):
    """The top-level help: 100 columns, and room for the longest stage name so that every stage is one line
    (argparse measures sub-commands 2 columns less indented than it prints them)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=24, width=100)

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):
            self._action_max_length += 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="segpipe", description="Self-configuring medical image segmentation. The stages below are listed in "
        "chain order; `segpipe <stage> --help` for each one's options.",
        formatter_class=_StageListFormatter)
    p.add_argument("--version", action="version", version=f"segpipe {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.add_argument("--quiet", "-q", action="store_true", help="only warnings and errors")
    sub = p.add_subparsers(dest="stage", required=True, metavar="<stage>", title="stages")

    o = sub.add_parser("onboard", help="describe and check a folder of labelled images -> dataset.json")
    o.add_argument("source", help="the folder holding the data (never written to)")
    o.add_argument("--name", "-n", "-d", required=True, help="dataset name (letters, digits, _ -)")
    o.add_argument("--workspace", "-w", help="workspace folder (default: $SEGPIPE_WORKSPACE or ./segpipe_workspace)")
    o.add_argument("--format", default="auto", help="auto (default), msd, nnunet or flat")
    o.add_argument("--channels", nargs="+", metavar="NAME", help="channel names in order, e.g. CT or T1 T2 "
                   "(CT selects CT normalization)")
    o.add_argument("--labels", nargs="+", metavar="NAME=VALUE", help="label names and values, e.g. background=0 "
                   "head=1 (when the folder does not declare them)")
    o.add_argument("--image-glob", action="append", metavar="GLOB", help="flat layout: image files, '*' is the "
                   "case id; repeat once per channel")
    o.add_argument("--label-glob", metavar="GLOB", help="flat layout: label files, '*' is the case id")
    o.add_argument("--spacing-csv", metavar="CSV", help="2D images: CSV with file name and pixel size (mm) columns")
    o.add_argument("--pixel-spacing", type=float, metavar="MM", help="2D images: one pixel size for all (mm)")
    o.add_argument("--subject-csv", metavar="CSV", help="CSV with a case column (case ids or file names) and a "
                   "subject column: a subject's cases stay in one cross-validation fold")
    o.add_argument("--subject-column", metavar="COL", help="the subject column of --subject-csv (default: subject)")
    o.add_argument("--subject-pattern", metavar="REGEX", help="regex searched in each case id; its group "
                   "'subject' (or first group) is the subject, e.g. '^(\\d{3})_' for HC18's 010_HC, 010_2HC")
    o.add_argument("--attributes", metavar="CSV", help="per-case attributes: a CSV with a case-id column and columns "
                   "such as sex, age group, site, scanner; stored per case, seen by losses in every batch and by "
                   "`evaluate -w W -n N --group-by COL`")
    o.add_argument("--copy", action="store_true", help="copy the case files into the workspace instead of linking")
    o.add_argument("--allow-external-links", action="store_true", help="accept files that are symlinks to places "
                   "outside the folder (refused by default)")
    _add_common(o)
    o.set_defaults(func=cmd_onboard)

    f = sub.add_parser("fingerprint", help="per-case geometry and intensities -> fingerprint.json")
    _add_ws(f)
    _add_common(f)
    f.set_defaults(func=cmd_fingerprint)

    pl = sub.add_parser("plan", help="spacing, patch, batch, network per configuration -> plans.json")
    _add_ws(pl)
    pl.add_argument("--memory-gb", type=float, help="memory budget of the training device (default: the "
                    "preset's, 8 GB as nnU-Net's GPU target; resenc-l 24, resenc-xl 40)")
    pl.add_argument("--preset", default="default", choices=["default", "resenc-m", "resenc-l", "resenc-xl"],
                    help="planner preset: nnU-Net's default planner, or its residual-encoder planners ResEnc M/L/XL "
                    "(8/24/40 GB, residual encoder, no 5%% batch cap)")
    pl.add_argument("--spacing", type=float, nargs="+", metavar="MM", help="override the target spacing "
                    "(array axis order: z y x)")
    pl.add_argument("--patch-size", type=int, nargs="+", metavar="VOX", help="override the patch size")
    pl.add_argument("--batch-size", type=int, help="override the batch size")
    pl.add_argument("--config", "-c", help="configuration the overrides apply to (default: 3d_fullres, or 2d for 2D "
                    "data)")
    pl.add_argument("--network", default="plain", help="network from the registry (default: plain)")
    pl.add_argument("--budget", help="training time per fold, e.g. 20m: measure this machine and choose the "
                    "configuration expected to learn most in it (default: nnU-Net's plans, no measurement)")
    _add_device(pl)
    pl.add_argument("--like", metavar="WORKSPACE/DATASET", help="use another planned data set's plans unchanged "
                    "(its folder or its plans.json), e.g. to fine-tune its model on this data set")
    pl.add_argument("--explain", action="store_true", help="print the reason for every choice")
    pl.add_argument("--force", action="store_true", help="re-run even when the inputs did not change")
    pl.set_defaults(func=cmd_plan)

    pp = sub.add_parser("preprocess", help="crop, normalise, resample every case -> preprocessed/<config>/")
    _add_ws(pp)
    pp.add_argument("--config", "-c", help="configuration from plans.json (default: the plan's choice, see "
                    "`segpipe plan --explain`)")
    _add_common(pp)
    pp.set_defaults(func=cmd_preprocess)

    t = sub.add_parser("train", help="train folds of a configuration (resumable), then validate them",
                       epilog="Environment: RANK, LOCAL_RANK and WORLD_SIZE are read when set by torchrun "
                       "(multi-GPU training); nothing else besides $SEGPIPE_WORKSPACE (see --workspace).")
    _add_ws(t)
    t.add_argument("--config", "-c", help="configuration from plans.json (default: the plan's choice, see "
                   "`segpipe plan --explain`: 3d_fullres, 2d for 2D data, or what a --budget plan chose)")
    t.add_argument("--fold", "--folds", "-f", nargs="+", default=["0"], dest="fold", help="fold(s) of splits.json, "
                   "trained in turn (0..4; fewer folds for data sets of under 5 cases), 'all' (train on every case) "
                   "or 'each' (every fold of splits.json)")
    t.add_argument("--epochs", type=int, help="number of epochs (default 1000 unless --budget is given)")
    t.add_argument("--iterations-per-epoch", type=int, help="default 250, or with --budget what fits it")
    t.add_argument("--val-iterations", type=int, help="validation batches per epoch (default: iterations/5, "
                   "2..50)")
    t.add_argument("--budget", help="wall-clock budget of the whole command, e.g. 20m or 1h30m: training, per-epoch "
                   "and final validation fit in it; the learning rate decays over it")
    t.add_argument("--batch-size", type=int, help="override the plan's batch size (e.g. smaller for CPU "
                   "training under a time budget)")
    t.add_argument("--lr", type=float, default=1e-2, help="initial learning rate (default %(default)s)")
    t.add_argument("--seed", type=int, default=0)
    _add_device(t)
    t.add_argument("--threads", type=int, help="torch threads for CPU training (default: torch's choice)")
    t.add_argument("--trainer", "-tr", help="trainer from the registry (default: the plan's, 'default')")
    t.add_argument("--workers", type=int, default=1, help="background processes making augmented batches "
                   "(default %(default)s)")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue the unfinished run (default: automatic)")
    g.add_argument("--no-resume", action="store_true", help="refuse to continue an unfinished run")
    t.add_argument("--force", action="store_true", help="discard this fold's results and train from scratch")
    t.add_argument("--no-validation", action="store_true", help="skip the final full-volume validation")
    t.add_argument("--init-from", metavar="CHECKPOINT", help="fine-tune: start from this checkpoint's weights "
                   "(those whose shapes fit; report in the fold's init_report.json); plan with `segpipe plan "
                   "--like` the pretrained model's data set so that they do")
    t.add_argument("--init-mode", choices=["full", "encoder"], default="full", help="with --init-from: load every "
                   "fitting weight (full) or the encoder's only")
    t.set_defaults(func=cmd_train)

    se = sub.add_parser("select", help="best configuration/ensemble and post-processing from cross-validation")
    _add_ws(se)
    se.add_argument("--config", "-c", nargs="+", help="configurations to consider (default: all planned)")
    se.set_defaults(func=cmd_select)

    pr = sub.add_parser("predict", help="segment new images with trained folds, in their own geometry")
    _add_ws(pr)
    pr.add_argument("--input", "-i", required=True, help="folder of images (<case>_0000<ending> per channel, or "
                    "one file per case for single-channel data)")
    pr.add_argument("--output", "-o", required=True, help="folder for the label maps (created)")
    pr.add_argument("--config", "-c", nargs="+", help="configuration(s); several are ensembled (default: the "
                    "main one, 3d_fullres or 2d)")
    pr.add_argument("--folds", "--fold", "-f", nargs="+", dest="folds", help="folds to ensemble (default: every "
                    "trained fold)")
    pr.add_argument("--best", action="store_true", help="use `segpipe select`'s choice: configuration(s), folds "
                    "and post-processing")
    pr.add_argument("--checkpoint", "-chk", default="final", choices=["final", "best", "latest"])
    pr.add_argument("--no-mirror", "--disable-tta", action="store_true", help="no mirroring test-time augmentation "
                    "(faster; --disable-tta is nnU-Net's name)")
    pr.add_argument("--step-size", type=_step_size, default=0.5, help="sliding-window step as a fraction of the "
                    "patch, in (0, 1] (default 0.5; larger is faster, nnU-Net's -step_size)")
    pr.add_argument("--save-probabilities", action="store_true", help="also write <case>.npz with softmax maps")
    pr.add_argument("--uncertainty", action="store_true", help="also write <case>_entropy<ending> and "
                    "<case>_mutual_information<ending> (per voxel, over mirrorings and folds) and a score per case "
                    "in uncertainty.json")
    pr.add_argument("--predictor", default="sliding-window", metavar="NAME", help="the registered predictor that "
                    "turns a case into probabilities (plug-ins add theirs; default %(default)s)")
    pr.add_argument("--pixel-spacing", type=float, metavar="MM", help="2D images (PNG, TIFF, BMP, JPEG carry no "
                    "spacing): one pixel size for all (mm); 2D input needs this or --spacing-csv")
    pr.add_argument("--spacing-csv", metavar="CSV", help="2D images: CSV with file name and pixel size (mm) "
                    "columns, as for onboarding; every input file needs a row")
    _add_device(pr)
    pr.add_argument("--workers", type=int, default=_default_workers(), help="processes preprocessing and "
                    "exporting cases while the network predicts (default %(default)s)")
    pr.set_defaults(func=cmd_predict)

    ad = sub.add_parser("adapt", help="adapt trained folds to unlabelled images of a new domain (TENT)")
    _add_ws(ad)
    ad.add_argument("--input", "-i", required=True, help="folder of unlabelled target images (named as for "
                    "predict)")
    ad.add_argument("--output", "-o", required=True, help="new folder: a workspace holding the adapted model "
                    "(predict with -w OUTPUT); never the source workspace")
    ad.add_argument("--config", "-c", help="configuration (default: the plan's default)")
    ad.add_argument("--folds", "--fold", "-f", nargs="+", dest="folds", help="folds to adapt, each on its own "
                    "(default: every trained fold)")
    ad.add_argument("--checkpoint", "-chk", default="final", choices=["final", "best", "latest"],
                    help="source checkpoint (the adapted one is written as checkpoint_final.pt)")
    ad.add_argument("--steps", type=int, default=100, help="Adam steps per fold (default %(default)s)")
    ad.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default %(default)s)")
    ad.add_argument("--patches", type=int, default=2, help="patches of the plan's size per step (default "
                    "%(default)s)")
    ad.add_argument("--mirrorings", type=int, help="mirrorings averaged per step (default: all, 8 in 3D, 4 in 2D; "
                    "fewer: the identity and others drawn each step)")
    ad.add_argument("--seed", type=int, default=0)
    ad.add_argument("--balance-weight", type=float, default=10.0, metavar="W", help="weight of the class-balance "
                    "term, KL of the batch's predicted class distribution from the unadapted model's on the same "
                    "patches, added to the entropy (default %(default)s; 0: plain TENT, which tends to shrink the "
                    "foreground)")
    ad.add_argument("--max-drift", type=float, default=0.05, metavar="R", help="stopping rule: stop and keep the "
                    "last parameters that passed when a class's predicted foreground fraction on the target moves "
                    "more than this (relative) from the unadapted model's (default %(default)s)")
    ad.add_argument("--check-every", type=int, default=10, metavar="N", help="steps between checks of the "
                    "stopping rule (default %(default)s; the last step is always checked)")
    ad.add_argument("--no-stop", action="store_true", help="no stopping rule (run every --steps)")
    ad.add_argument("--pixel-spacing", type=float, metavar="MM", help="2D images: one pixel size for all (mm)")
    ad.add_argument("--spacing-csv", metavar="CSV", help="2D images: CSV with file name and pixel size (mm)")
    _add_device(ad)
    ad.add_argument("--workers", type=int, default=_default_workers(), help="processes reading and preprocessing "
                    "the target images (default %(default)s)")
    ad.add_argument("--force", action="store_true", help="replace an adapted model in --output")
    ad.set_defaults(func=cmd_adapt)

    ev = sub.add_parser("evaluate", help="metrics of predicted label maps against references")
    ev.add_argument("--pred", required=True, help="folder of predicted label maps")
    ev.add_argument("--ref", required=True, help="folder of reference label maps (same file names, or see "
                    "--ref-glob); 2D masks stored as 0/255 are read as 0/1, like onboarding reads them")
    ev.add_argument("--ref-glob", metavar="GLOB", help="reference files relative to --ref, '*' is the case id, "
                    "e.g. '*_Mask.png' (default: the predictions' file names)")
    ev.add_argument("--output", "-o", help="new folder for summary.json and metrics.csv, outside --pred and --ref "
                    "(default: <pred>_evaluation beside the --pred folder)")
    ev.add_argument("--labels", nargs="+", metavar="NAME=VALUE", help="classes (default: the workspace dataset's, "
                    "else the values found)")
    _add_ws(ev)
    ev.add_argument("--tolerance", type=float, default=1.0, help="surface Dice tolerance in mm, >= 0 (default 1)")
    ev.add_argument("--pixel-spacing", type=float, metavar="MM", help="2D references (PNG, ...): one pixel size "
                    "for all (mm), so HD95, surface Dice and volumes are in mm")
    ev.add_argument("--spacing-csv", metavar="CSV", help="2D references: CSV with file name and pixel size (mm) "
                    "columns, as for onboarding (looked up by prediction file name, reference file name or "
                    "<case><ending>)")
    ev.add_argument("--attributes", metavar="CSV", help="per-case attributes: a CSV with a case-id column (case_id, "
                    "case, id, file, image or name) and attribute columns (site, scanner, sex, ...); with --group-by "
                    "(default with -w/-n: the attributes given to `segpipe onboard --attributes`)")
    ev.add_argument("--group-by", nargs="+", metavar="COLUMN", default=[], help="attribute column(s) of "
                    "--attributes: every metric per group, and the equity-scaled Dice (ES-Dice), in summary.json's "
                    "'groups'; the columns are appended to metrics.csv")
    ev.add_argument("--no-surface", action="store_true", help="skip HD95 and surface Dice (faster)")
    ev.add_argument("--metrics", type=_metric_names, metavar="A,B", help="registered metrics (plug-ins' included) "
                    "to add per case and class and to the means, comma-separated (default: every registered metric "
                    "that is not marked expensive)")
    ev.add_argument("--workers", type=int, default=_default_workers())
    ev.set_defaults(func=cmd_evaluate)

    rp = sub.add_parser("report", help="one HTML page: data, plans, training, results -> report/index.html")
    _add_ws(rp)
    rp.add_argument("--force", action="store_true", help="make the report again even when nothing changed")
    rp.set_defaults(func=cmd_report)

    ex = sub.add_parser("export-model", help="a trained model (plans, checkpoints, selection) as one zip")
    _add_ws(ex)
    ex.add_argument("--output", "-o", required=True, help="the zip file to write")
    ex.add_argument("--config", "-c", nargs="+", help="configurations (default: the plan's default)")
    ex.add_argument("--folds", "--fold", "-f", nargs="+", dest="folds", help="folds (default: every trained fold)")
    ex.add_argument("--best", action="store_true", help="`segpipe select`'s choice of configurations and folds")
    ex.add_argument("--force", action="store_true", help="replace an existing zip")
    ex.set_defaults(func=cmd_export_model)

    im = sub.add_parser("import-model", help="install a zip from export-model into a workspace")
    im.add_argument("package", help="the zip written by `segpipe export-model`")
    _add_ws(im)
    im.add_argument("--force", action="store_true", help="replace trained folds of the same data set")
    im.set_defaults(func=cmd_import_model)

    en = sub.add_parser("export-network", help="one fold's network as TorchScript or ONNX (checked against PyTorch)")
    _add_ws(en)
    en.add_argument("--output", "-o", required=True, help="the file to write (.pt for TorchScript, .onnx for ONNX)")
    en.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript",
                    help="TorchScript (default) or ONNX (needs: pip install 'segpipe[onnx]')")
    en.add_argument("--config", "-c", help="configuration (default: the plan's default)")
    en.add_argument("--fold", "--folds", "-f", default="0", dest="fold", help="the fold (default 0)")
    en.add_argument("--checkpoint", "-chk", choices=["final", "best", "latest"], default="final")
    en.add_argument("--force", action="store_true", help="replace an existing file")
    en.set_defaults(func=cmd_export_network)

    ru = sub.add_parser("run", help="the whole chain: onboard ... train every fold, select, report")
    ru.add_argument("source", help="the folder holding the data")
    ru.add_argument("--name", "-n", "-d", required=True)
    ru.add_argument("--workspace", "-w")
    ru.add_argument("--config", "-c", nargs="+", help="configurations to train (default: with --budget the one "
                    "the budget plan chose, else all planned)")
    ru.add_argument("--folds", "--fold", "-f", nargs="+", type=int, dest="folds", help="folds to train (default: "
                    "every fold of splits.json: 5, fewer for data sets of under 5 cases)")
    ru.add_argument("--budget", help="time per fold, e.g. 20m: the plan is chosen for it (segpipe plan --budget) "
                    "and each fold's train command fits in it")
    ru.add_argument("--epochs", type=int)
    ru.add_argument("--iterations-per-epoch", type=int, help="default 250, or with --budget what fits it")
    ru.add_argument("--batch-size", type=int, help="override the plans' batch sizes for training")
    ru.add_argument("--trainer", "-tr", help="trainer from the registry for every fold (default: the plan's; e.g. "
                    "bcp for a data set with unlabelled images)")
    _add_device(ru)
    ru.add_argument("--workers", type=int, default=_default_workers())
    ru.add_argument("--onboard-args", nargs=argparse.REMAINDER, default=[],
                    help="the remaining arguments are `segpipe onboard` options (e.g. --labels ... --copy), "
                    "checked and applied to onboarding")
    ru.set_defaults(func=cmd_run)

    d = sub.add_parser("demo", help="every stage on the example data shipped with segpipe")
    d.add_argument("--workspace", "-w", default="demo_workspace", help="where to put the demo's artifacts")
    d.add_argument("--budget", default="2m", help="training budget per fold (default %(default)s)")
    d.add_argument("--config", "-c", nargs="+", help="configurations to train (default: 2d)")
    _add_device(d)
    _add_common(d)
    d.set_defaults(func=cmd_demo)
    return p


def setup_logging(debug: bool, quiet: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("segpipe %(levelname)s: %(message)s" if debug else "%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("numexpr").setLevel(logging.WARNING)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.started_at = time.monotonic()  # when this command started: a training --budget covers all of it
    setup_logging(args.debug, args.quiet)
    try:
        return int(args.func(args) or 0)
    except SegpipeError as e:
        if args.debug:
            log.exception("stopped")
            for p in e.problems:
                if p.detail:
                    print(f"[{p.case or ''}] {p.detail}", file=sys.stderr)
        print(f"segpipe {args.stage}: {e.format()}", file=sys.stderr)
        return 2
    except OSError as e:
        if args.debug:
            raise
        print(f"segpipe {args.stage}: {SegpipeError(os_error_problem(e)).format()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"segpipe {args.stage}: interrupted; re-run the same command to continue", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - last line of defence: one clear line, traceback only with --debug
        if args.debug:
            raise
        print(f"segpipe {args.stage}: unexpected error: {type(e).__name__}: {e}\n"
              f"    fix: re-run with --debug for the traceback and report it", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
