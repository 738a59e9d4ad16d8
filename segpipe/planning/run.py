"""``segpipe plan``: read fingerprint.json and dataset.json, write plans.json (skipped when unchanged)."""
from __future__ import annotations

import logging
from pathlib import Path

from segpipe.dataset.onboard import load_dataset
from segpipe.errors import did_you_mean, fail
from segpipe.io.jsonio import read_json, write_json
from segpipe.planning import constants as C
from segpipe.planning.planner import plan_dataset
from segpipe.records import input_state, up_to_date, write_record
from segpipe.workspace import Workspace

log = logging.getLogger(__name__)


def run_plan(ws: Workspace, memory_gb: float = C.DEFAULT_MEMORY_GB, spacing=None, patch_size=None,
             batch_size=None, config: str | None = None, network: str = "plain",
             force: bool = False) -> tuple[dict, bool]:
    """Plan ``ws``'s dataset. Returns (plans, skipped)."""
    from segpipe.networks import resolve_network_name

    network = resolve_network_name(network)
    spec = load_dataset(ws)
    fingerprint = read_json(ws.fingerprint_json, kind="fingerprint")
    settings = {"memory_gb": memory_gb, "spacing": spacing, "patch_size": patch_size, "batch_size": batch_size,
                "config": config, "network": network}
    inputs = input_state([ws.dataset_json, ws.fingerprint_json])
    if not force and up_to_date(ws, "plan", inputs, settings, [ws.plans_json]):
        log.info("plan: inputs unchanged; skipping (use --force to redo)")
        return read_json(ws.plans_json, kind="plans"), True
    plans = plan_dataset(fingerprint, spec, memory_gb, spacing, patch_size, batch_size, config, network)
    write_json(ws.plans_json, plans, kind="plans")
    write_record(ws, "plan", inputs, settings, [ws.plans_json])
    return plans, False


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
    return "\n".join(lines)


def _f(v) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in v) + ")"
