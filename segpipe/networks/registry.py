"""Registry of segmentation networks, keyed by the ``name`` of a plan's network entry.

A plan's network entry (:class:`segpipe.planning.plans.NetworkPlan`) names a builder and describes the topology
(:class:`segpipe.planning.plans.Topology`: stages, features, kernels, strides, convs per stage); the registered
builder turns it into a :class:`torch.nn.Module`. Builders are registered with :func:`register_network`, with
the :class:`~segpipe.networks.spec.NetworkCapabilities` they declare, and called by :func:`build_network` with
one frozen :class:`~segpipe.networks.spec.NetworkSpec`::

    @register_network("mine", capabilities=NetworkCapabilities(input_divisor=16))
    def build_mine(spec: NetworkSpec) -> nn.Module:
        ...

A builder taking one positional parameter receives the spec. Builders written before the spec (segpipe's own
U-Nets) take ``(topology, in_channels, n_classes, deep_supervision)`` and are still accepted. Other packages
register builders through the ``segpipe.plugins`` entry points (:mod:`segpipe.plugins`, docs/plugins.md).
"""
from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from segpipe import plugins
from segpipe.errors import Problem, did_you_mean, fail
from segpipe.networks.spec import DEFAULT_CAPABILITIES, NETWORK_SPEC_VERSION, NetworkCapabilities, NetworkSpec
from segpipe.planning.plans import Configuration, NetworkPlan, Topology  # noqa: F401 - Topology for builders

logger = logging.getLogger(__name__)

NetworkBuilder = Callable[..., nn.Module]
"""``builder(spec: NetworkSpec) -> nn.Module``, or (before the spec) ``builder(topology, in_channels, n_classes,
deep_supervision) -> nn.Module``."""


@dataclass(frozen=True)
class RegisteredNetwork:
    """A registry entry: the builder, its declared capabilities, and whether it takes the spec."""

    builder: NetworkBuilder
    capabilities: NetworkCapabilities
    takes_spec: bool


NETWORKS: dict[str, RegisteredNetwork] = {}


def _takes_spec(builder: NetworkBuilder) -> bool:
    """True when ``builder`` has exactly one required positional parameter (the spec)."""
    try:
        params = inspect.signature(builder).parameters.values()
    except (TypeError, ValueError):
        return False
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return False
    required = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    return len(required) == 1


def register_network(name: str, capabilities: NetworkCapabilities | None = None
                     ) -> Callable[[NetworkBuilder], NetworkBuilder]:
    """Decorator registering ``builder`` under ``name`` with its ``capabilities`` (default: a U-Net's); a class
    with the builder's constructor signature works too."""
    caps = DEFAULT_CAPABILITIES if capabilities is None else capabilities
    if not isinstance(caps, NetworkCapabilities):
        raise TypeError(f"capabilities of network '{name}' must be a NetworkCapabilities, not {type(caps).__name__}")

    def decorator(builder: NetworkBuilder) -> NetworkBuilder:
        if name in NETWORKS and NETWORKS[name].builder is not builder:
            raise ValueError(f"network name '{name}' is already registered")
        NETWORKS[name] = RegisteredNetwork(builder, caps, _takes_spec(builder))
        plugins.record("network", name, builder)
        return builder

    return decorator


def resolve_network_name(name: str) -> str:
    """Return ``name`` if a network is registered under it, else raise a SegpipeError with a did-you-mean hint."""
    plugins.load_plugins()
    if name in NETWORKS:
        return name
    known = sorted(NETWORKS)
    raise fail(f"unknown network '{name}'{did_you_mean(name, known, cutoff=0.5)}{plugins.load_errors_note()}",
               f"use one of: {', '.join(known)} (or install the plug-in that provides it)")


def network_capabilities(name: str) -> NetworkCapabilities:
    """The capabilities the network registered as ``name`` declared."""
    return NETWORKS[resolve_network_name(name)].capabilities


def check_device(name: str, device: torch.device | str) -> None:
    """Refuse a CUDA-only network on another device (a network that is not registered is left to the caller,
    which names what is missing)."""
    plugins.load_plugins()
    entry = NETWORKS.get(name)
    if entry is not None and entry.capabilities.cuda_only and torch.device(device).type != "cuda":
        raise fail(f"network '{name}' runs on CUDA only, and the device is {torch.device(device).type}",
                   "run on a machine with an NVIDIA GPU (--device cuda), or plan another network "
                   "(segpipe plan --force --network plain)")


