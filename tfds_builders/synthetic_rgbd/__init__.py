"""``synthetic_rgbd`` TFDS builder: procedural RGB-D segmentation scenes (docs/method.md, Data).

``CLASS_NAMES`` / ``NUM_CLASSES`` name the stored labels 1..K (0 = void); ``scenes`` is the
pure-numpy scene generator.
"""

from tfds_builders.synthetic_rgbd.scenes import CLASS_NAMES, NUM_CLASSES, VOID_LABEL
from tfds_builders.synthetic_rgbd.synthetic_rgbd_dataset_builder import Builder

__all__ = ["Builder", "CLASS_NAMES", "NUM_CLASSES", "VOID_LABEL"]
