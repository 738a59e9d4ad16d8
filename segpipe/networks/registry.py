"""Registry of segmentation networks, keyed by the ``name`` of a plan's network entry.

A plan's network entry describes the topology only (stages, features, kernels, strides, convs per stage);
the registered builder turns it into a :class:`torch.nn.Module`. Builders are registered with
:func:`register_network` and called by :func:`build_network`::

    @register_network("plain")
    def build_plain(topology: Topology, in_channels: int, n_classes: int, deep_supervision: bool) -> nn.Module:
        ...
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from segpipe.errors import did_you_mean, fail

logger = logging.getLogger(__name__)

TOPOLOGY_KEYS = ("n_stages", "features_per_stage", "kernel_sizes", "strides",
                 "n_conv_per_stage", "n_conv_per_stage_decoder")


@dataclass(frozen=True)
class Topology:
    """A validated network topology (all per-axis lists in array axis order).

    ``kernel_sizes[s]`` / ``strides[s]`` are the conv kernel and the stride of the first conv of encoder stage
    ``s`` (``strides[0]`` is all ones); ``n_conv_per_stage_decoder[i]`` is the number of convs of decoder stage
    ``i``, counted from the bottleneck upward (``i = 0`` is the coarsest decoder stage).
    """

    n_stages: int
    features_per_stage: tuple[int, ...]
    kernel_sizes: tuple[tuple[int, ...], ...]
    strides: tuple[tuple[int, ...], ...]
    n_conv_per_stage: tuple[int, ...]
    n_conv_per_stage_decoder: tuple[int, ...]

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return len(self.kernel_sizes[0])

    @property
    def total_stride(self) -> tuple[int, ...]:
        """Per-axis product of all strides: input patches must be divisible by it."""
        total = [1] * self.ndim
        for stride in self.strides:
            total = [t * s for t, s in zip(total, stride)]
        return tuple(total)

    @classmethod
    def from_plan(cls, network_plan: dict[str, Any]) -> "Topology":
        """Validate a plan's network entry; raises :class:`segpipe.errors.SegpipeError` naming what is wrong."""
        missing = [k for k in TOPOLOGY_KEYS if k not in network_plan]
        if missing:
            raise fail(f"network plan lacks {', '.join(missing)}",
                       f"give every one of: {', '.join(TOPOLOGY_KEYS)} (re-run `segpipe plan`)")
        try:
            n = int(network_plan["n_stages"])
            topo = cls(
                n_stages=n,
                features_per_stage=tuple(int(f) for f in network_plan["features_per_stage"]),
                kernel_sizes=tuple(tuple(int(k) for k in ks) for ks in network_plan["kernel_sizes"]),
                strides=tuple(tuple(int(s) for s in st) for st in network_plan["strides"]),
                n_conv_per_stage=tuple(int(c) for c in network_plan["n_conv_per_stage"]),
                n_conv_per_stage_decoder=tuple(int(c) for c in network_plan["n_conv_per_stage_decoder"]),
            )
        except (TypeError, ValueError) as exc:
            raise fail(f"network plan has a malformed entry ({exc})",
                       "use integers and lists of integers as written by `segpipe plan`") from exc
        topo._check()
        return topo

    def _check(self) -> None:
        fix = "re-run `segpipe plan` or correct the network entry of plans.json"
        n = self.n_stages
        if n < 2:
            raise fail(f"network plan has n_stages {n}; a U-Net needs at least 2", fix)
        lengths = {"features_per_stage": len(self.features_per_stage), "kernel_sizes": len(self.kernel_sizes),
                   "strides": len(self.strides), "n_conv_per_stage": len(self.n_conv_per_stage)}
        wrong = {k: v for k, v in lengths.items() if v != n}
        if wrong or len(self.n_conv_per_stage_decoder) != n - 1:
            raise fail(f"network plan lists have wrong lengths for n_stages={n}: {lengths}, "
                       f"n_conv_per_stage_decoder={len(self.n_conv_per_stage_decoder)} (needs {n - 1})", fix)
        ndims = {len(v) for v in (*self.kernel_sizes, *self.strides)}
        if len(ndims) != 1 or ndims.pop() not in (2, 3):
            raise fail("network plan mixes or uses unsupported dimensions in kernel_sizes/strides "
                       "(each entry needs 2 values for 2D or 3 for 3D)", fix)
        if any(s != 1 for s in self.strides[0]):
            raise fail(f"network plan has strides[0] = {list(self.strides[0])}; the first stage must not "
                       "downsample", fix)
        if any(k < 1 or k % 2 == 0 for ks in self.kernel_sizes for k in ks):
            raise fail(f"network plan has kernel sizes {[list(k) for k in self.kernel_sizes]}; each must be "
                       "odd and positive", fix)
        if any(v < 1 for v in (*self.features_per_stage, *self.n_conv_per_stage,
                               *self.n_conv_per_stage_decoder, *(s for st in self.strides for s in st))):
            raise fail("network plan has a feature count, conv count or stride below 1", fix)


NetworkBuilder = Callable[[Topology, int, int, bool], nn.Module]
"""``builder(topology, in_channels, n_classes, deep_supervision) -> nn.Module``."""

NETWORKS: dict[str, NetworkBuilder] = {}


def register_network(name: str) -> Callable[[NetworkBuilder], NetworkBuilder]:
    """Decorator registering ``builder`` under ``name`` (a class with that constructor signature works too)."""

    def decorator(builder: NetworkBuilder) -> NetworkBuilder:
        if name in NETWORKS and NETWORKS[name] is not builder:
            raise ValueError(f"network name '{name}' is already registered")
        NETWORKS[name] = builder
        return builder

    return decorator


def resolve_network_name(name: str) -> str:
    """Return ``name`` if a network is registered under it, else raise a SegpipeError with a did-you-mean hint."""
    if name in NETWORKS:
        return name
    known = sorted(NETWORKS)
    raise fail(f"unknown network '{name}'{did_you_mean(name, known, cutoff=0.5)}", f"use one of: {', '.join(known)}")


def build_network(network_plan: dict[str, Any], in_channels: int, n_classes: int,
                  deep_supervision: bool = True) -> nn.Module:
    """Build the network a plan's network entry describes.

    The module maps ``(B, in_channels, *patch)`` to logits ``(B, n_classes, *patch)`` (a list of logits from
    full resolution to coarsest decoder level when ``deep_supervision``). ``patch`` must be divisible by the
    topology's total stride.
    """
    if "name" not in network_plan:
        raise fail("network plan has no 'name'", f"add \"name\": one of {', '.join(sorted(NETWORKS))}")
    name = resolve_network_name(network_plan["name"])
    if in_channels < 1 or n_classes < 1:
        raise fail(f"cannot build a network with {in_channels} input channels and {n_classes} classes",
                   "check the channels and labels of dataset.json")
    topology = Topology.from_plan(network_plan)
    net = NETWORKS[name](topology, in_channels, n_classes, deep_supervision)
    logger.debug("built network '%s' (%dD, %d stages, %d parameters)", name, topology.ndim, topology.n_stages,
                 sum(p.numel() for p in net.parameters()))
    return net
