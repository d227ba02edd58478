"""The plugin's entry point: registers its loss, network and recipe through focusseg's public plugin API."""

from __future__ import annotations

from pathlib import Path

import focusseg
from focusseg_example_plugin.losses import FocalTverskyLoss
from focusseg_example_plugin.nets import build, divisor

RECIPE = Path(__file__).with_name("example-focal-tversky.json")


def register() -> None:
    """Register ``focal_tversky`` (loss), ``tiny_resunet`` (network) and ``example-focal-tversky`` (recipe)."""
    focusseg.register("loss", "focal_tversky")(FocalTverskyLoss)
    focusseg.register("network", "tiny_resunet", divisor=divisor, spatial_dims=(2, 3))(build)
    focusseg.register("recipe", "example-focal-tversky")(lambda: RECIPE)
