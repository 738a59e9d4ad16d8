"""Tests of segpipe/networks/registry.py: name resolution, registration and plan validation."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from segpipe.errors import SegpipeError
from segpipe.networks import NETWORKS, build_network, register_network, resolve_network_name
from segpipe.networks import registry

PLAN_2D = {"name": "plain", "n_stages": 3, "features_per_stage": [4, 8, 16],
           "kernel_sizes": [[3, 3], [3, 3], [3, 3]], "strides": [[1, 1], [2, 2], [2, 2]],
           "n_conv_per_stage": [1, 1, 1], "n_conv_per_stage_decoder": [1, 1]}


def test_builtin_networks_are_registered_and_resolve_to_themselves():
    assert {"plain", "residual"} <= set(NETWORKS)
    assert resolve_network_name("plain") == "plain"
    assert resolve_network_name("residual") == "residual"


@pytest.mark.parametrize("typo, suggestion", [("plian", "plain"), ("Plain", "plain"), ("resid", "residual")])
def test_unknown_name_suggests_the_closest(typo, suggestion):
    with pytest.raises(SegpipeError) as info:
        resolve_network_name(typo)
    problem = info.value.problems[0]
    assert f"unknown network '{typo}'" in problem.problem
    assert f"did you mean '{suggestion}'?" in problem.problem
    assert "plain" in problem.fix and "residual" in problem.fix


def test_unrelated_name_has_no_suggestion():
    with pytest.raises(SegpipeError) as info:
        resolve_network_name("transformer_xyz")
    assert "did you mean" not in info.value.problems[0].problem


def test_registered_builder_is_used_by_build_network(monkeypatch):
    monkeypatch.setattr(registry, "NETWORKS", dict(registry.NETWORKS))
    calls = []

    @register_network("dummy")
    def build_dummy(topology, in_channels, n_classes, deep_supervision):
        calls.append((topology, in_channels, n_classes, deep_supervision))
        return nn.Identity()

    net = build_network({**PLAN_2D, "name": "dummy"}, in_channels=2, n_classes=5, deep_supervision=False)
    assert isinstance(net, nn.Identity)
    topology, in_channels, n_classes, deep_supervision = calls[0]
    assert (in_channels, n_classes, deep_supervision) == (2, 5, False)
    assert topology.strides == ((1, 1), (2, 2), (2, 2)) and topology.total_stride == (4, 4)
    with pytest.raises(ValueError):
        register_network("dummy")(lambda *args: nn.Identity())


def test_extra_plan_keys_are_ignored():
    net = build_network({**PLAN_2D, "why": "explanations are allowed"}, in_channels=1, n_classes=2)
    assert net(torch.zeros(1, 1, 8, 8))[0].shape == (1, 2, 8, 8)


@pytest.mark.parametrize("change", [
    {"n_stages": 4},                                   # list lengths no longer match
    {"n_conv_per_stage_decoder": [1, 1, 1]},           # decoder needs n_stages - 1 entries
    {"strides": [[2, 2], [2, 2], [2, 2]]},             # first stage must not downsample
    {"kernel_sizes": [[3, 3], [3, 3, 3], [3, 3]]},     # mixed dimensions
    {"kernel_sizes": [[3, 3], [2, 2], [3, 3]]},        # even kernel cannot keep the size
    {"features_per_stage": [4, 0, 16]},
])
def test_inconsistent_plans_are_rejected(change):
    with pytest.raises(SegpipeError):
        build_network({**copy.deepcopy(PLAN_2D), **change}, in_channels=1, n_classes=2)


def test_missing_keys_are_named():
    plan = {k: v for k, v in PLAN_2D.items() if k != "strides"}
    with pytest.raises(SegpipeError, match="strides"):
        build_network(plan, in_channels=1, n_classes=2)
