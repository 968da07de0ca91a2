"""Segmentation models: DeepLab-VGG16 LargeFOV as depth-aware teacher and plain student."""

from drd_jax.models.deeplab_vgg16 import (
    DEPTH_AWARE_LAYER_CHOICES,
    DeepLabVGG16,
    depth_aware_layer_names,
    scaled_width,
)

__all__ = ["DEPTH_AWARE_LAYER_CHOICES", "DeepLabVGG16", "depth_aware_layer_names", "scaled_width"]
