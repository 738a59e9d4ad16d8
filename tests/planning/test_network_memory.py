"""The planner plans with a network's own memory estimate when the network declares one
(segpipe/planning/network_memory.py, plan_configuration), and with its U-Net memory model otherwise."""
from __future__ import annotations

import math

import numpy as np
import pytest
from torch import nn

from segpipe import plugins
from segpipe.dataset.model import CaseEntry, DatasetSpec
from segpipe.networks import NetworkCapabilities, NetworkSpec, registry
from segpipe.networks.registry import register_network
from segpipe.planning.planner import plan_dataset

GIB = 2 ** 30


def _build(spec: NetworkSpec) -> nn.Module:
    return nn.Conv3d(spec.in_channels, spec.n_outputs, 1)


def hungry_estimate(spec: NetworkSpec) -> int:
    """2 KiB per input voxel and channel of the batch: 64 GiB for a batch of 2 patches of 128^3, one channel."""
    assert spec.patch_size is not None and spec.plan is not None
    return 2048 * spec.in_channels * spec.plan["batch_size"] * math.prod(spec.patch_size)


@pytest.fixture
def networks(monkeypatch):
    """``hungry`` (a huge memory estimate) and ``no-estimate`` (none) registered for this test only."""
    plugins.load_plugins()
    monkeypatch.setattr(registry, "NETWORKS", dict(registry.NETWORKS))
    monkeypatch.setattr(plugins, "PROVIDERS", dict(plugins.PROVIDERS))
    register_network("hungry", capabilities=NetworkCapabilities(memory_estimate=hungry_estimate))(_build)
    register_network("no-estimate")(_build)


def _dataset(shape=(160, 160, 160), n: int = 40, channels=("CT", "PET")) -> tuple[dict, DatasetSpec]:
    fp = {"ndim": 3, "n_cases": n, "spacings": [[1.0, 1.0, 1.0]] * n, "shapes_after_crop": [list(shape)] * n,
          "median_relative_size_after_crop": 1.0,
          "intensity": {str(i): {"mean": 40.0, "std": 100.0, "percentile_00_5": -900.0, "percentile_99_5": 300.0}
                        for i in range(len(channels))}}
    spec = DatasetSpec("syn", "/x", "msd", {str(i): c for i, c in enumerate(channels)},
                       {"background": 0, "organ": 1}, ".nii.gz",
                       [CaseEntry(f"c{i}", [f"c{i}.nii.gz"]) for i in range(n)])
    return fp, spec


def test_a_networks_own_memory_estimate_shrinks_the_patch_and_batch_and_is_recorded(networks):
    fp, spec = _dataset()
    default = plan_dataset(fp, spec, memory_gb=8)["configurations"]["3d_fullres"]
    hungry = plan_dataset(fp, spec, memory_gb=8, network="hungry")["configurations"]["3d_fullres"]
    assert np.prod(hungry["patch_size"]) < np.prod(default["patch_size"])
    assert hungry["batch_size"] <= default["batch_size"]
    # the chosen plan fits the budget by the network's own estimate (its two channels included), and ...
    need = 2048 * 2 * hungry["batch_size"] * np.prod(hungry["patch_size"])
    assert need <= 8 * GIB and hungry["memory"]["network_estimate_bytes"] == need
    # ... the patch was shrunk no further than needed: one step larger on any axis would not have fitted
    assert 2048 * 2 * 2 * np.prod(hungry["patch_size"]) * 2 > 8 * GIB
    assert hungry["memory"]["estimate"] == "network" and default["memory"]["estimate"] == "unet-model"
    assert "network 'hungry''s own memory_estimate" in hungry["why"]["memory"]
    assert "by network 'hungry''s own memory estimate" in hungry["why"]["patch_size"]
    assert "U-Net memory model" in default["why"]["memory"]


def test_a_network_without_an_estimate_plans_as_the_u_net_model_does(networks):
    fp, spec = _dataset()
    default = plan_dataset(fp, spec, memory_gb=8)["configurations"]
    plain = plan_dataset(fp, spec, memory_gb=8, network="no-estimate")["configurations"]
    assert set(plain) == set(default)
    for name in default:
        for key in ("spacing", "patch_size", "batch_size", "memory"):
            assert plain[name][key] == default[name][key], (name, key)
        assert plain[name]["network"] == {**default[name]["network"], "name": "no-estimate"}
        assert "declares no memory_estimate" in plain[name]["why"]["memory"]


def test_an_estimate_that_never_fits_stops_at_the_smallest_patch(networks, monkeypatch):
    register_network("bottomless", capabilities=NetworkCapabilities(memory_estimate=lambda spec: 1 << 50))(_build)
    fp, spec = _dataset(shape=(40, 40, 40), n=4, channels=("CT",))
    cfg = plan_dataset(fp, spec, memory_gb=8, network="bottomless")["configurations"]["3d_fullres"]
    assert all(p >= 4 for p in cfg["patch_size"]) and cfg["batch_size"] == 2
    assert "still does not fit 8 GB" in cfg["why"]["patch_size"]
