"""Tests of segpipe/inference/sliding_window.py: Gaussian importance map, window placement and sliding-window
prediction (exactness with a pointwise network, 2D slice-wise, padding, mirroring, a real U-Net)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from segpipe.inference.sliding_window import (
    gaussian_importance_map,
    mirror_axes_for,
    predict_sliding_window,
    window_starts,
)
from segpipe.networks import build_network

torch.set_num_threads(2)


# --- Gaussian importance map ------------------------------------------------------------------------------

@pytest.mark.parametrize("patch", [(9, 9, 9), (8, 12, 10), (16, 24)])
def test_gaussian_shape_peak_centre(patch):
    g = gaussian_importance_map(patch)
    assert g.shape == tuple(patch) and g.dtype == np.float32
    assert g.max() == pytest.approx(1.0) and g.min() > 0
    # the peak lies at the centre (both middle voxels for even sizes) and the map is mirror-symmetric
    centre = tuple(slice((p - 1) // 2, p // 2 + 1) for p in patch)
    assert np.allclose(g[centre], 1.0)
    for ax in range(len(patch)):
        assert np.allclose(g, np.flip(g, ax))


def test_gaussian_sigma():
    g = gaussian_importance_map((9, 17, 25), sigma_scale=1 / 8)
    c = (4, 8, 12)
    for ax, p in enumerate((9, 17, 25)):
        sigma = p / 8
        profile = np.moveaxis(g, ax, 0)[(slice(None),) + tuple(ci for i, ci in enumerate(c) if i != ax)]
        expected = np.exp(-0.5 * ((np.arange(p) - c[ax]) / sigma) ** 2)
        assert np.allclose(profile, expected, rtol=1e-5, atol=1e-7)
    g1 = gaussian_importance_map((9,), sigma_scale=1 / 9)  # sigma exactly 1 voxel
    assert g1[5] / g1[4] == pytest.approx(math.exp(-0.5), rel=1e-6)


def test_gaussian_never_zero():
    g = gaussian_importance_map((64, 64), sigma_scale=0.01)  # underflows to 0 in float32 without the clamp
    assert g.min() > 0 and g.max() == 1.0
    assert g[0, 0] == g.min()  # the far corner holds the clamp value, the smallest nonzero one


# --- window placement -------------------------------------------------------------------------------------

@pytest.mark.parametrize("image,patch", [(10, 10), (11, 10), (20, 10), (21, 10), (100, 32), (57, 40), (37, 8)])
def test_window_starts_cover_with_half_overlap(image, patch):
    s = window_starts(image, patch)
    assert s[0] == 0 and s[-1] == image - patch
    assert len(s) == math.ceil((image - patch) / (patch * 0.5)) + 1
    assert all(b > a for a, b in zip(s, s[1:]))
    assert all(b - a <= patch * 0.5 for a, b in zip(s, s[1:]))  # overlap >= 50 %
    covered = np.zeros(image, bool)
    for a in s:
        covered[a:a + patch] = True
    assert covered.all()


def test_window_starts_small_image_and_step():
    assert window_starts(5, 8) == [0]  # smaller than the patch: one window, the caller pads
    assert window_starts(8, 8) == [0]
    assert window_starts(30, 10, step=1.0) == [0, 10, 20]
    assert len(window_starts(30, 10, step=0.25)) == 9


def test_mirror_axes_for():
    assert mirror_axes_for(2) == (0, 1) and mirror_axes_for(3) == (0, 1, 2)
    with pytest.raises(ValueError):
        mirror_axes_for(4)


# --- prediction -------------------------------------------------------------------------------------------

def pointwise_net(ndim: int, c_in: int, n_classes: int, seed: int = 0) -> nn.Module:
    """A 1x1 convolution with fixed weights: logits depend on the voxel only, so the sliding-window result
    must equal softmax(conv(image)) exactly, whatever the windows."""
    g = torch.Generator().manual_seed(seed)
    conv = (nn.Conv3d if ndim == 3 else nn.Conv2d)(c_in, n_classes, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=g))
    return conv


def expected_probs(net: nn.Module, data: np.ndarray, ndim: int) -> torch.Tensor:
    x = torch.from_numpy(data)
    with torch.no_grad():
        if ndim == 3:
            return torch.softmax(net(x[None]), 1)[0]
        return torch.softmax(net(x.permute(1, 0, 2, 3)), 1).permute(1, 0, 2, 3)  # slices as batch


def _data(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("step,use_gaussian,batch_size", [(0.5, True, 2), (0.25, True, 3), (1.0, False, 1)])
def test_exact_3d(step, use_gaussian, batch_size):
    data = _data((2, 13, 22, 17))
    net = pointwise_net(3, 2, 3)
    out = predict_sliding_window(net, data, (8, 8, 8), 3, step=step, use_gaussian=use_gaussian,
                                 batch_size=batch_size)
    assert out.shape == (3, 13, 22, 17) and out.dtype == torch.float32 and out.device.type == "cpu"
    torch.testing.assert_close(out, expected_probs(net, data, 3), rtol=1e-5, atol=1e-6)


def test_exact_2d_slicewise():
    data = _data((1, 5, 20, 26), seed=1)
    net = pointwise_net(2, 1, 4)
    out = predict_sliding_window(net, torch.from_numpy(data), (8, 12), 4, batch_size=4)
    assert out.shape == (4, 5, 20, 26)
    torch.testing.assert_close(out, expected_probs(net, data, 2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("patch,shape", [((16, 16, 16), (1, 5, 9, 20)), ((16, 16), (1, 3, 7, 30))])
def test_image_smaller_than_patch(patch, shape):
    data = _data(shape, seed=2)
    net = pointwise_net(len(patch), 1, 2)
    out = predict_sliding_window(net, data, patch, 2)
    assert out.shape == (2,) + shape[1:]
    torch.testing.assert_close(out, expected_probs(net, data, len(patch)), rtol=1e-5, atol=1e-6)


class SmoothNet(nn.Module):
    """Mirror-equivariant but not pointwise: a symmetric box filter followed by a 1x1 conv."""

    def __init__(self, ndim: int, c_in: int, n_classes: int):
        super().__init__()
        self.pool = (nn.AvgPool3d if ndim == 3 else nn.AvgPool2d)(3, stride=1, padding=1)
        self.head = pointwise_net(ndim, c_in, n_classes, seed=3)

    def forward(self, x):
        return self.head(self.pool(x) * 3.0)


class RampNet(SmoothNet):
    """Not mirror-equivariant (adds a ramp along the last axis): mirroring must change its output."""

    def forward(self, x):
        out = super().forward(x)
        ramp = torch.linspace(-2, 2, x.shape[-1], device=x.device)
        return torch.cat((out[:, :1] + ramp, out[:, 1:]), dim=1)  # a class-specific ramp changes the softmax


@pytest.mark.parametrize("patch,shape", [((8, 8, 8), (1, 10, 12, 9)), ((8, 8), (2, 3, 12, 11))])
def test_mirroring_equivariant_net_unchanged(patch, shape):
    data = _data(shape, seed=4)
    net = SmoothNet(len(patch), shape[0], 3)
    plain = predict_sliding_window(net, data, patch, 3)
    mirrored = predict_sliding_window(net, data, patch, 3, mirror_axes=mirror_axes_for(len(patch)))
    torch.testing.assert_close(mirrored, plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mirrored.sum(0), torch.ones(shape[1:]), rtol=1e-5, atol=1e-5)


def test_mirroring_is_applied():
    data = _data((1, 8, 8, 8), seed=5)
    net = RampNet(3, 1, 2)
    plain = predict_sliding_window(net, data, (8, 8, 8), 2)
    mirrored = predict_sliding_window(net, data, (8, 8, 8), 2, mirror_axes=(2,))
    assert not torch.allclose(plain, mirrored, atol=1e-3)
    # mirroring along the other axes leaves the ramp along x alone
    torch.testing.assert_close(predict_sliding_window(net, data, (8, 8, 8), 2, mirror_axes=(0, 1)), plain,
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mirrored.sum(0), torch.ones(8, 8, 8), rtol=1e-5, atol=1e-5)


def test_bad_inputs():
    net = pointwise_net(3, 1, 2)
    with pytest.raises(ValueError):
        predict_sliding_window(net, np.zeros((4, 4, 4), np.float32), (4, 4, 4), 2)
    with pytest.raises(ValueError):
        predict_sliding_window(net, np.zeros((1, 4, 4, 4), np.float32), (4,), 2)
    with pytest.raises(ValueError):  # wrong number of classes
        predict_sliding_window(net, np.zeros((1, 4, 4, 4), np.float32), (4, 4, 4), 3)


SMALL_PLAN = {"name": "plain", "n_stages": 3, "features_per_stage": [4, 8, 16], "kernel_sizes": [[3, 3, 3]] * 3,
              "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]], "n_conv_per_stage": [1, 1, 1],
              "n_conv_per_stage_decoder": [1, 1]}


@pytest.mark.parametrize("deep_supervision", [False, True])
def test_real_network_end_to_end(deep_supervision):
    torch.manual_seed(0)
    net = build_network(SMALL_PLAN, in_channels=2, n_classes=3, deep_supervision=deep_supervision)
    net.deep_supervision = deep_supervision  # True: the full-resolution output of the list is used
    data = _data((2, 14, 27, 12), seed=6)
    out = predict_sliding_window(net, data, (12, 16, 16), 3, mirror_axes=(0, 1, 2), batch_size=2)
    assert out.shape == (3, 14, 27, 12) and torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(out.sum(0), torch.ones(out.shape[1:]), rtol=1e-5, atol=1e-5)
    assert not net.training
