"""Planning for the user's device and time budget (``segpipe plan --budget 20m --device auto``).

nnU-Net plans for a fixed 8 GB GPU. With a budget, segpipe builds candidate configurations around nnU-Net's
plan (its default; coarser target spacings grown the way 3d_lowres grows them; smaller patches, i.e. the
planner's patch rule under a smaller memory target; a narrower network; batch size 2; 2d), measures this
machine's seconds per iteration on the cheapest of them (:mod:`segpipe.planning.calibration`), estimates the
rest from the measured seconds per unit of work, and picks by one rule:

    the most faithful candidate that can train at least its minimum of iterations in the budget (after the
    final validation is reserved: ``MIN_ITERATIONS_3D`` for a 3D patch of batch 2, ``MIN_ITERATIONS_2D`` for
    a 2D batch of 12), a 2D one on 3D data only when no 3D candidate can; when none can, the one that comes
    closest to its minimum.

"Faithful" is a fidelity prior (``fidelity``): 1 for nnU-Net's plan, lowered for coarser spacing (x 1/factor),
smaller patches (x coverage^0.15), half width (x 0.9) and 2d for 3D data (x 0.8). The constants and the
measurements behind the minimums are in docs/plans.md. All choices, figures and the reason go into
plans.json (``budget``) and ``segpipe plan --explain``.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from segpipe.planning.configuration import plan_configuration
from segpipe.planning.memory import feature_map_voxels
from segpipe.planning.spacing import resampled_shapes
from segpipe.training.budget import FinalValidationCost, final_validation_cost, final_validation_reserve

if TYPE_CHECKING:
    from segpipe.planning.calibration import Calibration

log = logging.getLogger(__name__)

MIN_ITERATIONS_2D = 500           # iterations a candidate must reach in the budget to be preferred (docs/plans.md):
MIN_ITERATIONS_3D = 1500          # a small structure of the CT set was still missed after 900 3D iterations
SPACING_FACTORS = (1.0, 1.5, 2.0, 3.0)
MEMORY_TARGETS_GB = (8.0, 2.0, 0.5, 0.125)
WIDTH_FACTORS = (1.0, 0.5)
BUDGET_BATCH_3D = 2
BUDGET_BATCH_2D = 12              # nnU-Net's reference 2D batch
HALF_WIDTH_FIDELITY = 0.9
TWO_D_FOR_3D_FIDELITY = 0.6
COVERAGE_EXPONENT = 0.15
ITERATION_OVERHEAD = 1.3          # data loading and augmentation on top of the calibrated forward+backward
STARTUP_S = 15.0                  # process start, network build, first batches
FORWARD_SHARE = 1 / 3             # a forward pass is about a third of a training iteration
MEASURE_CHEAPEST = 2              # candidates measured from the cheapest up, to start the estimate
MAX_MEASURED_SECONDS = 8.0        # a chosen candidate is measured (and the choice redone) when estimated below
MAX_CHOICE_ROUNDS = 6             # measure-and-choose rounds


@dataclass
class Candidate:
    """One configuration the budget planner considers (``config`` is a plans.json configuration entry)."""

    name: str
    config: dict[str, Any]
    fidelity: float
    work: float
    description: str
    seconds_per_iteration: float = float("nan")
    measured: bool = False
    expected_iterations: int = 0
    validation_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "spacing": self.config["spacing"],
                "patch_size": self.config["patch_size"], "batch_size": self.config["batch_size"],
                "features_per_stage": self.config["network"]["features_per_stage"],
                "fidelity": round(self.fidelity, 4),
                "seconds_per_iteration": round(self.seconds_per_iteration, 4), "measured": self.measured,
                "expected_iterations": self.expected_iterations,
                "final_validation_seconds": round(self.validation_seconds, 1)}


def _work(cfg: Mapping[str, Any], n_classes: int) -> float:
    net = cfg["network"]
    return float(feature_map_voxels(cfg["patch_size"], net["strides"], net["features_per_stage"], n_classes)
                 * cfg["batch_size"])


def coarser_spacing(spacing: Sequence[float], factor: float) -> list[float]:
    """Grow the finest axes first (as 3d_lowres does): every axis at least ``factor`` x the finest spacing."""
    floor = min(spacing) * factor
    return [max(float(s), floor) for s in spacing]


def _narrow(cfg: dict[str, Any], width: float) -> dict[str, Any]:
    if width == 1.0:
        return cfg
    out = dict(cfg)
    out["network"] = dict(cfg["network"])
    out["network"]["features_per_stage"] = [max(8, int(f * width)) for f in cfg["network"]["features_per_stage"]]
    return out


def make_candidates(plans: Mapping[str, Any], fingerprint: Mapping[str, Any], n_classes: int,
                    network: str = "plain", n_channels: int = 1) -> list[Candidate]:
    """nnU-Net's configurations and the variants around them (see the module docstring); ``n_channels``: the
    network's input channels (for a network's own memory estimate)."""
    ndim = fingerprint["ndim"]
    spacings, shapes = fingerprint["spacings"], fingerprint["shapes_after_crop"]
    n_cases = fingerprint["n_cases"]
    configs = plans["configurations"]
    main = "3d_fullres" if ndim == 3 else "2d"
    base = configs[main]
    base_patch_vox = float(np.prod(base["patch_size"]))
    out = [Candidate(name, cfg, 1.0 if name == main else (TWO_D_FOR_3D_FIDELITY if name == "2d" else 0.9),
                     _work(cfg, n_classes), f"nnU-Net's {name} plan") for name, cfg in configs.items()
           if cfg.get("previous_stage") is None]  # a cascade stage needs its previous stage trained first
    seen = {(tuple(c.config["spacing"]), tuple(c.config["patch_size"]), c.config["batch_size"],
             tuple(c.config["network"]["features_per_stage"])) for c in out}
    full_sp = [float(s) for s in plans["full_resolution_spacing"]]
    for factor in SPACING_FACTORS:
        sp = coarser_spacing(full_sp, factor)
        median = np.median(resampled_shapes(spacings, shapes, sp), axis=0)
        n_vox = float(np.prod(median) * n_cases)
        dims = [(sp, median, ndim == 3)] + ([(sp[1:], median[1:], False)] if ndim == 3 else [])
        for d_sp, d_med, is3d in dims:
            for mem in MEMORY_TARGETS_GB:
                cfg0 = plan_configuration(d_sp, d_med.tolist(), n_vox, n_classes, mem, network=network,
                                          in_channels=n_channels)
                cfg0["batch_size"] = BUDGET_BATCH_3D if is3d else BUDGET_BATCH_2D
                cfg0["why"]["batch_size"] = (f"{cfg0['batch_size']}: the budget planner trains "
                                             f"{'3D' if is3d else '2D'} candidates at this batch size")
                for width in WIDTH_FACTORS:
                    cfg = _narrow(cfg0, width)
                    key = (tuple(cfg["spacing"]), tuple(cfg["patch_size"]), cfg["batch_size"],
                           tuple(cfg["network"]["features_per_stage"]))
                    if key in seen:
                        continue
                    seen.add(key)
                    ref_vox = base_patch_vox if is3d == (ndim == 3) else float(np.prod(configs["2d"]["patch_size"]))
                    coverage = min(1.0, float(np.prod(cfg["patch_size"])) / ref_vox * factor ** len(d_sp))
                    fidelity = (1 / factor) * coverage ** COVERAGE_EXPONENT * (HALF_WIDTH_FIDELITY if width < 1 else 1)
                    if ndim == 3 and not is3d:
                        fidelity *= TWO_D_FOR_3D_FIDELITY
                    kind = "3d" if is3d else "2d"
                    desc = (f"{kind}, spacing x{factor:g}, patch for {mem:g} GB, "
                            f"{'half' if width < 1 else 'full'} width, batch {cfg['batch_size']}")
                    name = f"{kind}_s{factor:g}_m{mem:g}_w{width:g}"
                    out.append(Candidate(name, cfg, fidelity, _work(cfg, n_classes), desc))
    return out


def _final_validation(c: Candidate, plans: Mapping[str, Any], fingerprint: Mapping[str, Any],
                      n_classes: int) -> FinalValidationCost:
    """Estimated cost of one fold's final validation: a fifth of the cases, each at the median shape."""
    spacings, shapes = fingerprint["spacings"], fingerprint["shapes_after_crop"]
    sp = c.config["spacing"]
    full_sp = plans["full_resolution_spacing"]
    if len(sp) < len(full_sp):  # 2d for 3D data: slices at the full resolution's z spacing
        sp = [full_sp[0], *sp]
    median = [int(m) for m in np.median(resampled_shapes(spacings, shapes, sp), axis=0)]
    raw_voxels = int(np.median([np.prod(s) for s in shapes]))
    n_val = max(1, math.ceil(fingerprint["n_cases"] / 5))
    per_window = c.seconds_per_iteration * FORWARD_SHARE / c.config["batch_size"]
    return final_validation_cost([median] * n_val, [raw_voxels] * n_val, c.config["patch_size"], n_classes,
                                 per_window)


