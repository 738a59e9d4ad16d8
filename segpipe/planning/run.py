"""``segpipe plan``: read fingerprint.json and dataset.json, write plans.json (skipped when unchanged)."""
from __future__ import annotations

import logging
import math
import numbers
from pathlib import Path

from segpipe.dataset.onboard import load_dataset
from segpipe.errors import did_you_mean, fail
from segpipe.locking import locked
from segpipe.io.jsonio import read_json, refuse_if_newer, write_json
from segpipe.planning import constants as C
from segpipe.planning.planner import plan_dataset
from segpipe.records import input_state, up_to_date, write_record
from segpipe.workspace import Workspace

log = logging.getLogger(__name__)


@locked("plan", exclusive=True)
def run_plan(ws: Workspace, memory_gb: float = C.DEFAULT_MEMORY_GB, spacing=None, patch_size=None,
             batch_size=None, config: str | None = None, network: str = "plain",
             force: bool = False, budget_s: float | None = None, device: str = "auto",
             precision: str = "auto") -> tuple[dict, bool]:
    """Plan ``ws``'s dataset. Returns (plans, skipped).

    With ``budget_s`` (seconds of training per fold), the configuration expected to learn most within it on
    ``device`` is chosen by measurement (:mod:`segpipe.planning.budget`) and becomes the plan's
    ``default_configuration``; without, plans are nnU-Net's and the default is 3d_fullres (2d for 2D data).
    """
    from segpipe.networks import resolve_network_name

    check_overrides(memory_gb, spacing, patch_size, batch_size)
    network = resolve_network_name(network)
    spec = load_dataset(ws)
    fingerprint = read_json(ws.fingerprint_json, kind="fingerprint")
    check_override_axes(fingerprint.get("ndim"), spacing, patch_size, config, ws.fingerprint_json)
    if budget_s is not None and not (_positive_number(budget_s)):
        raise fail(f"--budget {budget_s} s is not a positive duration", "give e.g. --budget 20m")
    settings = {"memory_gb": memory_gb, "spacing": spacing, "patch_size": patch_size, "batch_size": batch_size,
                "config": config, "network": network}
    if budget_s is not None:
        from segpipe.devices import pick_device

        settings.update({"budget_s": budget_s, "device": pick_device(device).type, "precision": precision})
    inputs = input_state([ws.dataset_json, ws.fingerprint_json])
    if not force and up_to_date(ws, "plan", inputs, settings, [ws.plans_json]):
        log.info("plan: inputs unchanged; skipping (use --force to redo)")
        return read_json(ws.plans_json, kind="plans"), True
    for path in (ws.plans_json, ws.record("plan")):  # before planning: never overwrite a newer segpipe's work
        refuse_if_newer(path, writing=True)
    plans = plan_dataset(fingerprint, spec, memory_gb, spacing, patch_size, batch_size, config, network)
    plans["default_configuration"] = "3d_fullres" if "3d_fullres" in plans["configurations"] else "2d"
    if budget_s is not None:
        from segpipe.planning.budget import plan_for_budget
        from segpipe.planning.calibration import Calibration

        calibration = Calibration(ws.dir / "calibration.json", device, precision)
        plan_for_budget(plans, fingerprint, spec.n_channels, spec.n_classes, budget_s, calibration, network)
    write_json(ws.plans_json, plans, kind="plans")
    write_record(ws, "plan", inputs, settings, [ws.plans_json])
    return plans, False


def check_overrides(memory_gb, spacing=None, patch_size=None, batch_size=None) -> None:
    """Refuse overrides that cannot work (zero, negative, NaN, wrong type), before anything is read or written."""
    if not _positive_number(memory_gb):
        raise fail(f"--memory-gb {memory_gb} is not a positive number of gigabytes",
                   "give the training device's memory, e.g. --memory-gb 8 (or leave it out)")
    if spacing is not None:
        if not len(spacing) or not all(_positive_number(s) for s in spacing):
            raise fail(f"--spacing {list(spacing)} must be positive, finite millimetres per axis",
                       "give e.g. --spacing 3 0.8 0.8 (z y x), or leave it out to use the data set's median")
    if patch_size is not None:
        if not len(patch_size) or not all(_positive_int(p) for p in patch_size):
            raise fail(f"--patch-size {list(patch_size)} must be whole numbers >= 1 per axis",
                       "give e.g. --patch-size 64 128 128 (z y x), or leave it out to let the planner choose")
    if batch_size is not None and not _positive_int(batch_size):
        raise fail(f"--batch-size {batch_size} must be a whole number >= 1", "give e.g. --batch-size 2, or leave "
                   "it out to let the planner choose")


