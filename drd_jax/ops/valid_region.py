"""Images padded into one canvas: which pixels are real, and resizing each image's real part.

Evaluation on a dataset of mixed image sizes (SUN RGB-D's four sensors) pads every image at the
bottom and right into one fixed canvas, so that one compiled program serves them all. The network
then gives the same result on an image's real part as on the unpadded image if every layer sees
zeros outside it (what 'SAME' zero padding shows it) and the final upsampling works per image.
These are the pieces for that:

* :func:`valid_mask`: ``(N, H, W, 1)`` True inside each image's real top-left region;
* :func:`pooled_sizes`: the real size after a 3×3/2 pooling with padding 1 (``ceil(size / 2)``);
* :func:`resize_bilinear_to_sizes`: ``jax.image.resize(..., 'bilinear')`` of each image's real
  part to its own output size, inside a fixed output canvas.

Sizes are ``(N, 2)`` integer arrays of ``(height, width)`` in pixels, traced values (they may
differ per image under one compiled program).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["pooled_sizes", "resize_bilinear_to_sizes", "valid_mask"]


def valid_mask(sizes: jax.Array, spatial_shape: Sequence[int]) -> jax.Array:
    """``(N, H, W, 1)`` bool: pixel ``(y, x)`` of image ``n`` lies in its real region, i.e.
    ``y < sizes[n, 0]`` and ``x < sizes[n, 1]``; ``spatial_shape`` is the canvas ``(H, W)``."""
    h, w = spatial_shape
    rows = jnp.arange(h)[None, :] < sizes[:, 0:1]  # (N, H)
    cols = jnp.arange(w)[None, :] < sizes[:, 1:2]  # (N, W)
    return (rows[:, :, None] & cols[:, None, :])[..., None]


def pooled_sizes(sizes: jax.Array, stride: int = 2) -> jax.Array:
    """Real size after a pooling of stride ``stride`` with a window of ``stride + 1`` and padding
    1 on each side (DeepLab's 3×3/2, pad 1): ``ceil(size / stride)``, as ``nn.max_pool`` gives."""
    return -(-sizes // stride)


def _bilinear_weights(in_len: int, out_len: int, in_size, out_size, dtype) -> jax.Array:
    """``(in_len, out_len)`` weights that resize a signal's first ``in_size`` samples to
    ``out_size`` samples (zero elsewhere), as ``jax.image.resize``'s antialiased triangle kernel
    does for unpadded lengths ``in_size → out_size`` (``jax._src.image.scale``)."""
    in_size = jnp.asarray(in_size, jnp.float32)
    out_size = jnp.asarray(out_size, jnp.float32)
    inv_scale = in_size / jnp.maximum(out_size, 1.0)
    kernel_scale = jnp.maximum(inv_scale, 1.0)
    sample = (jnp.arange(out_len, dtype=jnp.float32) + 0.5) * inv_scale - 0.5
    inputs = jnp.arange(in_len, dtype=jnp.float32)
    distance = jnp.abs(sample[None, :] - inputs[:, None]) / kernel_scale
    weights = jnp.maximum(0.0, 1.0 - distance) * (inputs < in_size)[:, None]
    total = jnp.sum(weights, axis=0, keepdims=True)
    weights = jnp.where(
        jnp.abs(total) > 1000.0 * float(np.finfo(np.float32).eps),
        weights / jnp.where(total != 0, total, 1.0),
        0.0,
    )
    inside = (sample >= -0.5) & (sample <= in_size - 0.5)
    outputs = jnp.arange(out_len) < out_size
    return jnp.where((inside & outputs)[None, :], weights, 0.0).astype(dtype)


def resize_bilinear_to_sizes(
    x: jax.Array, in_sizes: jax.Array, out_sizes: jax.Array, out_shape: Sequence[int]
) -> jax.Array:
    """Bilinear resize of each image's real region to its own size, in a fixed canvas.

    Args:
      x: ``(N, h, w, C)`` canvas; image ``n``'s real part is its top-left ``in_sizes[n]``.
      in_sizes: ``(N, 2)`` int real (height, width) in ``x``.
      out_sizes: ``(N, 2)`` int (height, width) to resize each real part to.
      out_shape: the output canvas ``(H, W)``, at least every ``out_sizes[n]``.

    Returns:
      ``(N, H, W, C)`` in ``x``'s dtype: at ``y < out_sizes[n, 0]``, ``x < out_sizes[n, 1]`` equal
      (to float rounding) to ``jax.image.resize(x[n, :in_h, :in_w], (out_h, out_w, C),
      'bilinear')``; 0 elsewhere.
    """
    n, h, w, _ = x.shape
    out_h, out_w = out_shape

    def weights(in_len, out_len, axis):
        def one(in_size, out_size):
            return _bilinear_weights(in_len, out_len, in_size, out_size, x.dtype)

        return jax.vmap(one)(in_sizes[:, axis], out_sizes[:, axis])  # (N, in_len, out_len)

    rows, cols = weights(h, out_h, 0), weights(w, out_w, 1)
    return jnp.einsum("nhwc,nhy,nwx->nyxc", x, rows, cols, precision=lax.Precision.HIGHEST)
