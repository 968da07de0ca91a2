"""TFDS dataset builders (``tfds new`` layout), one folder per dataset.

Each ``tfds_builders.<name>`` package exposes ``Builder``. Everything builds and reads without
TensorFlow: ``file_format='array_record'`` and ``tfds.data_source``.

Importing this package registers all three builders with TFDS, so after ``import tfds_builders``
``tfds.builder('nyuv2/40', data_dir=...)`` and ``tfds.data_source('synthetic_rgbd/tiny',
split='test', data_dir=...)`` find them by name. (``tfds.load`` and the ``tfds build`` command
need TensorFlow; ``python -m tfds_builders.build`` and ``tfds.data_source`` do not.)
"""

from drd_jax.extras import require

require("tensorflow_datasets", extra="data")

# Imported for their side effect: defining a ``Builder`` registers it under its folder's name.
from tfds_builders import nyuv2, sunrgbd, synthetic_rgbd  # noqa: E402 (after the check)

__all__ = ["nyuv2", "sunrgbd", "synthetic_rgbd"]
