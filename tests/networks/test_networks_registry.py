"""Tests of segpipe/networks/registry.py: name resolution, registration and plan validation."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from segpipe import plugins
from segpipe.errors import SegpipeError
from segpipe.networks import (
    NETWORKS,
    build_network,
    network_capabilities,
    network_spec,
    register_network,
    registry,
    resolve_network_name,
)

plugins.load_plugins()  # installed plug-ins' networks get the same property tests as segpipe's own

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


# --- properties of every registered network (a newly registered builder is tested here automatically) ----------

# Small topologies; patches are (y, x) / (z, y, x) voxels divisible by the total stride ((4, 4) / (2, 4, 4)) and
# non-square, so that a swapped axis shows.
TOPOLOGIES = {
    "2d": ({"n_stages": 3, "features_per_stage": [4, 8, 16], "kernel_sizes": [[3, 3]] * 3,
            "strides": [[1, 1], [2, 2], [2, 2]], "n_conv_per_stage": [1, 2, 1], "n_conv_per_stage_decoder": [1, 1]},
           (8, 12)),
    "3d_aniso": ({"n_stages": 3, "features_per_stage": [4, 8, 16], "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
                  "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]], "n_conv_per_stage": [1, 1, 1],
                  "n_conv_per_stage_decoder": [1, 1]},
                 (4, 8, 12)),
}


def _level_shapes(topology: dict, patch: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Spatial shape of each deep-supervision output: level ``l`` is ``patch`` divided by ``strides[0..l]``."""
    shapes, size = [], list(patch)
    for stride in topology["strides"][: topology["n_stages"] - 1]:
        size = [s // st for s, st in zip(size, stride)]
        shapes.append(tuple(size))
    return shapes


@pytest.mark.parametrize("topology_id", sorted(TOPOLOGIES))
@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_every_network_maps_a_patch_to_class_logits_at_every_level(name: str, topology_id: str):
    """(B, C, *patch) -> a list of (B, n_classes, *level) logits, full resolution first, coarsest last (as many as
    the network's capabilities say: n_stages - 1 for segpipe's U-Nets; one tensor without deep supervision)."""
    topology, patch = TOPOLOGIES[topology_id]
    torch.manual_seed(0)
    net = build_network({**topology, "name": name}, in_channels=2, n_classes=3, deep_supervision=True)
    outputs = net(torch.randn(2, 2, *patch))
    levels = network_capabilities(name).output_levels(network_spec({**topology, "name": name}, 2, 3))
    if levels == 1 and isinstance(outputs, torch.Tensor):
        outputs = [outputs]
    assert isinstance(outputs, (list, tuple)) and len(outputs) == levels
    assert [tuple(o.shape) for o in outputs] == [(2, 3, *s) for s in _level_shapes(topology, patch)[:levels]]
    assert outputs[0].shape[2:] == patch  # full resolution first, coarsest last
    assert all(o.dtype == torch.float32 and torch.isfinite(o).all() for o in outputs)


@pytest.mark.parametrize("topology_id", sorted(TOPOLOGIES))
@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_every_network_without_deep_supervision_gives_one_full_resolution_output(name: str, topology_id: str):
    topology, patch = TOPOLOGIES[topology_id]
    torch.manual_seed(0)
    net = build_network({**topology, "name": name}, in_channels=1, n_classes=4, deep_supervision=False).eval()
    with torch.no_grad():
        out = net(torch.randn(3, 1, *patch))
    assert isinstance(out, torch.Tensor) and out.shape == (3, 4, *patch)


def _deep_supervision_loss(outputs: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every output against ``target`` (B, *patch) downsampled (nearest) to the output's size."""
    total = torch.zeros(())
    for o in [outputs] if isinstance(outputs, torch.Tensor) else outputs:  # a network without deep supervision
        t = nn.functional.interpolate(target[:, None].float(), size=o.shape[2:], mode="nearest")[:, 0].long()
        total = total + nn.functional.cross_entropy(o, t)
    return total


@pytest.mark.parametrize("topology_id", sorted(TOPOLOGIES))
@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_every_network_backpropagates_to_its_parameters(name: str, topology_id: str):
    """A loss on every output gives every parameter a finite gradient, and SGD steps lower the loss."""
    topology, patch = TOPOLOGIES[topology_id]
    torch.manual_seed(0)
    net = build_network({**topology, "name": name}, in_channels=2, n_classes=3, deep_supervision=True)
    x = torch.randn(2, 2, *patch)
    target = torch.randint(0, 3, (2, *patch))
    params = list(net.parameters())
    assert params, "a network without parameters cannot learn"
    loss = _deep_supervision_loss(net(x), target)
    loss.backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert sum(float(p.grad.abs().sum()) for p in params) > 0
    optimizer = torch.optim.SGD(params, lr=0.1)
    for _ in range(3):
        optimizer.step()
        optimizer.zero_grad()
        loss_after = _deep_supervision_loss(net(x), target)
        loss_after.backward()
    assert loss_after.item() < loss.item()  # the gradient points downhill
