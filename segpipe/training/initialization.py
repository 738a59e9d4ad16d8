"""Fine-tuning: start a fold from another model's weights (``segpipe train --init-from CHECKPOINT
[--init-mode full|encoder]``).

Every weight of the new network whose name and shape match the checkpoint's is loaded (``full``), or only the
encoder's (``encoder``: the decoder and heads start fresh). A weight that differs only in its input channels
(axis 1 of a convolution, ``(out, in, *kernel)``) because this data set has more channels than the pretrained
model's gets the checkpoint's channels repeated cyclically and scaled by ``old in / new in`` (when the new count
is a multiple of the old, an input whose extra channels repeat the old ones gives the same activation; otherwise
it is a starting point, not an equivalence). Everything else that does not fit is
skipped and left as initialized: the segmentation heads when the labels differ (``(n_classes, ...)``), and
layers whose shapes differ otherwise. What happened to every key is written to the fold folder as
``init_report.json`` (one writer: :func:`segpipe.training.run.run_train`).
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segpipe.errors import fail
from segpipe.training.checkpoint import load_checkpoint

INIT_MODES = ("full", "encoder")
INIT_REPORT = "init_report.json"
ENCODER_PREFIX = "encoder."
HEAD_MARKER = ".heads."


def _strip_ddp(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("module."): v for k, v in state.items()}


def _more_input_channels(old: torch.Tensor, new: torch.Tensor) -> bool:
    return (old.ndim == new.ndim >= 3 and old.shape[0] == new.shape[0] and old.shape[2:] == new.shape[2:]
            and new.shape[1] > old.shape[1])


def transfer_weights(network: nn.Module, source: Mapping[str, torch.Tensor], mode: str = "full"
                     ) -> dict[str, Any]:
    """Copy what fits of ``source`` (a state dict) into ``network`` (in place); returns ``{"loaded": [keys],
    "reshaped": {key: how}, "skipped": {key: why}}`` over the network's keys, plus the checkpoint keys the
    network has no place for (``unused``)."""
    if mode not in INIT_MODES:
        raise fail(f"unknown --init-mode '{mode}'", f"use one of: {', '.join(INIT_MODES)}")
    source = _strip_ddp(source)
    target = network.state_dict()
    new: dict[str, torch.Tensor] = {}
    loaded: list[str] = []
    reshaped: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for key, t in target.items():
        s = source.get(key)
        if mode == "encoder" and not key.startswith(ENCODER_PREFIX):
            skipped[key] = "--init-mode encoder loads the encoder only"
        elif s is None:
            skipped[key] = "not in the checkpoint"
        elif tuple(s.shape) == tuple(t.shape):
            new[key] = s.to(dtype=t.dtype)
            loaded.append(key)
        elif _more_input_channels(s, t):
            idx = torch.arange(t.shape[1]) % s.shape[1]
            new[key] = (s[:, idx] * (s.shape[1] / t.shape[1])).to(dtype=t.dtype)
            reshaped[key] = (f"input channels {s.shape[1]} -> {t.shape[1]}: the checkpoint's repeated, scaled by "
                             f"{s.shape[1]}/{t.shape[1]}")
        elif HEAD_MARKER in key and s.shape[0] != t.shape[0]:
            skipped[key] = f"segmentation head: {s.shape[0]} classes in the checkpoint, {t.shape[0]} here"
        else:
            skipped[key] = f"shape {list(s.shape)} in the checkpoint, {list(t.shape)} here"
    if not loaded and not reshaped:
        raise fail("no weight of the checkpoint fits this network",
                   "fine-tune with the plans of the pretrained model's data set: `segpipe plan --like "
                   "WORKSPACE/DATASET`, then preprocess and train again")
    network.load_state_dict({**target, **new})
    unused = sorted(set(source) - set(target))
    return {"loaded": loaded, "reshaped": reshaped, "skipped": skipped, "unused": unused}


def initialize_from(network: nn.Module, checkpoint: str | Path, mode: str = "full") -> dict[str, Any]:
    """:func:`transfer_weights` from a segpipe checkpoint file (loaded with ``weights_only=True``); the report
    also names the file, its sha256 and the mode."""
    path = Path(checkpoint).expanduser()
    state = load_checkpoint(path)
    network_state = state.get("network")
    if not isinstance(network_state, Mapping):
        raise fail("the checkpoint holds no network weights", "give a checkpoint_final.pt (or _best/_latest) of a "
                   "trained segpipe fold", file=path)
    report = transfer_weights(network, network_state, mode)
    return {"checkpoint": str(path.resolve()), "sha256": file_sha256(path), "mode": mode,
            "source_plan": state.get("network_plan"), **report}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
