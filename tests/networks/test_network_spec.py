"""Tests of segpipe/networks/spec.py and the spec side of segpipe/networks/registry.py: what a builder receives
(NetworkSpec), what it declares (NetworkCapabilities), and the checks segpipe makes with them."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from segpipe import plugins
from segpipe.errors import SegpipeError
from segpipe.networks import NETWORK_SPEC_VERSION, NETWORKS, NetworkCapabilities, NetworkSpec, build_network, registry
from segpipe.networks.registry import check_device, network_spec, plan_problems, register_network
from segpipe.planning.plans import Configuration
from segpipe.training.trainer import Trainer, TrainSettings

TOPOLOGY = {"n_stages": 3, "features_per_stage": [4, 8, 8], "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
            "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]], "n_conv_per_stage": [1, 1, 1],
            "n_conv_per_stage_decoder": [1, 1]}
PATCH = [4, 8, 12]  # (z, y, x), divisible by the total stride (2, 4, 4)


def configuration(network: str = "plain", patch: list[int] = PATCH, **network_keys) -> Configuration:
    """A planned 3D configuration (batch 2, one z-scored channel) whose network entry is ``network``."""
    doc = {"data_identifier": "3d_fullres", "spacing": [1.0] * 3, "median_shape": [2.0 * p for p in patch],
           "patch_size": patch, "batch_size": 2, "batch_dice": False, "trainer": "default",
           "network": {"name": network, **TOPOLOGY, **network_keys},
           "normalization": [{"channel": "MRI", "scheme": "zscore", "use_mask": False}],
           "resampling": {"image_order": 3, "label_order": 1, "label_mode": "one-hot", "anisotropy_threshold": 3.0,
                          "coarse_axis_order": 0},
           "memory": {}, "why": {}}
    return Configuration.from_json("3d_fullres", doc)


class OneLevelNet(nn.Module):
    """A spec-built network without deep supervision: one 3x3x3 conv to the outputs."""

    def __init__(self, spec: NetworkSpec):
        super().__init__()
        self.spec = spec
        self.conv = nn.Conv3d(spec.in_channels, spec.n_outputs, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.fixture
def scratch_registry(monkeypatch):
    """NETWORKS and the provenance records as they are, restored after the test."""
    monkeypatch.setattr(registry, "NETWORKS", dict(registry.NETWORKS))
    monkeypatch.setattr(plugins, "PROVIDERS", dict(plugins.PROVIDERS))


def test_a_spec_builder_gets_one_frozen_spec_of_the_configuration(scratch_registry):
    got = []

    @register_network("spec-net", capabilities=NetworkCapabilities(supports_deep_supervision=False))
    def build(spec: NetworkSpec) -> nn.Module:
        got.append(spec)
        return OneLevelNet(spec)

    net = build_network(configuration("spec-net", my_option=7), in_channels=2, n_classes=3, deep_supervision=True)
    (spec,) = got
    assert isinstance(net, OneLevelNet) and spec.spec_version == NETWORK_SPEC_VERSION
    assert (spec.network, spec.in_channels, spec.n_outputs, spec.ndim) == ("spec-net", 2, 3, 3)
    assert spec.patch_size == tuple(PATCH) and spec.strides == ((1, 1, 1), (1, 2, 2), (2, 2, 2))
    assert spec.features_per_stage == (4, 8, 8) and spec.kernel_sizes[0] == (1, 3, 3) and spec.n_stages == 3
    assert spec.deep_supervision is False  # the network does not support it: dropped
    assert spec.options == {"my_option": 7} and spec.plan["batch_size"] == 2
    assert spec.plan["network"]["name"] == "spec-net"
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.in_channels = 4  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.plan["batch_size"] = 3  # type: ignore[index]
    assert plugins.provider("network", "spec-net").module == __name__  # registered by this module


def test_a_network_entry_alone_gives_a_spec_without_patch_and_plan():
    spec = network_spec({"name": "plain", **TOPOLOGY}, 1, 2)
    assert spec.patch_size is None and spec.plan is None and spec.deep_supervision is True


@pytest.mark.parametrize("bad", [{"n_outputs": 0}, {"n_outputs": "all"}, {"input_divisor": 0},
                                 {"input_divisor": (2, -1, 2)}, {"memory_estimate": 5}])
def test_capabilities_refuse_nonsense(bad):
    with pytest.raises(ValueError):
        NetworkCapabilities(**bad)


def test_capabilities_are_checked_when_building(scratch_registry):
    register_network("div32", capabilities=NetworkCapabilities(input_divisor=32))(OneLevelNet)
    register_network("fixed", capabilities=NetworkCapabilities(fixed_patch=True))(OneLevelNet)
    register_network("future", capabilities=NetworkCapabilities(spec_version=NETWORK_SPEC_VERSION + 1))(OneLevelNet)
    with pytest.raises(SegpipeError) as e:
        build_network(configuration("div32"), 1, 2)
    assert "'div32' needs a patch divisible by [32, 32, 32]; the plan's patch is [4, 8, 12]" in e.value.format()
    assert "--patch-size" in e.value.format()
    build_network({"name": "div32", **TOPOLOGY}, 1, 2)  # no patch to check without the configuration
    with pytest.raises(SegpipeError, match="needs its patch size"):
        build_network({"name": "fixed", **TOPOLOGY}, 1, 2)
    assert isinstance(build_network(configuration("fixed"), 1, 2), OneLevelNet)
    with pytest.raises(SegpipeError, match="upgrade segpipe"):
        build_network(configuration("future"), 1, 2)


def test_a_cuda_only_network_is_refused_on_the_cpu_naming_the_fix(scratch_registry, tmp_path):
    register_network("gpu-net", capabilities=NetworkCapabilities(cuda_only=True))(OneLevelNet)
    with pytest.raises(SegpipeError) as e:
        check_device("gpu-net", "cpu")
    msg = e.value.format()
    assert "network 'gpu-net' runs on CUDA only, and the device is cpu" in msg and "--device cuda" in msg
    check_device("plain", "cpu")
    check_device("not-registered", "cpu")  # left to the caller that names what is missing
    with pytest.raises(SegpipeError, match="CUDA only"):
        Trainer(configuration("gpu-net"), 1, 3, tmp_path, ["a"], ["b"], tmp_path / "out", TrainSettings(device="cpu"))
    if not torch.cuda.is_available():  # building it (predict, export, plan --budget) needs a CUDA device
        with pytest.raises(SegpipeError, match="this machine has no CUDA device"):
            build_network(configuration("gpu-net"), 1, 2)


def test_the_planner_warns_when_a_networks_own_memory_estimate_exceeds_the_budget(scratch_registry):
    caps = NetworkCapabilities(memory_estimate=lambda spec: 3 * 2 ** 30 * spec.plan["batch_size"])
    register_network("hungry", capabilities=caps)(OneLevelNet)
    (warning,) = plan_problems(configuration("hungry"), 1, 2, memory_gb=4.0)
    assert warning.severity == "warning" and "estimates 6.0 GB" in warning.problem and "4 GB" in warning.problem
    assert plan_problems(configuration("hungry"), 1, 2, memory_gb=8.0) == []
    assert plan_problems(configuration("plain"), 1, 2, memory_gb=1e-3) == []  # no estimate: the planner's own model


def test_a_network_without_deep_supervision_trains_on_its_one_output(scratch_registry, tmp_path):
    register_network("one-level", capabilities=NetworkCapabilities(supports_deep_supervision=False))(OneLevelNet)
    trainer = Trainer(configuration("one-level"), 1, 3, tmp_path, ["a"], ["b"], tmp_path / "out",
                      TrainSettings(device="cpu"))
    assert trainer.n_levels == 1 and trainer.loss.weights == [1.0]
    rng = torch.Generator().manual_seed(0)
    seg = torch.randint(0, 3, (2, 1, *PATCH), generator=rng).to(torch.int16)
    batch = {"data": (seg * 2.0).numpy(), "seg": seg.numpy()}
    losses = [trainer.train_step(batch, lr=0.01) for _ in range(5)]
    assert losses[-1] < losses[0]


def test_a_network_with_fewer_outputs_than_levels_is_weighed_on_those(scratch_registry, tmp_path):
    class TwoLevels(nn.Module):
        def __init__(self, spec: NetworkSpec):
            super().__init__()
            self.full = nn.Conv3d(spec.in_channels, spec.n_outputs, 3, padding=1)
            self.coarse = nn.Conv3d(spec.in_channels, spec.n_outputs, 3, stride=spec.strides[1], padding=1)
            self.deep_supervision = spec.deep_supervision

        def forward(self, x):
            return [self.full(x), self.coarse(x)] if self.deep_supervision else self.full(x)

    register_network("two-levels", capabilities=NetworkCapabilities(n_outputs=2))(TwoLevels)
    trainer = Trainer(configuration("two-levels"), 1, 3, tmp_path, ["a"], ["b"], tmp_path / "out",
                      TrainSettings(device="cpu"))
    assert trainer.n_levels == 2 and len(trainer.loss.weights) == 2
    seg = torch.randint(0, 3, (2, 1, *PATCH)).to(torch.int16)
    assert torch.isfinite(torch.tensor(trainer.train_step({"data": seg.float().numpy(), "seg": seg.numpy()}, 0.01)))


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_every_network_returns_one_tensor_once_deep_supervision_is_switched_off(name: str):
    """The final validation builds with deep supervision and sets ``deep_supervision = False`` before predicting."""
    torch.manual_seed(0)
    net = build_network(configuration(name), in_channels=1, n_classes=2, deep_supervision=True).eval()
    net.deep_supervision = False
    with torch.no_grad():
        out = net(torch.randn(1, 1, *PATCH))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 2, *PATCH)
