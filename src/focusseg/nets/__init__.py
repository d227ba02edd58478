"""Networks for focusseg: a registry of builders (MONAI nets, DynUNet, STU-Net, Lambda3D).

``build_network(name, in_channels, out_channels, spatial_dims=3, deep_supervision=False, **kwargs)``;
with deep supervision a network returns, in training mode, a list of logits highest resolution first.
"""

from focusseg.nets import dynunet as _dynunet  # noqa: F401  (registers "dynunet")
from focusseg.nets import lambda3d as _lambda3d  # noqa: F401  (registers "lambda3d")
from focusseg.nets import monai_nets as _monai_nets  # noqa: F401  (registers the MONAI networks)
from focusseg.nets import nnunet_dna as _nnunet_dna  # noqa: F401  (registers "nnunet")
from focusseg.nets import stunet as _stunet  # noqa: F401  (registers stunet_s/b/l/h)
from focusseg.nets.base import (
    NETWORKS,
    NetworkInfo,
    build_network,
    deep_supervision_names,
    network_divisor,
    network_divisors,
    network_info,
    network_names,
    register_network,
    supports_deep_supervision,
)

__all__ = [
    "NETWORKS",
    "NetworkInfo",
    "build_network",
    "deep_supervision_names",
    "network_divisor",
    "network_divisors",
    "network_info",
    "network_names",
    "register_network",
    "supports_deep_supervision",
]
