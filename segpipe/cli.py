"""``segpipe <stage>``: argument parsing only, one thin function per stage.

Exit codes: 0 success, 2 a problem with the input (message names file, problem and fix), 1 an unexpected
error (traceback with --debug), 130 interrupted.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from segpipe._version import __version__
from segpipe.errors import SegpipeError, fail

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
    p.add_argument("--name", "-n", required=name_required,
                   help="dataset name in the workspace (default: the workspace's only dataset)")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="re-run even when the inputs did not change")
    p.add_argument("--workers", type=int, default=_default_workers(), help="worker processes (default: %(default)s)")


def cmd_onboard(a: argparse.Namespace) -> int:
    from segpipe.dataset.formats.common import OnboardOptions
    from segpipe.dataset.onboard import onboard
    from segpipe.workspace import DEFAULT_WORKSPACE_ENV

    opts = OnboardOptions(name=a.name, format=a.format, channels=a.channels or [], labels=_labels(a.labels),
                          image_globs=a.image_glob or [], label_glob=a.label_glob,
                          spacing_csv=Path(a.spacing_csv) if a.spacing_csv else None, pixel_spacing=a.pixel_spacing)
    root = a.workspace or os.environ.get(DEFAULT_WORKSPACE_ENV) or "segpipe_workspace"
    ws, spec, warnings, skipped = onboard(a.source, root, opts, copy=a.copy, workers=a.workers, force=a.force,
                                          allow_external_links=a.allow_external_links)
    for w in warnings:
        log.warning(w.format())
    state = "unchanged, skipped" if skipped else "onboarded"
    print(f"{spec.name}: {state}: {len(spec.cases)} cases, channels {list(spec.channels.values())}, "
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
    from segpipe.workspace import Workspace

    ws = Workspace.locate(a.workspace, a.name).require_dataset()
    plans, skipped = run_plan(ws, memory_gb=a.memory_gb, spacing=a.spacing, patch_size=a.patch_size,
                              batch_size=a.batch_size, config=a.config, network=a.network, force=a.force)
    print(summarize(plans, explain=a.explain))
    print(f"{ws.plans_json}: {'unchanged, skipped' if skipped else 'written'}")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from segpipe.demo import run_demo

    return run_demo(Path(a.workspace), workers=a.workers, force=a.force)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="segpipe", description="Self-configuring medical image segmentation.")
    p.add_argument("--version", action="version", version=f"segpipe {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.add_argument("--quiet", "-q", action="store_true", help="only warnings and errors")
    sub = p.add_subparsers(dest="stage", required=True, metavar="<stage>")

    o = sub.add_parser("onboard", help="describe and validate a folder of labelled images as a dataset")
    o.add_argument("source", help="the folder holding the data (never written to)")
    o.add_argument("--name", "-n", required=True, help="dataset name (letters, digits, _ -)")
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
    o.add_argument("--copy", action="store_true", help="copy the case files into the workspace instead of linking")
    o.add_argument("--allow-external-links", action="store_true", help="accept files that are symlinks to places "
                   "outside the folder (refused by default)")
    _add_common(o)
    o.set_defaults(func=cmd_onboard)

    f = sub.add_parser("fingerprint", help="per-case geometry and intensity statistics -> fingerprint.json")
    _add_ws(f)
    _add_common(f)
    f.set_defaults(func=cmd_fingerprint)

    pl = sub.add_parser("plan", help="spacing, patch, batch, network per configuration -> plans.json")
    _add_ws(pl)
    pl.add_argument("--memory-gb", type=float, default=8.0, help="memory budget of the training device "
                    "(default 8, nnU-Net's GPU target)")
    pl.add_argument("--spacing", type=float, nargs="+", metavar="MM", help="override the target spacing "
                    "(array axis order: z y x)")
    pl.add_argument("--patch-size", type=int, nargs="+", metavar="VOX", help="override the patch size")
    pl.add_argument("--batch-size", type=int, help="override the batch size")
    pl.add_argument("--config", help="configuration the overrides apply to (default: 3d_fullres, or 2d for 2D "
                    "data)")
    pl.add_argument("--network", default="plain", help="network from the registry (default: plain)")
    pl.add_argument("--explain", action="store_true", help="print the reason for every choice")
    pl.add_argument("--force", action="store_true", help="re-run even when the inputs did not change")
    pl.set_defaults(func=cmd_plan)

    d = sub.add_parser("demo", help="run the stages on the example data shipped with segpipe")
    d.add_argument("--workspace", "-w", default="demo_workspace", help="where to put the demo's artifacts")
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.debug, args.quiet)
    try:
        return int(args.func(args) or 0)
    except SegpipeError as e:
        if args.debug:
            log.exception("stopped")
        print(f"segpipe {args.stage}: {e.format()}", file=sys.stderr)
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
