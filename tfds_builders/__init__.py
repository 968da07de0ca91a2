"""TFDS dataset builders (``tfds new`` layout), one folder per dataset.

Each ``tfds_builders.<name>`` package exposes ``Builder``. Everything builds and reads without
TensorFlow: ``file_format='array_record'`` and ``tfds.data_source``.
"""
