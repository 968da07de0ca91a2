"""drd-jax: Depth Removal Distillation for RGB-D semantic segmentation, in JAX/Flax."""

__version__ = "0.1.0"
