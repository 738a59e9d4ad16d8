"""``segpipe plan``: read fingerprint.json and dataset.json, write plans.json (skipped when unchanged)."""
from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from segpipe.dataset.store import load_dataset
from segpipe.errors import SegpipeError, fail
from segpipe.io.jsonio import read_json, refuse_if_newer, write_json
from segpipe.locking import locked
from segpipe.planning.planner import plan_dataset
from segpipe.planning.plans import Plans, read_plans
from segpipe.records import input_state, up_to_date, write_record
from segpipe.workspace import Workspace

log = logging.getLogger(__name__)


@locked("plan", exclusive=True)
def run_plan(ws: Workspace, memory_gb: float | None = None, spacing: Sequence[float] | None = None,
             patch_size: Sequence[int] | None = None, batch_size: int | None = None, config: str | None = None,
             network: str = "plain", force: bool = False, budget_s: float | None = None, device: str = "auto",
             precision: str = "auto", like: str | Path | None = None, preset: str = "default"
             ) -> tuple[Plans, bool]:
    """Plan ``ws``'s dataset. Returns (plans, skipped).

    With ``like`` (a planned data set's folder or its plans.json) the other data set's configurations are used
    unchanged (:mod:`segpipe.planning.transfer`); overrides and ``budget_s`` are refused with it. ``preset``
    (:mod:`segpipe.planning.presets`: default, resenc-m, resenc-l, resenc-xl) sets the memory target (unless
    ``memory_gb`` is given), the memory model, the network and the batch cap.

    plans.json is written only after it parses as a :class:`Plans` (so every reader gets a valid plan); a
    plans.json that no longer parses (written by an older segpipe) is planned again.

    With ``budget_s`` (seconds of training per fold), the configuration expected to learn most within it on
    ``device`` is chosen by measurement (:mod:`segpipe.planning.budget`) and becomes the plan's
    ``default_configuration``; without, plans are nnU-Net's and the default is 3d_fullres (2d for 2D data).
    """
    from segpipe.networks import resolve_network_name
    from segpipe.planning.presets import get_preset

    chosen = get_preset(preset)
    memory_given, network_given = memory_gb is not None, network != "plain"
    if chosen.name != "default":
        if budget_s is not None:
            raise fail(f"--preset {preset} and --budget choose the network in different ways",
                       "give one of them: --budget measures this machine; --preset plans nnU-Net's ResEnc "
                       "networks for a GPU of the preset's memory")
        if network not in ("plain", chosen.network):
            raise fail(f"--preset {preset} plans a '{chosen.network}' network; --network {network} contradicts it",
                       "leave out --network (or --preset)")
        network = chosen.network
    memory_gb = chosen.memory_gb if memory_gb is None else memory_gb
    check_overrides(memory_gb, spacing, patch_size, batch_size)
    network = resolve_network_name(network)
    spec = load_dataset(ws)
    fingerprint = read_json(ws.fingerprint_json, kind="fingerprint")
    check_override_axes(fingerprint.get("ndim"), spacing, patch_size, config, ws.fingerprint_json)
    if budget_s is not None and not (_positive_number(budget_s)):
        raise fail(f"--budget {budget_s} s is not a positive duration", "give e.g. --budget 20m")
    settings: dict[str, Any] = {"memory_gb": memory_gb, "spacing": spacing, "patch_size": patch_size,
                                "batch_size": batch_size, "config": config, "network": network,
                                "preset": chosen.name}
    source_path = None
    if like is not None:
        from segpipe.planning.transfer import source_plans_path

        given = [flag for flag, v in (("--spacing", spacing), ("--patch-size", patch_size),
                                      ("--batch-size", batch_size), ("--budget", budget_s), ("--config", config))
                 if v is not None]
        given += [flag for flag, changed in (("--preset", preset != "default"), ("--network", network_given),
                                             ("--memory-gb", memory_given)) if changed]
        if given:
            raise fail(f"--like uses the other data set's plans unchanged; {', '.join(given)} cannot change them",
                       "leave out " + ", ".join(given) + " (or plan without --like)")
        source_path = source_plans_path(like)
        settings["like"] = str(source_path.resolve())
    if budget_s is not None:
        from segpipe.devices import pick_device

        settings.update({"budget_s": budget_s, "device": pick_device(device).type, "precision": precision})
    inputs = input_state([ws.dataset_json, ws.fingerprint_json, *([source_path] if source_path else [])])
    if not force and up_to_date(ws, "plan", inputs, settings, [ws.plans_json]):
        try:
            plans = read_plans(ws.plans_json)
        except SegpipeError as e:
            log.warning("plan: the existing plans.json does not parse (%s); planning again", e.problems[0].problem)
        else:
            log.info("plan: inputs unchanged; skipping (use --force to redo)")
            return plans, True
    for path in (ws.plans_json, ws.record("plan")):  # before planning: never overwrite a newer segpipe's work
        refuse_if_newer(path, writing=True)
    if source_path is not None:
        from segpipe.planning.transfer import transfer_plans

        raw = transfer_plans(read_plans(source_path), spec, fingerprint)
    else:
        raw = plan_dataset(fingerprint, spec, memory_gb, spacing, patch_size, batch_size, config, network, chosen)
    if budget_s is not None:
        from segpipe.planning.budget import plan_for_budget
        from segpipe.planning.calibration import Calibration

        calibration = Calibration(ws.calibration_json, device, precision)
        plan_for_budget(raw, fingerprint, spec.n_channels, spec.n_outputs, budget_s, calibration, network)
    typed = Plans.from_json(raw, file=ws.plans_json)  # a plan that does not parse is a planner bug: never written
    _check_networks(typed, spec.n_channels, spec.n_outputs, memory_gb)
    write_json(ws.plans_json, typed.to_json(), kind="plans")
    write_record(ws, "plan", inputs, settings, [ws.plans_json])
    return typed, False