def min_iterations(c: Candidate) -> int:
    """The iterations candidate ``c`` must be expected to train to be preferred: by its patch's dimensions."""
    return MIN_ITERATIONS_3D if len(c.config["patch_size"]) == 3 else MIN_ITERATIONS_2D


def choose(candidates: list[Candidate], budget_s: float, plans: Mapping[str, Any], fingerprint: Mapping[str, Any],
           n_classes: int) -> tuple[Candidate, str]:
    """Fill in expected iterations and pick a candidate by the rule in the module docstring. The final
    validation is reserved as the trainer will reserve it (:func:`final_validation_reserve`)."""
    for c in candidates:
        final = _final_validation(c, plans, fingerprint, n_classes)
        fits = final_validation_reserve(budget_s, final)
        if fits is None:
            c.validation_seconds = final.seconds(False)
            c.expected_iterations = 0
            c.notes.append("its final validation would not fit the budget")
            continue
        reserve, mirror = fits
        c.validation_seconds = final.seconds(mirror)
        train_s = budget_s - STARTUP_S - reserve
        c.expected_iterations = max(0, int(train_s / (c.seconds_per_iteration * ITERATION_OVERHEAD)))
    enough = [c for c in candidates if c.expected_iterations >= min_iterations(c)]
    dims = max(len(c.config["patch_size"]) for c in candidates)
    if any(len(c.config["patch_size"]) == dims for c in enough):  # 3D data: 2D only when no 3D candidate can
        enough = [c for c in enough if len(c.config["patch_size"]) == dims]
    if enough:
        best = max(enough, key=lambda c: (c.fidelity, c.expected_iterations))
        why = (f"the most faithful of the {len(enough)} candidate(s) expected to train their minimum of iterations "
               f"({MIN_ITERATIONS_3D} in 3D, {MIN_ITERATIONS_2D} in 2D) in the budget "
               f"(~{best.expected_iterations} at {best.seconds_per_iteration:.2f} s per iteration; fidelity "
               f"{best.fidelity:.2f})")
    else:
        best = max(candidates, key=lambda c: (c.expected_iterations / min_iterations(c), c.fidelity))
        why = (f"no candidate reaches its minimum of iterations ({MIN_ITERATIONS_3D} in 3D, {MIN_ITERATIONS_2D} in "
               f"2D) in the budget; this one comes closest (~{best.expected_iterations} at "
               f"{best.seconds_per_iteration:.2f} s per iteration)")
    return best, why


