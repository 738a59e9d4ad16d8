"""What a network builder receives (:class:`NetworkSpec`) and what it declares (:class:`NetworkCapabilities`).

A builder registered with ``@register_network("name", capabilities=NetworkCapabilities(...))`` is called as
``builder(spec) -> nn.Module``. The module maps ``(B, spec.in_channels, *patch)`` (channels first, spatial axes
in array order ``(z, y, x)`` / ``(y, x)``) to logits ``(B, spec.n_outputs, *patch)``; with
``spec.deep_supervision`` it returns a list of :func:`output_levels` logits from full resolution down, level
``l`` at ``patch`` divided by the cumulative ``strides[0..l]``. Setting ``module.deep_supervision = False``
(the final validation does) makes it return the full-resolution tensor alone.

The spec is versioned (:data:`NETWORK_SPEC_VERSION`): fields are added without a new version; a version bump
means a field changed meaning, and a builder that declares a newer ``spec_version`` than this segpipe provides
is refused with the fix (upgrade segpipe).
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from segpipe.planning.plans import Configuration, NetworkPlan, Topology

NETWORK_SPEC_VERSION = 1


@dataclass(frozen=True)
class NetworkSpec:
    """Everything a builder needs, frozen. Per-axis values are in array axis order; sizes in voxels.

    ``network`` is the registry key; ``n_outputs`` the output channels (classes, softmax; or regions, one
    sigmoid each: logits either way); ``patch_size`` the configuration's patch (None only when a network is
    built from a network entry without its configuration, e.g. in tests); ``strides``, ``kernel_sizes``,
    ``features_per_stage`` and the conv counts are the planned topology's (also whole in ``topology``);
    ``options`` the network entry's own keys in plans.json (a plug-in's keyword arguments); ``plan`` the whole
    configuration as plans.json has it, for rare needs (read-only; None without a configuration)."""

    network: str
    in_channels: int
    n_outputs: int
    ndim: int
    patch_size: tuple[int, ...] | None
    strides: tuple[tuple[int, ...], ...]
    kernel_sizes: tuple[tuple[int, ...], ...]
    features_per_stage: tuple[int, ...]
    n_conv_per_stage: tuple[int, ...]
    n_conv_per_stage_decoder: tuple[int, ...]
    deep_supervision: bool
    topology: Topology = field(repr=False)
    options: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    plan: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    spec_version: int = NETWORK_SPEC_VERSION

    @property
    def n_stages(self) -> int:
        return len(self.features_per_stage)

    @classmethod
    def build(cls, network: NetworkPlan, in_channels: int, n_outputs: int, deep_supervision: bool,
              config: Configuration | None = None) -> NetworkSpec:
        """The spec of ``network`` (with ``config``'s patch and plan when given)."""
        t = network.topology
        return cls(network=network.name, in_channels=int(in_channels), n_outputs=int(n_outputs), ndim=t.ndim,
                   patch_size=tuple(int(p) for p in config.patch_size) if config is not None else None,
                   strides=tuple(tuple(s) for s in t.strides), kernel_sizes=tuple(tuple(k) for k in t.kernel_sizes),
                   features_per_stage=tuple(t.features_per_stage), n_conv_per_stage=tuple(t.n_conv_per_stage),
                   n_conv_per_stage_decoder=tuple(t.n_conv_per_stage_decoder), deep_supervision=bool(deep_supervision),
                   topology=t, options=MappingProxyType(copy.deepcopy(dict(network.extra))),
                   plan=MappingProxyType(copy.deepcopy(config.to_json())) if config is not None else None)


MemoryEstimate = Callable[[NetworkSpec], int]
"""``estimate(spec) -> bytes`` a training step of one batch (``plan["batch_size"]`` patches) needs."""


@dataclass(frozen=True)
class NetworkCapabilities:
    """What a network can do, declared when its builder is registered (the defaults describe segpipe's U-Nets).

    - ``supports_deep_supervision``: False: the network is always built with ``deep_supervision=False`` and
      trained on its one output.
    - ``n_outputs``: with deep supervision, the outputs it returns: ``"per-stage"`` (``n_stages - 1``) or a
      number (the first levels only; the loss weighs those).
    - ``input_divisor``: every patch axis must be a multiple of it (an int for all axes, or one per axis); None:
      the topology's total stride, which the planner guarantees.
    - ``fixed_patch``: the module accepts inputs of exactly ``spec.patch_size`` only (segpipe trains on patches and
      predicts whole patches by sliding window, padding smaller images; it needs the configuration to build).
    - ``cuda_only``: refused on any other device, naming the network and the fix.
    - ``memory_estimate``: ``estimate(spec) -> bytes`` of a training step; ``segpipe plan`` shrinks the patch
      and picks the batch by it against the memory budget (instead of its U-Net memory model,
      :mod:`segpipe.planning.network_memory`), and warns when a planned configuration still exceeds the budget
      by it (a patch or batch set by the user, or a patch that cannot shrink further).
    - ``spec_version``: the :data:`NETWORK_SPEC_VERSION` the builder was written against.
    """

    supports_deep_supervision: bool = True
    n_outputs: int | Literal["per-stage"] = "per-stage"
    input_divisor: int | tuple[int, ...] | None = None
    fixed_patch: bool = False
    cuda_only: bool = False
    memory_estimate: MemoryEstimate | None = field(default=None, compare=False)
    spec_version: int = NETWORK_SPEC_VERSION

    def __post_init__(self) -> None:
        if self.n_outputs != "per-stage" and not (isinstance(self.n_outputs, int) and self.n_outputs >= 1):
            raise ValueError(f"n_outputs must be 'per-stage' or a number >= 1, not {self.n_outputs!r}")
        divisors = (self.input_divisor,) if isinstance(self.input_divisor, int) else self.input_divisor or ()
        if any(not isinstance(d, int) or d < 1 for d in divisors):
            raise ValueError(f"input_divisor must be None or positive whole numbers, not {self.input_divisor!r}")
        if self.memory_estimate is not None and not callable(self.memory_estimate):
            raise ValueError("memory_estimate must be None or a callable estimate(spec) -> bytes")

    def divisor(self, spec: NetworkSpec) -> tuple[int, ...]:
        """Per axis, what the patch must be a multiple of."""
        if self.input_divisor is None:
            return tuple(spec.topology.total_stride)
        if isinstance(self.input_divisor, int):
            return (self.input_divisor,) * spec.ndim
        return tuple(self.input_divisor)

    def output_levels(self, spec: NetworkSpec) -> int:
        """How many logit maps the network returns for ``spec`` (1 without deep supervision)."""
        if not spec.deep_supervision:
            return 1
        return spec.n_stages - 1 if self.n_outputs == "per-stage" else min(int(self.n_outputs), spec.n_stages - 1)


DEFAULT_CAPABILITIES = NetworkCapabilities()
