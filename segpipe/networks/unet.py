"""Plain convolutional U-Net (nnU-Net style) and the building blocks shared by the U-Net family.

Shapes: input ``(B, C_in, *spatial)`` with ``spatial`` = ``(Y, X)`` (2D) or ``(Z, Y, X)`` (3D); every spatial
size must be divisible by the topology's total stride. The decoder returns logits ``(B, n_classes, *spatial)``
(deep supervision off) or a list of logits, full resolution first, one per decoder level (``n_stages - 1``),
level ``l`` downsampled by the product of ``strides[0..l]``.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from segpipe.errors import fail
from segpipe.networks.registry import Topology, register_network

logger = logging.getLogger(__name__)

NORM_EPS = 1e-5
NEGATIVE_SLOPE = 1e-2


def conv_class(ndim: int) -> type[nn.Module]:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return {2: nn.Conv2d, 3: nn.Conv3d}[ndim]


def transposed_conv_class(ndim: int) -> type[nn.Module]:
    """``nn.ConvTranspose2d`` or ``nn.ConvTranspose3d``."""
    return {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[ndim]


def norm(ndim: int, channels: int) -> nn.InstanceNorm2d | nn.InstanceNorm3d:
    """Affine instance norm (eps 1e-5)."""
    classes: dict[int, type[nn.InstanceNorm2d] | type[nn.InstanceNorm3d]] = {2: nn.InstanceNorm2d,
                                                                            3: nn.InstanceNorm3d}
    return classes[ndim](channels, eps=NORM_EPS, affine=True)


def conv(in_channels: int, out_channels: int, kernel: Sequence[int], stride: Sequence[int]) -> nn.Module:
    """Conv with bias and 'same' padding (``k // 2``); the dimension is taken from ``len(kernel)``."""
    return conv_class(len(kernel))(in_channels, out_channels, tuple(kernel), tuple(stride),
                                   padding=tuple(k // 2 for k in kernel), bias=True)


class ConvNormAct(nn.Sequential):
    """Conv -> InstanceNorm -> LeakyReLU(0.01). ``(B, C_in, *S) -> (B, C_out, *S / stride)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel: Sequence[int], stride: Sequence[int]):
        super().__init__(conv(in_channels, out_channels, kernel, stride), norm(len(kernel), out_channels),
                         nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True))


def stacked_convs(n: int, in_channels: int, out_channels: int, kernel: Sequence[int],
                  first_stride: Sequence[int]) -> nn.Sequential:
    """``n`` ConvNormAct blocks, the first one strided."""
    ones = [1] * len(kernel)
    return nn.Sequential(*[ConvNormAct(in_channels if i == 0 else out_channels, out_channels, kernel,
                                       first_stride if i == 0 else ones) for i in range(n)])


class PlainEncoder(nn.Module):
    """Encoder of plain conv stages. ``forward`` returns one feature map per stage (the bottleneck last)."""

    def __init__(self, topology: Topology, in_channels: int):
        super().__init__()
        stages, channels = [], in_channels
        for s in range(topology.n_stages):
            out = topology.features_per_stage[s]
            stages.append(stacked_convs(topology.n_conv_per_stage[s], channels, out, topology.kernel_sizes[s],
                                        topology.strides[s]))
            channels = out
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return encode(self.stages, x)


class UNetDecoder(nn.Module):
    """U-Net decoder: transposed conv up, concatenate skip, conv stack; a 1x1 segmentation head per level.

    Heads exist for every level whether or not deep supervision is on, so checkpoints load either way.
    """

    def __init__(self, topology: Topology, n_classes: int):
        super().__init__()
        n, feats, ndim = topology.n_stages, topology.features_per_stage, topology.ndim
        ups, blocks, heads = [], [], []
        for i in range(n - 1):  # i = 0 is the coarsest decoder stage (just above the bottleneck)
            below, target = n - 1 - i, n - 2 - i  # upsample from encoder stage `below` to stage `target`
            stride = topology.strides[below]
            ups.append(transposed_conv_class(ndim)(feats[below], feats[target], stride, stride, bias=True))
            blocks.append(stacked_convs(topology.n_conv_per_stage_decoder[i], 2 * feats[target], feats[target],
                                        topology.kernel_sizes[target], [1] * ndim))
            heads.append(conv_class(ndim)(feats[target], n_classes, 1, 1, 0, bias=True))
        self.ups, self.blocks, self.heads = nn.ModuleList(ups), nn.ModuleList(blocks), nn.ModuleList(heads)

    def forward(self, skips: list[torch.Tensor], deep_supervision: bool) -> torch.Tensor | list[torch.Tensor]:
        return decode(self.ups, self.blocks, self.heads, skips, deep_supervision)


def encode(stages: nn.ModuleList, x: torch.Tensor) -> list[torch.Tensor]:
    """An encoder's pass: ``x`` ``(B, C, *S)`` through ``stages`` in turn, returning every stage's output (the
    skips, bottleneck last) for :func:`decode`."""
    skips = []
    for stage in stages:
        x = stage(x)
        skips.append(x)
    return skips


def decode(ups: nn.ModuleList, blocks: nn.ModuleList, heads: nn.ModuleList, skips: list[torch.Tensor],
           deep_supervision: bool) -> torch.Tensor | list[torch.Tensor]:
    """A U-Net decoder's pass: from the deepest skip ``(B, C, *S)`` up, each level up-samples, concatenates the
    encoder's skip (channels first) and runs its block; the heads give logits, full resolution first when
    ``deep_supervision`` (one per level), else only the full-resolution one."""
    x = skips[-1]
    outputs = []
    last = len(blocks) - 1
    for i, (up, block, head) in enumerate(zip(ups, blocks, heads)):
        x = block(torch.cat((up(x), skips[-2 - i]), dim=1))
        if deep_supervision or i == last:
            outputs.append(head(x))
    if not deep_supervision:
        return outputs[-1]
    return outputs[::-1]


def init_weights(module: nn.Module) -> None:
    """Kaiming normal (a=1e-2) for conv and transposed conv weights, zero biases."""
    if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=NEGATIVE_SLOPE)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class UNet(nn.Module):
    """An encoder (returning per-stage features) followed by a decoder (default :class:`UNetDecoder`; called as
    ``decoder(skips, deep_supervision)``).

    ``deep_supervision`` may be toggled after construction (inference sets it to False).
    """

    def __init__(self, topology: Topology, encoder: nn.Module, n_classes: int, deep_supervision: bool = True,
                 decoder: nn.Module | None = None):
        super().__init__()
        self.topology = topology
        self.n_classes = n_classes
        self.deep_supervision = deep_supervision
        self.encoder = encoder
        self.decoder = decoder if decoder is not None else UNetDecoder(topology, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """``(B, C_in, *S) -> (B, n_classes, *S)``, or a list full resolution first when deep supervising."""
        spatial, total = tuple(x.shape[2:]), self.topology.total_stride
        if len(spatial) != len(total) or any(s % t for s, t in zip(spatial, total)):
            raise fail(f"network input of spatial shape {list(spatial)} is not divisible by the total stride "
                       f"{list(total)}", "use a patch size from the plan (or pad the input to a multiple)")
        return self.decoder(self.encoder(x), self.deep_supervision)


class PlainUNet(UNet):
    """nnU-Net's plain conv U-Net: stages of ConvNormAct blocks, strided conv downsampling."""

    def __init__(self, topology: Topology, in_channels: int, n_classes: int, deep_supervision: bool = True):
        super().__init__(topology, PlainEncoder(topology, in_channels), n_classes, deep_supervision)
        self.apply(init_weights)


@register_network("plain")
def build_plain(topology: Topology, in_channels: int, n_classes: int, deep_supervision: bool) -> nn.Module:
    """Builder registered as ``"plain"``."""
    return PlainUNet(topology, in_channels, n_classes, deep_supervision)
