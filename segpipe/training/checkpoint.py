"""Checkpoints: written atomically, read back with ``torch.load(weights_only=True)`` (no pickle of code).

A checkpoint holds only tensors, numbers, strings, lists and dicts: network and optimizer state, the grad
scaler, progress counters, RNG state, the training log and the plan entry it was trained with.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from segpipe.errors import fail
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


def check_compatible(state: dict, network: NetworkPlan, path: str | os.PathLike) -> None:
    """Refuse a checkpoint trained with a different network topology than the current plan."""
    keys = ("name", "n_stages", "features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage",
            "n_conv_per_stage_decoder")
    old = {k: state.get("network_plan", {}).get(k) for k in keys}
    current = network.to_json()
    new = {k: current.get(k) for k in keys}
    if old != new:
        diff = [k for k in keys if old[k] != new[k]]
        raise fail(f"checkpoint was trained with a different network ({', '.join(diff)} differ from plans.json)",
                   "train from scratch (drop --resume), or restore the plans.json it was trained with", file=path)
