"""Checkpoints: written atomically, read back with ``torch.load(weights_only=True)`` (no pickle of code).

A checkpoint holds only tensors, numbers, strings, lists and dicts: network and optimizer state, the grad
scaler, progress counters, RNG state, the training log and the plan entry it was trained with, and the registry
keys of its components (``registry``: ``{kind: name}``) with the package and version that provided each
(``plugins``: ``{kind: {name: {"package", "version"}}}``), so that a missing plug-in can be named.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from segpipe import plugins
from segpipe.errors import Problem, SegpipeError, fail
from segpipe.io.atomic import atomic_path, verify_zip
from segpipe.planning.plans import NetworkPlan

CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    with atomic_path(path, verify=verify_zip) as tmp:
        torch.save({"checkpoint_version": CHECKPOINT_VERSION, **state}, tmp)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely (``weights_only=True``); errors name the file and what to do."""
    path = Path(path)
    if not path.is_file():
        raise fail("checkpoint not found", "train this fold first (or drop --resume to start fresh)", file=path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling/format failure is a bad file for the user
        raise fail(f"cannot load checkpoint ({type(e).__name__}: {str(e)[:200]})",
                   "the file is damaged or not a segpipe checkpoint; delete it and train again", file=path) from None
    if not isinstance(state, dict) or state.get("checkpoint_version") != CHECKPOINT_VERSION:
        raise fail("not a segpipe checkpoint of a supported version", "train again with this segpipe version",
                   file=path)
    return state


NEEDED_TO_PREDICT = ("network", "normalizer")


def check_registered(state: dict, path: str | os.PathLike, kinds: tuple[str, ...] = NEEDED_TO_PREDICT) -> None:
    """Refuse a checkpoint whose components of ``kinds`` are not registered here (a plug-in that is not installed,
    or failed to load), naming each one's package and version as the checkpoint recorded them and the fix.
    Checkpoints written before segpipe recorded its registry keys pass."""
    keys = state.get("registry")
    if not isinstance(keys, dict):
        return
    recorded = state.get("plugins") or {}
    problems = []
    for kind in kinds:
        names = keys.get(kind)
        names = [names] if isinstance(names, str) else list(names or [])
        missing = [n for n in names if n not in plugins.registry(kind)]
        for name in missing:
            origin = (recorded.get(kind) or {}).get(name) or {}
            package, version = origin.get("package"), origin.get("version")
            if package and version:
                provider = plugins.Provider(str(package), str(version))
                where, fix = f", from {package} {version}", provider.install_hint()
            else:
                where, fix = "", "install the plug-in that provides it (the checkpoint does not say which)"
            problems.append(Problem(f"the model was trained with the {kind} '{name}'{where}, which is not "
                                    f"installed here{plugins.load_errors_note()}", fix + ", then run the command again",
                                    file=str(path)))
    if problems:
        raise SegpipeError(problems)


def check_compatible(state: dict, network: NetworkPlan, path: str | os.PathLike) -> None:
    """Refuse a checkpoint whose components are not installed (:func:`check_registered`) or that was trained with
    a different network topology than the current plan."""
    check_registered(state, path)
    keys = ("name", "n_stages", "features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage",
            "n_conv_per_stage_decoder")
    old = {k: state.get("network_plan", {}).get(k) for k in keys}
    current = network.to_json()
    new = {k: current.get(k) for k in keys}
    if old != new:
        diff = [k for k in keys if old[k] != new[k]]
        raise fail(f"checkpoint was trained with a different network ({', '.join(diff)} differ from plans.json)",
                   "train from scratch (drop --resume), or restore the plans.json it was trained with", file=path)
