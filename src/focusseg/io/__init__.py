"""Reading and writing images with their geometry, and finding cases in a dataset folder."""

from focusseg.io.dataset import CaseFiles, DatasetSpec, discover_cases, discover_images, load_dataset_spec
from focusseg.io.image import Geometry, ImageReadError, read_case, read_image, write_image, write_segmentation

__all__ = [
    "CaseFiles",
    "DatasetSpec",
    "Geometry",
    "ImageReadError",
    "discover_cases",
    "discover_images",
    "load_dataset_spec",
    "read_case",
    "read_image",
    "write_image",
    "write_segmentation",
]
