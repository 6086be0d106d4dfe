"""ME data: the official format reader, validation, per-image split, torch dataset, stand-ins."""
from megl.data.annotations import MEData, Sample, load_image, load_map, read_dataset

__all__ = ["MEData", "Sample", "load_image", "load_map", "read_dataset"]
