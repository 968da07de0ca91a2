"""Depth-aware average pooling and the depth resizing that follows every pooling
(docs/method.md, "Pooling and depth").

Both use the shared window machinery of :mod:`drd_jax.ops.windows`, so window placement and output
sizes are exactly those of ``flax.linen.max_pool`` / ``avg_pool`` with the same ``window``,
``strides`` and ``padding`` (``'SAME'``, ``'VALID'`` or explicit ``((lo, hi), (lo, hi))``).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from drd_jax.ops.depth_conv import (
    DEFAULT_ALPHA,
    depth_as_nhw1,
    depth_similarity,
    sanitize_depth,
)
from drd_jax.ops.windows import Padding, as_pair, window_shifts

POOL_DEPTH_METHODS = ("valid_mean", "nearest")


def depth_aware_avg_pool(
    x,
    depth,
    *,
    window=(3, 3),
    strides=(1, 1),
    padding: Padding = "SAME",
    alpha=DEFAULT_ALPHA,
    where=None,
):
    """Depth-aware average pooling (Depth-aware CNN's ``pool5a``).

    ``y(p) = Σ_o w(p,o)·x(c(p)+o) / Σ_o w(p,o)`` over the in-image neighbours of ``p``'s window
    only (zero-padded positions count in neither sum), with ``w = exp(−α·|D(c(p)+o) − D(c(p))|)``
    and the validity convention of :func:`drd_jax.ops.depth_similarity` (any pair with an invalid
    depth gets ``w = 1``). With constant depth this is an average pool that excludes padding
    (``nn.avg_pool(..., count_include_pad=False)``).

    The gradient w.r.t. ``x`` is the true one, ``∂y(p)/∂x(q) = w(p,q) / Σ_o w(p,o)`` (the upstream
    CUDA backward drops ``w``); it comes from autodiff, forward and reverse mode. No gradient flows
    into ``depth``.

    Args:
      x: ``(N, H, W, C)`` features (float dtype; computed in at least float32, returned in
        ``x.dtype``).
      depth: ``(N, H, W)`` or ``(N, H, W, 1)`` depth in metres (invalid: ≤ 0 or non-finite).
      window: odd int or pair of odd ints (the window needs a centre pixel).
      strides: int or ``(sh, sw)``.
      padding: ``'SAME'``, ``'VALID'`` or ``((lo, hi), (lo, hi))``.
      alpha: decay per metre of depth difference (default 8.3).
      where: optional ``(N, H, W)`` or ``(N, H, W, 1)`` bool, the pixels that count: the others
        count in neither sum, like padding (an image padded into a larger canvas pools as the
        unpadded image does, see ``drd_jax.ops.valid_region``). None: every pixel.

    Returns:
      ``(N, H', W', C)`` in ``x``'s dtype; a window with no in-image pixel gives 0.

    Raises:
      ValueError: wrong ranks, mismatched ``N/H/W``, even windows, bad strides or padding.
    """
    x = jnp.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D (N, H, W, C), got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must have a floating dtype, got {x.dtype}")
    depth = depth_as_nhw1(depth)
    if depth.shape[:3] != x.shape[:3]:
        raise ValueError(
            f"depth (N, H, W) = {depth.shape[:3]} must match x (N, H, W) = {x.shape[:3]}"
        )
    if where is not None and jnp.shape(where)[:3] != depth.shape[:3]:
        raise ValueError(f"where (N, H, W) = {jnp.shape(where)[:3]} must match x {x.shape[:3]}")
    window = as_pair(window, "window")
    if window[0] % 2 == 0 or window[1] % 2 == 0:
        raise ValueError(f"window must be odd in both dimensions (needs a centre), got {window}")
    acc = jnp.promote_types(x.dtype, jnp.float32)
    sim = depth_similarity(depth, window, alpha=alpha, strides=strides, padding=padding)
    geometry = dict(strides=strides, padding=padding)
    counted = jnp.ones(depth.shape, acc)
    if where is not None:
        counted = depth_as_nhw1(where, "where").astype(acc)
    inside = window_shifts(counted, window, **geometry)
    shifts = window_shifts(x, window, **geometry)
    num = jnp.zeros(sim.shape[:3] + (x.shape[-1],), acc)
    den = jnp.zeros(sim.shape[:3] + (1,), acc)
    for o, (xs, inside_o) in enumerate(zip(shifts, inside, strict=True)):
        w = sim[..., o : o + 1].astype(acc) * inside_o
        num = num + w * xs.astype(acc)
        den = den + w
    safe_den = jnp.where(den > 0, den, jnp.ones_like(den))
    y = jnp.where(den > 0, num / safe_den, jnp.zeros_like(num))
    return y.astype(x.dtype)


def pool_depth(
    depth,
    *,
    window=(3, 3),
    strides=(2, 2),
    padding: Padding = ((1, 1), (1, 1)),
    method: str = "valid_mean",
):
    """Resizes a depth map the way a pooling layer resizes the features next to it.

    The output has exactly the spatial size of ``nn.max_pool(features, window, strides, padding)``.
    Methods:
      * ``'valid_mean'``: mean of the valid (``> 0`` and finite) pixels in each window; padding and
        invalid pixels count in neither sum; 0 (= no reading) when none is valid. Never NaN.
      * ``'nearest'``: the depth at the window's centre pixel (row ``(kh − 1) // 2``, column
        ``(kw − 1) // 2`` of the window, so a 2×2/2 window takes its top-left pixel); invalid
        depth and padding give 0.

    Args:
      depth: ``(N, H, W)`` or ``(N, H, W, 1)`` depth in metres.
      window: int or ``(kh, kw)``.
      strides: int or ``(sh, sw)``.
      padding: ``'SAME'``, ``'VALID'`` or ``((lo, hi), (lo, hi))``.
      method: ``'valid_mean'`` or ``'nearest'``.

    Returns:
      float32 depth with the input's rank, ``(N, H', W')`` or ``(N, H', W', 1)``; 0 marks invalid.
      No gradient (``stop_gradient``).

    Raises:
      ValueError: bad rank, unknown ``method``, bad window, strides or padding.
    """
    if method not in POOL_DEPTH_METHODS:
        raise ValueError(f"method must be one of {POOL_DEPTH_METHODS}, got {method!r}")
    rank = jnp.ndim(depth)
    clean, valid = sanitize_depth(depth_as_nhw1(depth))
    window = as_pair(window, "window")
    geometry = dict(strides=strides, padding=padding)
    if method == "nearest":
        centre = ((window[0] - 1) // 2) * window[1] + (window[1] - 1) // 2
        pooled = window_shifts(clean, window, **geometry)[centre]
    else:
        total = sum(window_shifts(clean, window, **geometry))
        count = sum(window_shifts(valid.astype(jnp.float32), window, **geometry))
        safe = jnp.where(count > 0, count, jnp.ones_like(count))
        pooled = jnp.where(count > 0, total / safe, jnp.zeros_like(total))
    pooled = lax.stop_gradient(pooled)
    return pooled[..., 0] if rank == 3 else pooled