def estimate_seconds(candidates: list[Candidate], calibration: Calibration, n_channels: int, n_classes: int) -> None:
    """Measure the cheapest candidates, estimate the others from a power law fitted to the measurements
    (seconds = a * work^b, b >= 1: large networks use the machine less efficiently, never more)."""
    order = sorted(candidates, key=lambda c: c.work)
    for c in order[:MEASURE_CHEAPEST]:
        c.seconds_per_iteration = calibration.seconds(c.config["network"], n_channels, n_classes,
                                                      c.config["patch_size"], c.config["batch_size"])
        c.measured = True
    for c in order[MEASURE_CHEAPEST:]:
        if calibration.is_measured(c.config["network"], n_channels, n_classes, c.config["patch_size"],
                                   c.config["batch_size"]):
            c.seconds_per_iteration = calibration.seconds(c.config["network"], n_channels, n_classes,
                                                          c.config["patch_size"], c.config["batch_size"])
            c.measured = True
    fit_power_law(candidates)


def fit_power_law(candidates: list[Candidate]) -> tuple[float, float]:
    """Fill ``seconds_per_iteration`` of unmeasured candidates from the measured ones; returns (a, b)."""
    m = [c for c in candidates if c.measured and c.seconds_per_iteration > 0]
    x = np.log([c.work for c in m])
    y = np.log([c.seconds_per_iteration for c in m])
    if len(m) >= 2 and np.ptp(x) > 0.1:
        b = max(1.0, float(np.polyfit(x, y, 1)[0]))
    else:
        b = 1.0
    a = float(np.exp(np.mean(y - b * x)))
    for c in candidates:
        if not c.measured:
            c.seconds_per_iteration = a * c.work ** b
    return a, b


