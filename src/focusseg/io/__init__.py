"""Reading and writing images with their geometry, and finding cases in a dataset folder."""

from focusseg.io.dataset import CaseFiles, DatasetSpec, discover_cases, discover_images, load_dataset_spec
from focusseg.io.geometry import DEFAULT_MAX_VOXELS, Geometry, ImageReadError, voxel_limit
from focusseg.io.image import read_case, read_image, read_label, write_image, write_segmentation

__all__ = [
    "DEFAULT_MAX_VOXELS",
    "CaseFiles",
    "DatasetSpec",
    "Geometry",
    "ImageReadError",
    "discover_cases",
    "discover_images",
    "load_dataset_spec",
    "read_case",
    "read_image",
    "read_label",
    "voxel_limit",
    "write_image",
    "write_segmentation",
]
