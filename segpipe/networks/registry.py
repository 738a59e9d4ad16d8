"""Registry of segmentation networks, keyed by the ``name`` of a plan's network entry.

A plan's network entry (:class:`segpipe.planning.plans.NetworkPlan`) names a builder and describes the topology
(:class:`segpipe.planning.plans.Topology`: stages, features, kernels, strides, convs per stage); the registered
builder turns it into a :class:`torch.nn.Module`. Builders are registered with
:func:`register_network` and called by :func:`build_network`::

    @register_network("plain")
    def build_plain(topology: Topology, in_channels: int, n_classes: int, deep_supervision: bool) -> nn.Module:
        ...
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from segpipe.errors import did_you_mean, fail
from segpipe.planning.plans import NetworkPlan, Topology

logger = logging.getLogger(__name__)

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


def build_network(network: NetworkPlan | Mapping[str, Any], in_channels: int, n_classes: int,
                  deep_supervision: bool = True) -> nn.Module:
    """Build the network a plan's network entry describes (a :class:`NetworkPlan`, or its JSON object, which is
    validated first).

    The module maps ``(B, in_channels, *patch)`` to logits ``(B, n_classes, *patch)`` (a list of logits from
    full resolution to coarsest decoder level when ``deep_supervision``). ``patch`` must be divisible by the
    topology's total stride.
    """
    plan = network if isinstance(network, NetworkPlan) else NetworkPlan.from_json(network)
    name = resolve_network_name(plan.name)
    if in_channels < 1 or n_classes < 1:
        raise fail(f"cannot build a network with {in_channels} input channels and {n_classes} classes",
                   "check the channels and labels of dataset.json")
    topology = plan.topology
    net = NETWORKS[name](topology, in_channels, n_classes, deep_supervision)
    logger.debug("built network '%s' (%dD, %d stages, %d parameters)", name, topology.ndim, topology.n_stages,
                 sum(p.numel() for p in net.parameters()))
    return net
