"""focusseg: 3D medical image segmentation whose training focuses on what is hard."""

__version__ = "0.1.0"
