"""NYU Depth V2 labeled frames (``tfds new`` layout): ``tfds_builders.nyuv2.Builder``.

Class names per config are in ``info.metadata['class_names']``; the 40 / 13-class names are also
:data:`CLASS_NAMES_40` / :data:`CLASS_NAMES_13`.
"""

from tfds_builders.nyuv2.nyuv2_dataset_builder import CLASS_NAMES_13, CLASS_NAMES_40, Builder

__all__ = ["CLASS_NAMES_13", "CLASS_NAMES_40", "Builder"]
