"""A network's own memory estimate, as the planner uses it (docs/plugins.md, "Networks: the spec and the
capabilities").

A network may declare ``NetworkCapabilities.memory_estimate``: ``estimate(spec) -> bytes`` of one training step
of a batch of ``spec.plan["batch_size"]`` patches of ``spec.patch_size``. When the planned network declares one,
:func:`segpipe.planning.configuration.plan_configuration` shrinks the patch and picks the batch by it against
the memory budget (``--memory-gb``, GB of 2^30 bytes) instead of by the U-Net memory model of
:mod:`segpipe.planning.memory` (which is calibrated for segpipe's U-Nets and knows nothing of another network).

During planning the spec's ``plan`` holds the keys chosen so far (``spacing``, ``median_shape``,
``patch_size``, ``batch_size``, ``network``), not the whole configuration; the spec has deep supervision as
training builds it (when the network supports it).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType

from segpipe.networks.spec import MemoryEstimate, NetworkSpec
from segpipe.planning.plans import NetworkPlan, Topology

GIB = 2 ** 30
MAX_SEARCHED_BATCH = 1 << 16  # the batch search stops here (an estimate that never grows with the batch)


@dataclass(frozen=True)
class NetworkMemory:
    """The registered network ``network``'s own estimate against ``memory_gb`` GB, for ``in_channels`` inputs
    and ``n_outputs`` outputs."""

    network: str
    estimate: MemoryEstimate
    in_channels: int
    n_outputs: int
    memory_gb: float
    deep_supervision: bool

    @property
    def budget_bytes(self) -> float:
        return self.memory_gb * GIB

    def spec(self, spacing: Sequence[float], median_shape: Sequence[float], topo: Topology, patch: Sequence[int],
             batch: int) -> NetworkSpec:
        """The spec the estimate is asked about: the topology, ``patch`` and ``batch`` (in ``plan``)."""
        net = NetworkPlan(self.network, topo)
        base = NetworkSpec.build(net, self.in_channels, self.n_outputs, self.deep_supervision)
        plan = {"spacing": [float(s) for s in spacing], "median_shape": [float(m) for m in median_shape],
                "patch_size": [int(p) for p in patch], "batch_size": int(batch), "network": net.to_json()}
        return dataclasses.replace(base, patch_size=tuple(int(p) for p in patch), plan=MappingProxyType(plan))

    def bytes(self, spacing: Sequence[float], median_shape: Sequence[float], topo: Topology, patch: Sequence[int],
              batch: int) -> float:
        """The network's estimate (bytes) of a training step of ``batch`` patches of ``patch``."""
        return float(self.estimate(self.spec(spacing, median_shape, topo, patch, batch)))

    def fits(self, spacing: Sequence[float], median_shape: Sequence[float], topo: Topology, patch: Sequence[int],
             batch: int) -> bool:
        return self.bytes(spacing, median_shape, topo, patch, batch) <= self.budget_bytes

    def largest_batch(self, spacing: Sequence[float], median_shape: Sequence[float], topo: Topology,
                      patch: Sequence[int]) -> int:
        """The largest batch whose estimate fits the budget (0 when not even one patch fits); the estimate is
        taken to grow with the batch (found by doubling, then bisection)."""
        if not self.fits(spacing, median_shape, topo, patch, 1):
            return 0
        lo, hi = 1, 2
        while hi <= MAX_SEARCHED_BATCH and self.fits(spacing, median_shape, topo, patch, hi):
            lo, hi = hi, hi * 2
        if hi > MAX_SEARCHED_BATCH:
            return lo
        while hi - lo > 1:  # fits(lo), not fits(hi)
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self.fits(spacing, median_shape, topo, patch, mid) else (lo, mid)
        return lo


def network_memory(network: str, in_channels: int, n_outputs: int, memory_gb: float) -> NetworkMemory | None:
    """The planner's view of network ``network``'s own memory estimate, or None when it declares none (the
    planner then uses its U-Net memory model)."""
    from segpipe.networks.registry import network_capabilities

    caps = network_capabilities(network)
    if caps.memory_estimate is None:
        return None
    return NetworkMemory(network, caps.memory_estimate, int(in_channels), int(n_outputs), float(memory_gb),
                         caps.supports_deep_supervision)
