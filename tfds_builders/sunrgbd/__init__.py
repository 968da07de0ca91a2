"""SUN RGB-D, 37 classes (``tfds new`` layout): ``tfds_builders.sunrgbd.Builder``."""

from tfds_builders.sunrgbd.sunrgbd_dataset_builder import CLASS_NAMES, NUM_CLASSES, Builder

__all__ = ["CLASS_NAMES", "NUM_CLASSES", "Builder"]
