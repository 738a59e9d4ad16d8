"""Tests of the plain and residual U-Nets (segpipe/networks/unet.py, residual.py): shapes, deep supervision,
parameter count, initialisation and gradients."""
from __future__ import annotations

import math

import pytest
import torch

from segpipe.errors import SegpipeError
from segpipe.networks import build_network

PLAN_2D = {"name": "plain", "n_stages": 4, "features_per_stage": [8, 16, 32, 64],
           "kernel_sizes": [[3, 3]] * 4, "strides": [[1, 1], [2, 2], [2, 2], [2, 2]],
           "n_conv_per_stage": [2, 2, 2, 2], "n_conv_per_stage_decoder": [2, 2, 2]}
PLAN_3D = {"name": "plain", "n_stages": 4, "features_per_stage": [32, 64, 128, 256],
           "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
           "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [1, 2, 2]],
           "n_conv_per_stage": [2, 2, 2, 2], "n_conv_per_stage_decoder": [2, 2, 2]}
SMALL_3D = {**PLAN_3D, "features_per_stage": [4, 8, 16, 32]}
# input spatial shapes divisible by the total stride: 2D (8, 8), 3D (2, 8, 8); non-cubic on purpose
CASES = [(PLAN_2D, (16, 24), [(16, 24), (8, 12), (4, 6)]),
         (SMALL_3D, (4, 16, 24), [(4, 16, 24), (4, 8, 12), (2, 4, 6)])]
NAMES = ["plain", "residual"]


def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("plan, spatial, expected", CASES, ids=["2d", "3d_aniso"])
def test_deep_supervision_outputs_have_every_level_shape(name, plan, spatial, expected):
    _seed()
    net = build_network({**plan, "name": name}, in_channels=2, n_classes=3)
    outputs = net(torch.randn(2, 2, *spatial))
    assert isinstance(outputs, list) and len(outputs) == plan["n_stages"] - 1
    assert [tuple(o.shape) for o in outputs] == [(2, 3, *e) for e in expected]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("plan, spatial, expected", CASES, ids=["2d", "3d_aniso"])
def test_deep_supervision_off_gives_the_full_resolution_output(name, plan, spatial, expected):
    _seed()
    net = build_network({**plan, "name": name}, in_channels=2, n_classes=3, deep_supervision=True).eval()
    x = torch.randn(1, 2, *spatial)
    with torch.no_grad():
        full_res = net(x)[0]
        net.deep_supervision = False
        single = net(x)
    assert isinstance(single, torch.Tensor) and single.shape == (1, 3, *spatial)
    torch.testing.assert_close(single, full_res)
    built_off = build_network({**plan, "name": name}, in_channels=2, n_classes=3, deep_supervision=False)
    assert built_off.state_dict().keys() == net.state_dict().keys()  # checkpoints load either way


def test_unknown_network_name_fails_with_hint():
    with pytest.raises(SegpipeError, match="did you mean 'residual'"):
        build_network({**PLAN_2D, "name": "residul"}, in_channels=2, n_classes=3)


def test_input_not_divisible_by_total_stride_is_refused():
    net = build_network(SMALL_3D, in_channels=2, n_classes=3)
    with pytest.raises(SegpipeError, match="divisible"):
        net(torch.randn(1, 2, 3, 16, 24))  # z total stride is 2


def test_parameter_count_of_plain_3d_unet_is_sane():
    count = sum(p.numel() for p in build_network(PLAN_3D, in_channels=2, n_classes=3).parameters())
    # encoder ~3.59M (3x3x3 convs 32..256) + decoder ~1.80M; a missing stage or wrong kernel moves it by >100k
    assert 5.2e6 < count < 5.6e6
    residual = sum(p.numel() for p in build_network({**PLAN_3D, "name": "residual"}, 2, 3).parameters())
    assert residual > 1.5 * count  # two residual blocks of two convs per stage


def test_plain_initialisation_is_kaiming_with_zero_bias():
    _seed()
    net = build_network(PLAN_3D, in_channels=2, n_classes=3)
    convs = [m for m in net.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    assert all(torch.count_nonzero(m.bias) == 0 for m in convs)
    big = max(convs, key=lambda m: m.weight.numel())  # 256 -> 256, 3x3x3
    fan_in = big.weight.shape[1] * math.prod(big.weight.shape[2:])
    expected_std = math.sqrt(2.0 / (1 + 1e-2 ** 2) / fan_in)
    assert big.weight.std().item() == pytest.approx(expected_std, rel=0.05)


@pytest.mark.parametrize("name", NAMES)
def test_backward_reaches_every_parameter(name):
    _seed()
    net = build_network({**SMALL_3D, "name": name}, in_channels=2, n_classes=3)
    outputs = net(torch.randn(2, 2, 4, 16, 24))
    sum(o.square().mean() for o in outputs).backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    if name == "plain":  # every head and decoder level takes part when deep supervising
        assert all(p.grad.abs().sum() > 0 for p in net.parameters())