def plan_for_budget(plans: dict[str, Any], fingerprint: Mapping[str, Any], n_channels: int, n_classes: int,
                    budget_s: float, calibration: Calibration, network: str = "plain") -> dict[str, Any]:
    """Add the budget's choice to ``plans`` (a configuration and the ``budget`` record); returns ``plans``."""
    candidates = make_candidates(plans, fingerprint, n_classes, network, n_channels)
    estimate_seconds(candidates, calibration, n_channels, n_classes)
    best, why = choose(candidates, budget_s, plans, fingerprint, n_classes)
    for _ in range(MAX_CHOICE_ROUNDS):  # estimates steer, measurements decide: measure the choice, choose again
        if best.measured or best.seconds_per_iteration > MAX_MEASURED_SECONDS:
            break
        best.seconds_per_iteration = calibration.seconds(best.config["network"], n_channels, n_classes,
                                                         best.config["patch_size"], best.config["batch_size"])
        best.measured = True
        fit_power_law(candidates)
        best, why = choose(candidates, budget_s, plans, fingerprint, n_classes)
    calibration.save()
    if best.name in plans["configurations"]:
        chosen = best.name
    else:
        dim = len(best.config["patch_size"])
        chosen = "3d_budget" if dim == 3 else "2d_budget"
        base = plans["configurations"]["3d_fullres" if dim == 3 and "3d_fullres" in plans["configurations"]
                                      else "2d"]
        cfg = dict(best.config)
        cfg["why"] = dict(cfg.get("why", {}))
        cfg["why"]["budget"] = f"{best.description}: {why}"
        for key in ("normalization", "resampling", "batch_dice"):
            if key in base:
                cfg[key] = base[key]
        cfg["why"]["normalization"] = base["why"].get("normalization", "")
        cfg["why"]["resampling"] = base["why"].get("resampling", "")
        cfg["data_identifier"] = chosen
        plans["configurations"][chosen] = cfg
    plans["default_configuration"] = chosen
    plans["budget"] = {
        "budget_s": budget_s, "machine": calibration.machine, "rule": (
            f"most faithful candidate with >= {MIN_ITERATIONS_3D} (3D) / {MIN_ITERATIONS_2D} (2D) expected "
            "iterations, else the closest to its minimum"),
        "chosen": chosen, "candidate": best.name, "reason": why,
        "candidates": [c.to_dict() for c in sorted(candidates, key=lambda c: -c.fidelity)]}
    log.info("budget plan: %s (%s): %s", chosen, best.description, why)
    return plans
