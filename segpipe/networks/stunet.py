"""STU-Net (Huang et al., 2023): scalable residual U-Nets, registered as "stunet-s", "stunet-b" and "stunet-l".

STU-Net ("STU-Net: Scalable and Transferable Medical Image Segmentation Models Empowered by Large-Scale
Supervised Pre-training") is an nnU-Net-like encoder-decoder whose encoder *and* decoder stages are stacks of
residual blocks, scaled by the number of blocks per stage (depth) and the channels per stage (width):

========  =====  ============================================
preset    depth  channels per stage (6 stages)
========  =====  ============================================
stunet-s  1      16, 32, 64, 128, 256, 256
stunet-b  1      32, 64, 128, 256, 512, 512
stunet-l  2      64, 128, 256, 512, 1024, 1024
stunet-h  3      96, 192, 384, 768, 1536, 1536
========  =====  ============================================

stunet-h (1.46 G parameters: 5.8 GB of float32 weights before gradients and optimizer state) is defined
but not registered: the registry's checks of every network would train it on CPU for ~30 s. Register it with
``register_network("stunet-h")(lambda t, c, k, ds: STUNet(t, STUNET_SIZES["stunet-h"], c, k, ds))``.

As in the authors' code (``STUNet.py`` of uni-medical/STU-Net; the initialization differs, :func:`init_stunet`):

* a block is conv-norm-act, conv-norm, add the skip, act (InstanceNorm with affine, LeakyReLU 0.01); the
  first block of every stage (encoder and decoder) has a 1x1 conv skip (with bias, no norm), strided like the
  block, the other blocks the identity;
* there is no stem: the first encoder block maps the input channels to the first stage's width;
* down-sampling is the first block of a stage, strided;
* up-sampling is nearest-neighbour interpolation by the stage's stride followed by a 1x1 conv (the paper chose
  it over transposed convs so that weights transfer between tasks), then the skip is concatenated and the
  stage's blocks map ``2 * width`` to ``width``;
* a 1x1 segmentation head per decoder level.

What comes from the plan: the number of stages, the kernel sizes and strides (the plan's topology). What does
not: the widths and blocks per stage, which come from the preset's name; the plan's ``features_per_stage``,
``n_conv_per_stage`` and ``n_conv_per_stage_decoder`` are ignored. With fewer than 6 stages the first
``n_stages`` widths are used; with more, the extra stages keep the last width.

Shapes: input ``(B, C_in, *spatial)`` channels first, ``spatial`` = ``(Y, X)`` or ``(Z, Y, X)`` divisible by the
total stride; output logits ``(B, n_classes, *spatial)``, or with deep supervision a list of ``n_stages - 1``
logits, full resolution first (the convention of :mod:`segpipe.networks.unet`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from segpipe.networks.registry import Topology, register_network
from segpipe.networks.unet import (
    NEGATIVE_SLOPE,
    ConvNormAct,
    UNet,
    conv,
    conv_class,
    decode,
    encode,
    init_weights,
    norm,
)


@dataclass(frozen=True)
class STUNetSize:
    """A scale of STU-Net: residual blocks per stage (every stage, encoder and decoder) and channels per stage."""

    name: str
    depth: int
    channels: tuple[int, ...]

    def widths(self, n_stages: int) -> list[int]:
        """Channels of ``n_stages`` stages: the first ``n_stages`` widths, the last one repeated beyond 6."""
        return [self.channels[min(s, len(self.channels) - 1)] for s in range(n_stages)]


STUNET_SIZES: dict[str, STUNetSize] = {
    "stunet-s": STUNetSize("stunet-s", 1, (16, 32, 64, 128, 256, 256)),
    "stunet-b": STUNetSize("stunet-b", 1, (32, 64, 128, 256, 512, 512)),
    "stunet-l": STUNetSize("stunet-l", 2, (64, 128, 256, 512, 1024, 1024)),
    "stunet-h": STUNetSize("stunet-h", 3, (96, 192, 384, 768, 1536, 1536)),
}
"""The paper's scales (Table 1 of Huang et al., 2023), by network name (all but stunet-h are registered)."""


