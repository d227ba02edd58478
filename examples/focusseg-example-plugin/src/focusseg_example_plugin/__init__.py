"""An example focusseg plugin: a focal Tversky loss, a tiny residual U-Net and a recipe using them."""

__version__ = "0.1.0"
