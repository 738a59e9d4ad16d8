"""Measuring this machine: seconds per training iteration (forward + backward + SGD step) of a network at a
patch and batch size, on the chosen device and precision.

Measurements are cached in the workspace's ``calibration.json`` under a description of the machine (processor
or GPU, torch threads, torch version), so that re-planning is instant and a different machine measures again.
Work is counted in "feature-map voxels x batch" (:func:`segpipe.planning.memory.feature_map_voxels`): the
seconds per unit of work measured on small candidates estimate large ones without running them.
"""
from __future__ import annotations

import logging
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segpipe.devices import autocast_dtype, pick_device
from segpipe.io.jsonio import read_json, write_json

log = logging.getLogger(__name__)

WARMUP_ITERATIONS = 1
TIMED_ITERATIONS = 2
MAX_SECONDS_PER_CANDIDATE = 6.0   # a candidate whose warm-up alone takes longer is timed by the warm-up


def machine_description(device: torch.device, precision: str) -> dict[str, Any]:
    """What a calibration is valid for: device kind and name, threads, torch version, precision (as asked and the
    autocast dtype it resolved to: what ``auto`` means can differ between machines and segpipe versions)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    return {"device": device.type, "name": name, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "precision": precision, "autocast": str(autocast_dtype(device, precision)).replace("torch.", "")}


def candidate_key(network_plan: Mapping[str, Any], patch: Sequence[int], batch: int, n_channels: int,
                  n_classes: int) -> str:
    import json

    keys = ("name", "features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage", "n_conv_per_stage_decoder")
    return json.dumps({"net": {k: network_plan.get(k) for k in keys}, "patch": list(patch), "batch": int(batch),
                       "c": n_channels, "k": n_classes}, sort_keys=True, separators=(",", ":"))


def measure_iteration(network_plan: Mapping[str, Any], n_channels: int, n_classes: int, patch: Sequence[int],
                      batch: int, device: torch.device, amp_dtype: torch.dtype | None) -> float:
    """Seconds for one training iteration on random data: the real network, loss and optimizer step."""
    import dataclasses

    from segpipe.networks.registry import build_from_spec, network_capabilities, network_spec
    from segpipe.training.loss import DeepSupervisionLoss, DiceCELoss, deep_supervision_weights, downsample_targets

    torch.manual_seed(0)
    spec = dataclasses.replace(network_spec(network_plan, n_channels, n_classes, deep_supervision=True),
                               patch_size=tuple(int(p) for p in patch))
    levels = network_capabilities(spec.network).output_levels(spec)  # the outputs the trainer's loss weighs
    net = build_from_spec(spec).to(device).train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
    loss_fn = DeepSupervisionLoss(DiceCELoss(), deep_supervision_weights(levels))
    x = torch.randn(batch, n_channels, *patch, device=device)
    y = torch.randint(0, n_classes, (batch, 1, *patch), device=device)
    targets = downsample_targets(y, network_plan["strides"])[:levels]
    times: list[float] = []
    for _ in range(WARMUP_ITERATIONS + TIMED_ITERATIONS):
        t = time.monotonic()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = net(x)
            loss = loss_fn(out[:levels] if isinstance(out, (list, tuple)) else out, targets)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.monotonic() - t)
        if sum(times) > MAX_SECONDS_PER_CANDIDATE:
            break
    timed = times[WARMUP_ITERATIONS:] or times
    return float(np.median(timed))


class Calibration:
    """Seconds per iteration of candidate networks on this machine, measured once and cached on disk."""

    def __init__(self, path: Path | None, device: str = "auto", precision: str = "auto"):
        self.path = path
        self.device = pick_device(device)
        self.precision = precision
        self.amp_dtype = autocast_dtype(self.device, precision)
        self.machine = machine_description(self.device, precision)
        self.measured: dict[str, float] = {}
        if path is not None and Path(path).is_file():
            doc = read_json(path, kind="calibration")
            if doc.get("machine") == self.machine:
                self.measured = {k: float(v) for k, v in doc.get("seconds_per_iteration", {}).items()}
            else:
                log.info("calibration: %s was measured on another machine (%s); measuring again", path,
                         doc.get("machine"))

    def seconds(self, network_plan: Mapping[str, Any], n_channels: int, n_classes: int, patch: Sequence[int],
                batch: int) -> float:
        key = candidate_key(network_plan, patch, batch, n_channels, n_classes)
        if key not in self.measured:
            t = time.monotonic()
            self.measured[key] = measure_iteration(network_plan, n_channels, n_classes, patch, batch, self.device,
                                                   self.amp_dtype)
            log.info("calibration: patch %s, batch %d, features %s: %.3f s/iteration (measured in %.1f s)",
                     patch, batch, network_plan["features_per_stage"], self.measured[key], time.monotonic() - t)
        return self.measured[key]

    def is_measured(self, network_plan: Mapping[str, Any], n_channels: int, n_classes: int, patch: Sequence[int],
                    batch: int) -> bool:
        return candidate_key(network_plan, patch, batch, n_channels, n_classes) in self.measured

    def save(self) -> None:
        if self.path is not None:
            write_json(self.path, {"machine": self.machine, "seconds_per_iteration": self.measured},
                       kind="calibration")
