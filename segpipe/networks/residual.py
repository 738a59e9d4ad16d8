"""Residual encoder U-Net ("residual"): encoder stages of residual basic blocks, the plain U-Net decoder.

``n_conv_per_stage[s]`` is the number of residual blocks of stage ``s`` (each holds two convs). A stem
(ConvNormAct, kernel ``kernel_sizes[0]``) maps the input channels to ``features_per_stage[0]`` first.
Shapes as in :mod:`segpipe.networks.unet`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from segpipe.networks.registry import Topology, register_network
from segpipe.networks.unet import NEGATIVE_SLOPE, ConvNormAct, UNet, conv, encode, init_weights, norm


class BasicBlock(nn.Module):
    """conv-norm-act, conv-norm, add the skip, act. ``(B, C_in, *S) -> (B, C_out, *S / stride)``.

    The skip is the identity, or a strided 1x1 conv + norm when the stride or the channel count changes.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: Sequence[int], stride: Sequence[int]):
        super().__init__()
        ndim = len(kernel)
        self.conv1 = ConvNormAct(in_channels, out_channels, kernel, stride)
        self.conv2 = conv(out_channels, out_channels, kernel, [1] * ndim)
        self.norm2 = norm(ndim, out_channels)
        self.act = nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True)
        if in_channels != out_channels or any(s != 1 for s in stride):
            self.skip: nn.Module = nn.Sequential(conv(in_channels, out_channels, [1] * ndim, stride),
                                                 norm(ndim, out_channels))
        else:
            self.skip = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm2(self.conv2(self.conv1(x))) + self.skip(x))


class ResidualEncoder(nn.Module):
    """Stem + stages of :class:`BasicBlock`; ``forward`` returns one feature map per stage (bottleneck last)."""

    def __init__(self, topology: Topology, in_channels: int):
        super().__init__()
        ndim, feats = topology.ndim, topology.features_per_stage
        self.stem = ConvNormAct(in_channels, feats[0], topology.kernel_sizes[0], [1] * ndim)
        stages, channels = [], feats[0]
        for s in range(topology.n_stages):
            blocks = [BasicBlock(channels if b == 0 else feats[s], feats[s], topology.kernel_sizes[s],
                                 topology.strides[s] if b == 0 else [1] * ndim)
                      for b in range(topology.n_conv_per_stage[s])]
            stages.append(nn.Sequential(*blocks))
            channels = feats[s]
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        return encode(self.stages, x)


class ResidualUNet(UNet):
    """U-Net with a residual encoder. The last norm of each block starts at zero so blocks start as identity."""

    def __init__(self, topology: Topology, in_channels: int, n_classes: int, deep_supervision: bool = True):
        super().__init__(topology, ResidualEncoder(topology, in_channels), n_classes, deep_supervision)
        self.apply(init_weights)
        for module in self.modules():
            if isinstance(module, BasicBlock):
                nn.init.zeros_(module.norm2.weight)


@register_network("residual")
def build_residual(topology: Topology, in_channels: int, n_classes: int, deep_supervision: bool) -> nn.Module:
    """Builder registered as ``"residual"``."""
    return ResidualUNet(topology, in_channels, n_classes, deep_supervision)
