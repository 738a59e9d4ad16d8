"""U-Net family built from a plan's network topology; networks register themselves by name.

``build_network(plan["network"], in_channels, n_classes)`` is the entry point.
"""
from segpipe.networks.registry import NETWORKS, build_network, register_network, resolve_network_name
from segpipe.networks import residual, unet  # noqa: F401  (importing registers "plain" and "residual")

__all__ = ["NETWORKS", "build_network", "register_network", "resolve_network_name"]
