"""Depth-aware operators: convolution, similarity windows, pooling, depth resizing.

Conventions: docs/method.md.
"""

from drd_jax.ops.depth_conv import (
    DEFAULT_ALPHA,
    IMPLEMENTATIONS,
    depth_aware_conv,
    depth_similarity,
    sanitize_depth,
)
from drd_jax.ops.depth_pool import POOL_DEPTH_METHODS, depth_aware_avg_pool, pool_depth
from drd_jax.ops.valid_region import pooled_sizes, resize_bilinear_to_sizes, valid_mask
from drd_jax.ops.windows import output_size, resolve_padding, window_shifts

__all__ = [
    "DEFAULT_ALPHA",
    "IMPLEMENTATIONS",
    "POOL_DEPTH_METHODS",
    "depth_aware_avg_pool",
    "depth_aware_conv",
    "depth_similarity",
    "output_size",
    "pool_depth",
    "pooled_sizes",
    "resize_bilinear_to_sizes",
    "resolve_padding",
    "sanitize_depth",
    "valid_mask",
    "window_shifts",
]