def network_spec(network: NetworkPlan | Configuration | Mapping[str, Any], in_channels: int, n_classes: int,
                 deep_supervision: bool = True) -> NetworkSpec:
    """The :class:`NetworkSpec` a builder receives: of a configuration (patch and plan included) or of a network
    entry alone (a :class:`NetworkPlan` or its JSON object, validated first). ``deep_supervision`` is dropped
    for a network whose capabilities do not support it."""
    config = network if isinstance(network, Configuration) else None
    plan = config.network if config is not None else (
        network if isinstance(network, NetworkPlan) else NetworkPlan.from_json(network))
    name = resolve_network_name(plan.name)
    if in_channels < 1 or n_classes < 1:
        raise fail(f"cannot build a network with {in_channels} input channels and {n_classes} classes",
                   "check the channels and labels of dataset.json")
    caps = NETWORKS[name].capabilities
    return NetworkSpec.build(plan, in_channels, n_classes, deep_supervision and caps.supports_deep_supervision, config)


def spec_problems(spec: NetworkSpec) -> list[Problem]:
    """What keeps the network of ``spec`` from being built with it (by its declared capabilities)."""
    caps = NETWORKS[resolve_network_name(spec.network)].capabilities
    problems = []
    if caps.spec_version > NETWORK_SPEC_VERSION:
        problems.append(Problem(f"network '{spec.network}' was written for network spec version {caps.spec_version}; "
                                f"this segpipe provides version {NETWORK_SPEC_VERSION}",
                                "upgrade segpipe (pip install -U segpipe)"))
    if caps.cuda_only and not torch.cuda.is_available():
        problems.append(Problem(f"network '{spec.network}' runs on CUDA only, and this machine has no CUDA device",
                                "run on a machine with an NVIDIA GPU, or plan another network (segpipe plan --force "
                                "--network plain)"))
    if caps.fixed_patch and spec.patch_size is None:
        problems.append(Problem(f"network '{spec.network}' needs its patch size (fixed_patch), and it was built "
                                "from a network entry alone", "build it from the configuration: "
                                "build_network(config, in_channels, n_classes)"))
    if spec.patch_size is not None:
        divisor = caps.divisor(spec)
        if any(p % d for p, d in zip(spec.patch_size, divisor)):
            problems.append(Problem(f"network '{spec.network}' needs a patch divisible by {list(divisor)}; the plan's "
                                    f"patch is {list(spec.patch_size)}",
                                    "plan again with a patch that is a multiple of it on every axis (segpipe plan "
                                    "--force --patch-size ...)"))
    return problems


def plan_problems(config: Configuration, in_channels: int, n_outputs: int, memory_gb: float) -> list[Problem]:
    """What ``segpipe plan`` reports about a planned configuration's network by its capabilities: the errors of
    :func:`spec_problems`, and a warning when the network's own ``memory_estimate`` of a training step exceeds
    the memory budget (``memory_gb`` GB of 2^30 bytes)."""
    spec = network_spec(config, in_channels, n_outputs, deep_supervision=True)
    problems = spec_problems(spec)
    estimate = NETWORKS[spec.network].capabilities.memory_estimate
    if estimate is not None:
        need = float(estimate(spec))
        if need > memory_gb * 2 ** 30:
            problems.append(Problem(f"{config.name}: network '{spec.network}' estimates {need / 2 ** 30:.1f} GB for a "
                                    f"training step (patch {list(config.patch_size)}, batch {config.batch_size}); "
                                    f"the memory budget is {memory_gb:g} GB",
                                    "plan a smaller patch or batch (--patch-size, --batch-size), or give the "
                                    "memory there is (--memory-gb)", severity="warning"))
    return problems


def build_from_spec(spec: NetworkSpec) -> nn.Module:
    """Check ``spec`` against the network's capabilities and call its builder."""
    problems = spec_problems(spec)
    if problems:
        from segpipe.errors import SegpipeError

        raise SegpipeError(problems)
    entry = NETWORKS[spec.network]
    if entry.takes_spec:
        return entry.builder(spec)
    return entry.builder(spec.topology, spec.in_channels, spec.n_outputs, spec.deep_supervision)


def build_network(network: NetworkPlan | Configuration | Mapping[str, Any], in_channels: int, n_classes: int,
                  deep_supervision: bool = True) -> nn.Module:
    """Build the network of a configuration (preferred: the spec then has the patch and the plan) or of a plan's
    network entry (a :class:`NetworkPlan`, or its JSON object, which is validated first).

    The module maps ``(B, in_channels, *patch)`` to logits ``(B, n_classes, *patch)`` (a list of logits from
    full resolution to coarsest decoder level when ``deep_supervision`` and the network supports it). ``patch``
    must be divisible by the topology's total stride (or the network's declared ``input_divisor``).
    """
    spec = network_spec(network, in_channels, n_classes, deep_supervision)
    net = build_from_spec(spec)
    logger.debug("built network '%s' (%dD, %d stages, %d parameters)", spec.network, spec.ndim, spec.n_stages,
                 sum(p.numel() for p in net.parameters()))
    return net