class STUBlock(nn.Module):
    """STU-Net's residual block. ``(B, C_in, *S) -> (B, C_out, *S / stride)``.

    conv-norm-act, conv-norm, add the skip, act. The skip is a strided 1x1 conv (bias, no norm) when
    ``project`` (the first block of a stage), else the identity (which needs ``C_in == C_out``, stride 1).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: Sequence[int], stride: Sequence[int],
                 project: bool):
        super().__init__()
        ndim = len(kernel)
        if not project and (in_channels != out_channels or any(s != 1 for s in stride)):
            raise ValueError("an identity skip needs equal channels and stride 1")
        self.conv1 = ConvNormAct(in_channels, out_channels, kernel, stride)
        self.conv2 = conv(out_channels, out_channels, kernel, [1] * ndim)
        self.norm2 = norm(ndim, out_channels)
        self.act = nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True)
        self.skip: nn.Module = conv(in_channels, out_channels, [1] * ndim, stride) if project else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm2(self.conv2(self.conv1(x))) + self.skip(x))


def stu_stage(depth: int, in_channels: int, out_channels: int, kernel: Sequence[int],
              stride: Sequence[int]) -> nn.Sequential:
    """``depth`` :class:`STUBlock`: the first strided by ``stride`` with a 1x1 conv skip, the rest identity skips."""
    ones = [1] * len(kernel)
    return nn.Sequential(*[STUBlock(in_channels if b == 0 else out_channels, out_channels, kernel,
                                    stride if b == 0 else ones, project=b == 0) for b in range(depth)])


class NearestUp(nn.Module):
    """Nearest-neighbour up-sampling by ``scale`` then a 1x1 conv. ``(B, C_in, *S) -> (B, C_out, *S * scale)``."""

    def __init__(self, in_channels: int, out_channels: int, scale: Sequence[int]):
        super().__init__()
        self.scale = tuple(float(s) for s in scale)
        self.conv = conv(in_channels, out_channels, [1] * len(scale), [1] * len(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.interpolate(x, scale_factor=self.scale, mode="nearest"))


class STUEncoder(nn.Module):
    """Stages of :class:`STUBlock` (no stem); ``forward`` returns one feature map per stage, bottleneck last."""

    def __init__(self, topology: Topology, widths: Sequence[int], depth: int, in_channels: int):
        super().__init__()
        stages, channels = [], in_channels
        for s in range(topology.n_stages):
            stages.append(stu_stage(depth, channels, widths[s], topology.kernel_sizes[s], topology.strides[s]))
            channels = widths[s]
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return encode(self.stages, x)


class STUDecoder(nn.Module):
    """Per level: :class:`NearestUp`, concatenate the skip, a stage of :class:`STUBlock`; a 1x1 head per level.

    Attribute names (``ups``, ``blocks``, ``heads``) follow :class:`segpipe.networks.unet.UNetDecoder`, so
    fine-tuning (:mod:`segpipe.training.initialization`) recognises the heads.
    """

    def __init__(self, topology: Topology, widths: Sequence[int], depth: int, n_classes: int):
        super().__init__()
        n, ndim = topology.n_stages, topology.ndim
        ups, blocks, heads = [], [], []
        for i in range(n - 1):  # i = 0 is the coarsest decoder stage (just above the bottleneck)
            below, target = n - 1 - i, n - 2 - i
            ups.append(NearestUp(widths[below], widths[target], topology.strides[below]))
            blocks.append(stu_stage(depth, 2 * widths[target], widths[target], topology.kernel_sizes[target],
                                    [1] * ndim))
            heads.append(conv_class(ndim)(widths[target], n_classes, 1, 1, 0, bias=True))
        self.ups, self.blocks, self.heads = nn.ModuleList(ups), nn.ModuleList(blocks), nn.ModuleList(heads)

    def forward(self, skips: list[torch.Tensor], deep_supervision: bool) -> torch.Tensor | list[torch.Tensor]:
        return decode(self.ups, self.blocks, self.heads, skips, deep_supervision)


def init_stunet(network: nn.Module) -> None:
    """Initialize in place: Kaiming normal (a=0.01) convs and zero biases (nnU-Net's, as the authors'), except

    * the 1x1 convs of the projection skips and of the up-sampling, which feed a sum or a concatenation
      without a nonlinearity in between: Kaiming normal with gain 1 (``nonlinearity="linear"``), so that they
      keep the second moment of their input instead of doubling it at every stage;
    * the last norm of every block, whose weight starts at zero, so that a block starts as its skip.

    The authors' code uses He init (gain sqrt(2)) everywhere and norm weights of one; with it, stunet-l and
    stunet-h start with logits several times larger and diverge in a few SGD steps at lr 0.1 without gradient
    clipping (the registry's check of every network). Only the starting point differs: the architecture and
    the parameters are the paper's, and fine-tuning replaces them anyway.
    """
    network.apply(init_weights)
    for module in network.modules():
        if isinstance(module, STUBlock):
            nn.init.zeros_(module.norm2.weight)
            _init_linear(module.skip)
        elif isinstance(module, NearestUp):
            _init_linear(module.conv)


def _init_linear(module: nn.Module) -> None:
    """Kaiming normal with gain 1 for a conv (anything else, e.g. an identity skip, is left alone)."""
    if isinstance(module, (nn.Conv2d, nn.Conv3d)):
        nn.init.kaiming_normal_(module.weight, nonlinearity="linear")


class STUNet(UNet):
    """STU-Net of scale ``size`` on the plan's ``topology`` (stages, kernels, strides): a :class:`UNet` with
    :class:`STUEncoder` and :class:`STUDecoder`.

    ``(B, C_in, *S) -> (B, n_classes, *S)``, or a list full resolution first when ``deep_supervision`` (which
    may be toggled after construction). Weights as :func:`init_stunet`.
    """

    def __init__(self, topology: Topology, size: STUNetSize, in_channels: int, n_classes: int,
                 deep_supervision: bool = True):
        widths = size.widths(topology.n_stages)
        super().__init__(topology, STUEncoder(topology, widths, size.depth, in_channels), n_classes,
                         deep_supervision, decoder=STUDecoder(topology, widths, size.depth, n_classes))
        self.size = size
        self.widths = widths
        init_stunet(self)


@register_network("stunet-s")
def build_stunet_s(topology: Topology, in_channels: int, n_classes: int, deep_supervision: bool) -> nn.Module:
    """Builder registered as ``"stunet-s"``: 1 block per stage, 16-256 channels."""
    return STUNet(topology, STUNET_SIZES["stunet-s"], in_channels, n_classes, deep_supervision)


@register_network("stunet-b")
def build_stunet_b(topology: Topology, in_channels: int, n_classes: int, deep_supervision: bool) -> nn.Module:
    """Builder registered as ``"stunet-b"``: 1 block per stage, 32-512 channels."""
    return STUNet(topology, STUNET_SIZES["stunet-b"], in_channels, n_classes, deep_supervision)


@register_network("stunet-l")
def build_stunet_l(topology: Topology, in_channels: int, n_classes: int, deep_supervision: bool) -> nn.Module:
    """Builder registered as ``"stunet-l"``: 2 blocks per stage, 64-1024 channels."""
    return STUNet(topology, STUNET_SIZES["stunet-l"], in_channels, n_classes, deep_supervision)