def _check_networks(plans: Plans, n_channels: int, n_outputs: int, memory_gb: float) -> None:
    """Check every configuration's network against its declared capabilities (:func:`segpipe.networks.registry.
    plan_problems`): errors refuse the plan, warnings (a plug-in's memory estimate over the budget) are logged."""
    from segpipe.networks.registry import plan_problems

    problems = [p for c in plans.configurations.values() for p in plan_problems(c, n_channels, n_outputs, memory_gb)]
    for p in problems:
        if p.severity == "warning":
            log.warning("plan: %s (fix: %s)", p.problem, p.fix)
    errors = [p for p in problems if p.severity != "warning"]
    if errors:
        raise SegpipeError(errors)


def check_overrides(memory_gb: float, spacing: Sequence[float] | None = None, patch_size: Sequence[int] | None = None,
                    batch_size: int | None = None) -> None:
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


def check_override_axes(ndim: object, spacing: Sequence[float] | None, patch_size: Sequence[int] | None,
                        config: str | None, file: Path) -> None:
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


def _positive_number(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and float(v) > 0


def _positive_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and int(v) >= 1


def summarize(plans: Plans, explain: bool = False) -> str:
    """A human-readable table of the plans; with ``explain``, the reason for each choice."""
    lines = [f"plans for '{plans.dataset}' (memory budget: {plans.memory_budget.get('assumed', '?')}; "
             f"{plans.axis_order})"]
    for name, c in plans.configurations.items():
        topo = c.network.topology
        lines.append(f"  {name:11s} spacing {_f(c.spacing)} mm  patch {list(c.patch_size)}  batch {c.batch_size}"
                     f"  {c.network.name} U-Net: {topo.n_stages} stages, features {list(topo.features_per_stage)}")
        lines.append(f"  {'':11s} strides {[list(s) for s in topo.strides[1:]]}  kernels "
                     f"{[list(k) for k in topo.kernel_sizes]}")
        norms = [n.scheme + ("(mask)" if n.use_mask else "") for n in c.normalization]
        lines.append(f"  {'':11s} normalization {norms}; trainer '{c.trainer}'")
        if explain:
            for k, v in c.why.items():
                lines.append(f"  {'':11s} why {k}: {v}")
    for n in plans.notes:
        lines.append(f"  note: {n}")
    lines.append(f"  default configuration (used without --config): {plans.default_configuration}")
    b = plans.budget
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


def _f(v: Iterable[float]) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in v) + ")"
