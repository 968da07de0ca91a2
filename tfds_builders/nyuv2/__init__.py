"""NYU Depth V2 labeled frames (``tfds new`` layout): ``tfds_builders.nyuv2.Builder``."""

from tfds_builders.nyuv2.nyuv2_dataset_builder import Builder

__all__ = ["Builder"]
