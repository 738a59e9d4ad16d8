"""U-Net family built from a plan's network topology; networks register themselves by name.

``build_network(configuration, in_channels, n_classes)`` is the entry point (a plan's
:class:`~segpipe.planning.plans.Configuration`, or its network entry alone); builders receive a frozen
:class:`NetworkSpec` and declare their :class:`NetworkCapabilities` (docs/plugins.md).
"""
from segpipe.networks import residual, stunet, unet  # noqa: F401  (importing registers "plain", "residual", "stunet-*")
from segpipe.networks.registry import (
    NETWORKS,
    build_network,
    network_capabilities,
    network_spec,
    register_network,
    resolve_network_name,
)
from segpipe.networks.spec import NETWORK_SPEC_VERSION, NetworkCapabilities, NetworkSpec

__all__ = ["NETWORKS", "NETWORK_SPEC_VERSION", "NetworkCapabilities", "NetworkSpec", "build_network",
           "network_capabilities", "network_spec", "register_network", "resolve_network_name"]
