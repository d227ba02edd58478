"""The embedded demo dataset: synthetic phantoms written as an nnU-Net v2 raw dataset."""

from .phantoms import CHANNEL_NAMES, LABELS, Phantom, generate_phantom_dataset, make_phantom

__all__ = ["CHANNEL_NAMES", "LABELS", "Phantom", "generate_phantom_dataset", "make_phantom"]
