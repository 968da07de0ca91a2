"""Segmentation models: DeepLab-VGG16 LargeFOV as depth-aware teacher and plain student, and the
small networks some distillation methods train beside the student."""

from drd_jax.models.deeplab_vgg16 import (
    DEPTH_AWARE_LAYER_CHOICES,
    FEATURE_COLLECTION,
    FEATURE_LAYERS,
    DeepLabVGG16,
    apply_with_feature_layer,
    apply_with_features,
    depth_aware_layer_names,
    feature_channels,
    scaled_width,
)
from drd_jax.models.distillation_heads import (
    FeatureAdapter,
    FeatureAutoEncoder,
    ScoreMapCritic,
    SelfAttention2D,
)

__all__ = [
    "DEPTH_AWARE_LAYER_CHOICES",
    "FEATURE_COLLECTION",
    "FEATURE_LAYERS",
    "DeepLabVGG16",
    "FeatureAdapter",
    "FeatureAutoEncoder",
    "ScoreMapCritic",
    "SelfAttention2D",
    "apply_with_feature_layer",
    "apply_with_features",
    "depth_aware_layer_names",
    "feature_channels",
    "scaled_width",
]