def check_override_axes(ndim, spacing, patch_size, config: str | None, file: Path) -> None:
    """Refuse a --spacing or --patch-size with the wrong number of axes for the data and configuration."""
    if ndim not in (2, 3):
        return  # a damaged fingerprint is reported by the planner
    target = config or ("3d_fullres" if ndim == 3 else "2d")
    want_patch = 2 if target == "2d" else 3
    if spacing is not None and len(spacing) != ndim:
        raise fail(f"--spacing has {len(spacing)} value(s) {list(spacing)}, the data set is {ndim}D",
                   f"give {ndim} values in array axis order ({'z y x' if ndim == 3 else 'y x'})", file=file)
    if patch_size is not None and len(patch_size) != want_patch:
        raise fail(f"--patch-size has {len(patch_size)} value(s) {list(patch_size)}, configuration '{target}' "
                   f"needs {want_patch}", f"give {want_patch} values in array axis order "
                   f"({'z y x' if want_patch == 3 else 'y x'}), or choose another --config", file=file)


def _positive_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _positive_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1


def default_configuration(plans: dict) -> str:
    """The configuration stages use without ``--config``: the plan's choice (the budget's, when planned with
    one), else 3d_fullres, else 2d."""
    configs = plans.get("configurations", {})
    chosen = plans.get("default_configuration")
    if chosen in configs:
        return chosen
    return "3d_fullres" if "3d_fullres" in configs else "2d"


def get_configuration(plans: dict, config: str, plans_file: Path) -> dict:
    """The plan entry of ``config``; an unknown name is a user error with a did-you-mean hint."""
    configs = plans.get("configurations", {})
    if config not in configs:
        raise fail(f"unknown configuration '{config}'{did_you_mean(config, configs)}; this plan has "
                   f"{list(configs)}", f"choose one of {list(configs)} with --config", file=plans_file)
    return configs[config]


def summarize(plans: dict, explain: bool = False) -> str:
    """A human-readable table of the plans; with ``explain``, the reason for each choice."""
    lines = [f"plans for '{plans['dataset']}' (memory budget: {plans['memory_budget']['assumed']}; "
             f"{plans['axis_order']})"]
    for name, c in plans["configurations"].items():
        net = c["network"]
        lines.append(f"  {name:11s} spacing {_f(c['spacing'])} mm  patch {c['patch_size']}  batch {c['batch_size']}"
                     f"  {net['name']} U-Net: {net['n_stages']} stages, features {net['features_per_stage']}")
        lines.append(f"  {'':11s} strides {net['strides'][1:]}  kernels {net['kernel_sizes']}")
        lines.append(f"  {'':11s} normalization {[n['scheme'] + ('(mask)' if n.get('use_mask') else '') for n in c['normalization']]}")
        if explain:
            for k, v in c["why"].items():
                lines.append(f"  {'':11s} why {k}: {v}")
    for n in plans.get("notes", []):
        lines.append(f"  note: {n}")
    lines.append(f"  default configuration (used without --config): {default_configuration(plans)}")
    b = plans.get("budget")
    if b:
        lines.append(f"  budget {b['budget_s']:.0f} s per fold on {b['machine']['device']} ({b['machine']['name']}, "
                     f"{b['machine']['threads']} threads): {b['chosen']} because {b['reason']}")
        if explain:
            lines.append(f"  {'':11s} rule: {b['rule']}")
            lines.append(f"  {'':11s} {'candidate':22s} {'fidelity':>8s} {'s/iter':>8s} {'iters':>6s}  patch, batch")
            for c in b["candidates"]:
                mark = "" if c["measured"] else " (estimated)"
                lines.append(f"  {'':11s} {c['name']:22s} {c['fidelity']:8.3f} {c['seconds_per_iteration']:8.3f} "
                             f"{c['expected_iterations']:6d}  {c['patch_size']}, {c['batch_size']}{mark}")
    return "\n".join(lines)


def _f(v) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in v) + ")"
