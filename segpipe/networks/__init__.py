"""U-Net family built from a plan's network topology; networks register themselves by name.

``build_network(configuration.network, in_channels, n_classes)`` is the entry point (the plan's
:class:`~segpipe.planning.plans.NetworkPlan`, or its JSON object).
"""
from segpipe.networks import residual, unet  # noqa: F401  (importing registers "plain" and "residual")
from segpipe.networks.registry import NETWORKS, build_network, register_network, resolve_network_name

__all__ = ["NETWORKS", "build_network", "register_network", "resolve_network_name"]
