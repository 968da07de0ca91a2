"""Depth similarity windows and the depth-aware convolution (D-Conv; paper eqs. 5-6).

Conventions: docs/method.md, D-Conv.

For output position ``p`` of a ``k×k`` conv with dilation ``d`` and strides ``s``::

    Y(p) = Σ_o W(o) · H(p, o) · X(c(p) + d·o),   H(p, o) = exp(−α · |D(c(p) + d·o) − D(c(p))|)

where ``o`` runs over the offsets centred on 0 and ``c(p)`` is the input position at the centre of
``p``'s window. Windows sit exactly where ``lax.conv_general_dilated(x, kernel, strides, padding,
rhs_dilation=dilation)`` puts them (see :mod:`drd_jax.ops.windows`). Depth is in metres; depth ≤ 0
or non-finite is invalid, and so is a zero-padded out-of-image position: any pair that involves an
invalid pixel gets ``H = 1`` exactly. No gradient flows into depth.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from drd_jax.ops.depth_conv_pallas import depth_conv_pallas
from drd_jax.ops.implementation_choice import AUTO, choose_implementation
from drd_jax.ops.windows import (
    Padding,
    as_pair,
    dynamic_shift_of_padded,
    pad_spatial,
    shift_of_padded,
    window_geometry,
)

DEFAULT_ALPHA = 8.3
IMPLEMENTATIONS = (
    AUTO,
    "fast",
    "fast_tiles",
    "fast_offsets",
    "fast_patches",
    "checkpoint",
    "reference",
    "pallas",
)


def _check_alpha(alpha):
    if isinstance(alpha, int | float) and not (alpha >= 0 and alpha < float("inf")):
        raise ValueError(f"alpha must be a finite number >= 0 (per metre), got {alpha!r}")


def _check_odd(kernel_size, name: str) -> tuple[int, int]:
    k = as_pair(kernel_size, name)
    if k[0] % 2 == 0 or k[1] % 2 == 0:
        raise ValueError(
            f"{name} must be odd in both dimensions (the window needs a centre pixel), got {k}"
        )
    return k


def depth_as_nhw1(depth, name: str = "depth"):
    """Returns ``depth`` (``(N, H, W)`` or ``(N, H, W, 1)``) as a float32 ``(N, H, W, 1)`` array.

    Raises:
      ValueError: when ``depth`` has another rank or a last dimension other than 1 for 4-D input.
    """
    depth = jnp.asarray(depth)
    if depth.ndim == 3:
        depth = depth[..., None]
    elif depth.ndim != 4 or depth.shape[-1] != 1:
        raise ValueError(f"{name} must have shape (N, H, W) or (N, H, W, 1), got {depth.shape}")
    return depth.astype(jnp.float32)


def sanitize_depth(depth):
    """Depth with every invalid pixel (≤ 0, NaN, ±inf) set to 0, plus the validity mask.

    Args:
      depth: float array of depths in metres, any shape.

    Returns:
      ``(clean, valid)``: ``clean`` has the dtype and shape of ``depth`` with invalid entries 0;
      ``valid`` is the boolean mask ``depth > 0 & isfinite(depth)``. Both carry no gradient.
    """
    depth = lax.stop_gradient(depth)
    valid = jnp.isfinite(depth) & (depth > 0)
    return jnp.where(valid, depth, jnp.zeros_like(depth)), valid


def depth_similarity(
    depth,
    kernel_size,
    *,
    alpha=DEFAULT_ALPHA,
    strides=(1, 1),
    padding: Padding = "SAME",
    dilation=(1, 1),
):
    """Depth similarity ``H(p, o) = exp(−α·|D(c(p) + d·o) − D(c(p))|)`` of every window.

    Built on :func:`jax.lax.conv_general_dilated_patches` over the depth map (exact, ``HIGHEST``
    precision). Invalid depth (≤ 0, NaN, ±inf) and zero-padded positions are invalid; any pair with
    an invalid pixel (the neighbour or the centre) gets ``H = 1`` exactly. Never NaN; no gradient.

    Args:
      depth: ``(N, H, W)`` or ``(N, H, W, 1)`` depth in metres.
      kernel_size: odd int or pair of odd ints ``(kh, kw)``.
      alpha: decay per metre of depth difference (default 8.3).
      strides, padding, dilation: window placement, as in ``lax.conv_general_dilated``.

    Returns:
      ``(N, H', W', kh·kw)`` float32 in ``[0, 1]``; the last axis lists offsets in row-major
      ``(kh, kw)`` order, the order of :func:`drd_jax.ops.window_shifts`.
    """
    _check_alpha(alpha)
    k = _check_odd(kernel_size, "kernel_size")
    depth = depth_as_nhw1(depth)
    _, s, d, pads, _ = window_geometry(
        depth.shape[1:3], k, strides=strides, padding=padding, dilation=dilation
    )
    clean, _ = sanitize_depth(depth)
    windows = lax.conv_general_dilated_patches(
        clean,
        filter_shape=k,
        window_strides=s,
        padding=pads,
        rhs_dilation=d,
        dimension_numbers=("NHWC", "OIHW", "NHWC"),
        precision=lax.Precision.HIGHEST,
    )
    centre = windows[..., (k[0] // 2) * k[1] + k[1] // 2][..., None]
    both_valid = (windows > 0) & (centre > 0)
    alpha = jnp.asarray(alpha, jnp.float32)
    sim = jnp.exp(-alpha * jnp.abs(windows - centre))
    return lax.stop_gradient(jnp.where(both_valid, sim, jnp.ones_like(sim)))


# --------------------------------------------------------------------------------------------
# Implementations. Each takes x (N,H,W,Cin), sim (N,H',W',K) float32, kernel_k (K,Cin,Cout) and a
# static config (geometry from window_geometry, precision) and returns (N,H',W',Cout) in the
# accumulation dtype. K = kh·kw offsets in row-major order.
# --------------------------------------------------------------------------------------------

# Row tiles of the 'fast' forward pass are sized so that one tile's temporaries (up to K weighted
# shifts and K products in flight) stay under this many bytes.
TILE_BYTES = 4 * 2**20


def _acc_dtype(x):
    """Accumulation dtype: float32, or x's dtype when that is wider (float64 under x64)."""
    return jnp.promote_types(x.dtype, jnp.float32)


def _matmul_last(a, b, *, precision, acc):
    """Contracts the last axis of ``a`` with the first axis of 2-D ``b``."""
    return lax.dot_general(
        a, b, (((a.ndim - 1,), (0,)), ((), ())), precision=precision, preferred_element_type=acc
    )


def _reference(x, sim, kernel_k, *, geometry, precision):
    """Materialises the (N,H',W',Cin·K) patch tensor of x, weights it by H, one contraction."""
    k, s, d, pads, _ = geometry
    patches = lax.conv_general_dilated_patches(
        x,
        filter_shape=k,
        window_strides=s,
        padding=pads,
        rhs_dilation=d,
        dimension_numbers=("NHWC", "OIHW", "NHWC"),
        precision=lax.Precision.HIGHEST,
    )
    n, ho, wo, _ = patches.shape
    patches = patches.reshape(n, ho, wo, x.shape[-1], k[0] * k[1])  # channel-major features
    acc = _acc_dtype(x)
    weighted = (patches.astype(acc) * sim[..., None, :]).astype(x.dtype)
    return jnp.einsum(
        "nhwck,kcd->nhwd", weighted, kernel_k, precision=precision, preferred_element_type=acc
    )


def _forward_offsets(x, sim, kernel_k, *, geometry, precision):
    """Σ_o (H_o ⊙ shift_o(x)) @ W_o as a loop over the K offsets (one shift alive at a time)."""
    k, s, d, pads, out = geometry
    acc = _acc_dtype(x)
    xp = pad_spatial(x, pads)

    def body(o, y):
        xs = dynamic_shift_of_padded(xp, o // k[1], o % k[1], strides=s, dilation=d, out_shape=out)
        h = lax.dynamic_index_in_dim(sim, o, axis=3, keepdims=True)
        w = lax.dynamic_index_in_dim(kernel_k, o, axis=0, keepdims=False)
        weighted = (xs.astype(acc) * h).astype(x.dtype)
        return y + _matmul_last(weighted, w, precision=precision, acc=acc)

    y0 = jnp.zeros((x.shape[0], out[0], out[1], kernel_k.shape[-1]), acc)
    return lax.fori_loop(0, k[0] * k[1], body, y0)


def _divisor_rows(ho, per_row, *, strict, budget=None) -> int:
    """The largest divisor of ``ho`` with ``rows · per_row ≤ budget`` (at least 1).

    ``budget`` defaults to TILE_BYTES.

    With ``strict``, 0 when that divisor is under half the rows that would fit (e.g. a prime H'),
    i.e. when tiling would mean many tiny tiles.
    """
    target = max(1, (TILE_BYTES if budget is None else budget) // max(per_row, 1))
    rows = max(r for r in range(1, min(ho, target) + 1) if ho % r == 0)
    return rows if not strict or 2 * rows >= min(ho, target) else 0


def _tile_rows(geometry, cin, cout, itemsize, *, strict=True) -> int:
    """Output rows per tile of the shift-and-add forward: temporaries under TILE_BYTES."""
    k, _, _, _, (ho, wo) = geometry
    per_row = wo * k[0] * k[1] * (cin + cout) * itemsize
    return _divisor_rows(ho, per_row, strict=strict)


def _forward_tiles(x, sim, kernel_k, *, geometry, precision):
    """Σ_o (H_o ⊙ shift_o(x)) @ W_o computed one (image, band of output rows) tile at a time."""
    k, s, d, pads, out = geometry
    n, _, _, cin = x.shape
    acc = _acc_dtype(x)
    rows = _tile_rows(geometry, cin, kernel_k.shape[-1], jnp.dtype(acc).itemsize, strict=False)
    bands = out[0] // rows
    xp = pad_spatial(x, pads)
    in_rows = (rows - 1) * s[0] + (k[0] - 1) * d[0] + 1

    def tile(item):
        b, band = item // bands, item % bands
        xb = lax.dynamic_slice(xp, (b, band * rows * s[0], 0, 0), (1, in_rows, xp.shape[2], cin))
        hb = lax.dynamic_slice(sim, (b, band * rows, 0, 0), (1, rows, out[1], sim.shape[-1]))
        y = None
        for o in range(k[0] * k[1]):
            xs = shift_of_padded(
                xb, divmod(o, k[1]), strides=s, dilation=d, out_shape=(rows, out[1])
            )
            weighted = (xs.astype(acc) * hb[..., o : o + 1]).astype(x.dtype)
            term = _matmul_last(weighted[0], kernel_k[o], precision=precision, acc=acc)
            y = term if y is None else y + term
        return y

    tiles = lax.map(tile, jnp.arange(n * bands))  # (N·bands, rows, W', Cout), image-major
    return tiles.reshape(n, out[0], out[1], kernel_k.shape[-1])


def _backward_offsets(x, sim, kernel_k, g, *, geometry, precision):
    """Cotangents (dx, dW) of Σ_o (H_o ⊙ shift_o(x)) @ W_o, as a loop over the K offsets.

    ``dW_o = (H_o ⊙ shift_o(x))ᵀ g``, with x kept channel-major so that this is a plain
    (Cin, P) @ (P, Cout) product, and ``dx += shiftᵀ_o(H_o ⊙ (g @ W_oᵀ))``, accumulated into a
    zero-padded buffer that is cropped at the end. Each offset makes one pass over a weighted
    shift of x, two matrix products and one accumulation.
    """
    k, s, d, pads, out = geometry
    acc = _acc_dtype(x)
    n, _, _, cin = x.shape
    cout = kernel_k.shape[-1]
    pixels = n * out[0] * out[1]
    x_cm = pad_spatial(x, pads).transpose(3, 0, 1, 2)  # (Cin, N, Hp, Wp)
    sim_km = sim.transpose(3, 0, 1, 2)  # (K, N, H', W')
    g2 = g.reshape(pixels, cout)
    span = ((out[0] - 1) * s[0] + 1, (out[1] - 1) * s[1] + 1)
    interior = ((0, 0, 0), (0, 0, s[0] - 1), (0, 0, s[1] - 1), (0, 0, 0))

    def body(o, carry):
        dxp, dw = carry
        i, j = o // k[1], o % k[1]
        h = lax.dynamic_index_in_dim(sim_km, o, axis=0, keepdims=True)  # (1, N, H', W')
        w = lax.dynamic_index_in_dim(kernel_k, o, axis=0, keepdims=False)
        xs = dynamic_shift_of_padded(
            x_cm, i, j, strides=s, dilation=d, out_shape=out, spatial_axes=(2, 3)
        )
        xs = (xs.astype(acc) * h).astype(x.dtype).reshape(cin, pixels)
        dw_o = lax.dot(xs, g2, precision=precision, preferred_element_type=acc)
        dw = lax.dynamic_update_index_in_dim(dw, dw_o, o, 0)
        dxs = lax.dot_general(
            g2, w, (((1,), (1,)), ((), ())), precision=precision, preferred_element_type=acc
        ).reshape(n, out[0], out[1], cin)
        dxs = lax.pad(dxs * h[0][..., None], jnp.zeros((), acc), interior)  # stride-1 grid
        start = (0, i * d[0], j * d[1], 0)
        region = lax.dynamic_slice(dxp, start, (n, span[0], span[1], cin))
        return lax.dynamic_update_slice(dxp, region + dxs, start), dw

    padded_shape = (n, x.shape[1] + pads[0][0] + pads[0][1], x.shape[2] + sum(pads[1]), cin)
    carry = (jnp.zeros(padded_shape, acc), jnp.zeros(kernel_k.shape, acc))
    dxp, dw = lax.fori_loop(0, k[0] * k[1], body, carry)
    dx = pad_spatial(dxp, tuple((-lo, -hi) for lo, hi in pads))  # undo the padding
    return dx.astype(x.dtype), dw.astype(kernel_k.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _fast(x, sim, kernel_k, geometry, precision, strategy):
    forward = _forward_offsets if strategy == "offsets" else _forward_tiles
    return forward(x, sim, kernel_k, geometry=geometry, precision=precision)


def _fast_fwd(x, sim, kernel_k, geometry, precision, strategy):
    return _fast(x, sim, kernel_k, geometry, precision, strategy), (x, sim, kernel_k)


def _fast_bwd(geometry, precision, strategy, residuals, g):
    x, sim, kernel_k = residuals
    options = dict(geometry=geometry, precision=precision)
    if strategy == "tiles_dw_patches":
        # dx from the offsets loop (XLA drops its unused dW carry), dW from the patch matrices:
        # two separate loops, so a caller that needs only dW (or only dx) runs only one.
        dx = _backward_offsets(x, sim, kernel_k, g, **options)[0]
        dw = _backward_patches_dw(x, sim, kernel_k, g, **options)
    else:
        dx, dw = _backward_offsets(x, sim, kernel_k, g, **options)
    return dx, jnp.zeros_like(sim), dw


_fast.defvjp(_fast_fwd, _fast_bwd)


# --------------------------------------------------------------------------------------------
# 'fast_patches': per tile, the H-weighted patch matrix (P, K·Cin) and ONE matmul with the kernel
# as (K·Cin, Cout); custom VJP that recomputes the patches (never stored between the passes).
# --------------------------------------------------------------------------------------------

# A whole-batch patch matrix up to this many bytes is built in one piece (no tile loop); larger
# ones go in bands of output rows whose temporaries stay under PATCH_TILE_BYTES.
PATCH_WHOLE_BYTES = 32 * 2**20
PATCH_TILE_BYTES = 4 * 2**20


def _patch_tiling(geometry, n, cin, cout, itemsize) -> tuple[int, int]:
    """``(images, rows)`` per tile of the patch formulation.

    The whole batch when its patch matrix fits in PATCH_WHOLE_BYTES; otherwise one image and a
    band of output rows whose temporaries (the patch matrix, its cotangent and the output row)
    stay under PATCH_TILE_BYTES.
    """
    k, _, _, _, (ho, wo) = geometry
    kk = k[0] * k[1]
    if n * ho * wo * kk * cin * itemsize <= PATCH_WHOLE_BYTES:
        return n, ho
    per_row = wo * (2 * kk * cin + cout) * itemsize
    return 1, _divisor_rows(ho, per_row, strict=False, budget=PATCH_TILE_BYTES)


class _PatchTiles:
    """Tiles (``images`` images × ``rows`` output rows) of the patch formulation on one input."""

    def __init__(self, x, sim, cout, geometry):
        k, s, d, pads, out = geometry
        self.geometry = geometry
        self.n, _, _, self.cin = x.shape
        self.kk = k[0] * k[1]
        self.acc = _acc_dtype(x)
        self.dtype = x.dtype
        self.images, self.rows = _patch_tiling(
            geometry, self.n, self.cin, cout, jnp.dtype(self.acc).itemsize
        )
        self.bands = out[0] // self.rows
        self.count = (self.n // self.images) * self.bands
        self.in_rows = (self.rows - 1) * s[0] + (k[0] - 1) * d[0] + 1
        self.xp = pad_spatial(x, pads)
        self.sim = sim

    def start(self, item):
        """(first image, first output row) of tile ``item``."""
        return (item // self.bands) * self.images, (item % self.bands) * self.rows

    def out_slice(self, a, item):
        """Tile ``item`` of an ``(N, H', W', C)`` array."""
        b, r = self.start(item)
        return lax.dynamic_slice(a, (b, r, 0, 0), (self.images, self.rows, *a.shape[2:]))

    def in_start(self, item):
        """Start of tile ``item``'s band in padded-input coordinates."""
        b, r = self.start(item)
        return (b, r * self.geometry[1][0], 0, 0)

    def patches(self, item):
        """``(pixels, K·Cin)`` matrix: concat over the offsets of ``H_o ⊙ shift_o(x)``."""
        k, s, d, _, out = self.geometry
        xb = lax.dynamic_slice(
            self.xp, self.in_start(item), (self.images, self.in_rows, self.xp.shape[2], self.cin)
        )
        hb = self.out_slice(self.sim, item)
        cols = [
            (
                shift_of_padded(
                    xb, divmod(o, k[1]), strides=s, dilation=d, out_shape=(self.rows, out[1])
                ).astype(self.acc)
                * hb[..., o : o + 1]
            ).astype(self.dtype)
            for o in range(self.kk)
        ]
        return jnp.concatenate(cols, axis=-1).reshape(-1, self.kk * self.cin)

    def loop(self, body, init):
        """``body(item, carry)`` over every tile (inline when there is a single tile)."""
        if self.count == 1:
            return body(0, init)
        return lax.fori_loop(0, self.count, body, init)


def _forward_patches(x, sim, kernel_k, *, geometry, precision):
    """Per tile: the weighted patch matrix (pixels, K·Cin) @ the kernel as (K·Cin, Cout)."""
    out = geometry[4]
    cout = kernel_k.shape[-1]
    t = _PatchTiles(x, sim, cout, geometry)
    w2 = kernel_k.reshape(t.kk * t.cin, cout)

    def tile(item):
        y = _matmul_last(t.patches(item), w2, precision=precision, acc=t.acc)
        return y.reshape(t.images, t.rows, out[1], cout)

    if t.count == 1:
        return tile(0)
    tiles = lax.map(tile, jnp.arange(t.count))  # (tiles, images, rows, W', Cout), image-major
    return tiles.reshape(t.n, out[0], out[1], cout)


def _backward_patches_dw(x, sim, kernel_k, g, *, geometry, precision):
    """``dW = Σ_tiles patchesᵀ @ g``: one (K·Cin, pixels) @ (pixels, Cout) product per tile."""
    cout = kernel_k.shape[-1]
    t = _PatchTiles(x, sim, cout, geometry)

    def body(item, dw):
        gb = t.out_slice(g, item).reshape(-1, cout)
        return dw + lax.dot_general(
            t.patches(item),
            gb,
            (((0,), (0,)), ((), ())),
            precision=precision,
            preferred_element_type=t.acc,
        )

    dw = t.loop(body, jnp.zeros((t.kk * t.cin, cout), t.acc))
    return dw.reshape(kernel_k.shape).astype(kernel_k.dtype)


def _backward_patches_dx(x, sim, kernel_k, g, *, geometry, precision):
    """``dx = Σ_o shiftᵀ_o(H_o ⊙ (g @ Wᵀ)[o-th Cin block])``, tile by tile.

    ``g @ Wᵀ`` is one (pixels, Cout) @ (Cout, K·Cin) product per tile; its K blocks, weighted by
    H, are scattered (zero-padded onto the stride-1 grid) into the tile's band of a padded dx
    buffer, which is cropped at the end.
    """
    k, s, d, pads, out = geometry
    cout = kernel_k.shape[-1]
    t = _PatchTiles(x, sim, cout, geometry)
    w2 = kernel_k.reshape(t.kk * t.cin, cout)
    wp = t.xp.shape[2]
    span = ((t.rows - 1) * s[0] + 1, (out[1] - 1) * s[1] + 1)
    zero = jnp.zeros((), t.acc)

    def body(item, dxp):
        gb = t.out_slice(g, item).reshape(-1, cout)
        gw = lax.dot_general(
            gb, w2, (((1,), (1,)), ((), ())), precision=precision, preferred_element_type=t.acc
        ).reshape(t.images, t.rows, out[1], t.kk, t.cin)
        gw = gw * t.out_slice(sim, item)[..., None]
        band = None
        for o in range(t.kk):
            i, j = divmod(o, k[1])
            lo = (i * d[0], j * d[1])
            config = (
                (0, 0, 0),
                (lo[0], t.in_rows - lo[0] - span[0], s[0] - 1),
                (lo[1], wp - lo[1] - span[1], s[1] - 1),
                (0, 0, 0),
            )
            term = lax.pad(gw[..., o, :], zero, config)
            band = term if band is None else band + term
        start = t.in_start(item)
        region = lax.dynamic_slice(dxp, start, band.shape)
        return lax.dynamic_update_slice(dxp, region + band, start)

    dxp = t.loop(body, jnp.zeros(t.xp.shape, t.acc))
    dx = pad_spatial(dxp, tuple((-lo, -hi) for lo, hi in pads))  # undo the padding
    return dx.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _patches(x, sim, kernel_k, geometry, precision):
    return _forward_patches(x, sim, kernel_k, geometry=geometry, precision=precision)


def _patches_fwd(x, sim, kernel_k, geometry, precision):
    return _patches(x, sim, kernel_k, geometry, precision), (x, sim, kernel_k)


def _patches_bwd(geometry, precision, residuals, g):
    # dx and dW are separate loops, so XLA drops dx where the caller does not use it (the image).
    x, sim, kernel_k = residuals
    options = dict(geometry=geometry, precision=precision)
    dx = _backward_patches_dx(x, sim, kernel_k, g, **options)
    dw = _backward_patches_dw(x, sim, kernel_k, g, **options)
    return dx, jnp.zeros_like(sim), dw


_patches.defvjp(_patches_fwd, _patches_bwd)


# 'fast' takes the patch formulation where it measured faster (CPU, N = 2 at 240×320, fwd+bwd
# against the plain conv, BENCHMARKS.md "D-Conv per layer"): the whole of it (forward, dx, dW) when
# the patch matrix has at most PATCH_MAX_FEATURES columns (K·Cin; conv1_1, 27 columns: 2.4× → 1.2×),
# and for dW alone (beside the row-tiled forward and a dx-only offsets loop) up to
# PATCH_DW_MAX_FEATURES columns and PATCH_DW_MAX_COUT outputs (conv1_2 64→64: 1.51× → 0.92×; conv2_1
# 64→128: 1.18× → 1.07×; not conv2_2 128→128, 1152 columns: 1.21× → 1.33×).
PATCH_MAX_FEATURES = 64
PATCH_DW_MAX_FEATURES = 576
PATCH_DW_MAX_COUT = 128


def _forward_strategy(x, kernel_k, geometry) -> str:
    """'tiles' when activations dominate the memory and a good tiling exists, else 'offsets'.

    'tiles_dw_patches' is 'tiles' with dW from patch matrices (narrow layers, see above).

    Tiling bounds the temporaries to TILE_BYTES but streams the kernel once per tile, so it pays
    off only when the activations outweigh the kernel (early layers, not fc6).
    """
    n, _, _, cin = x.shape
    k_count, _, cout = kernel_k.shape
    (ho, wo) = geometry[4]
    activations = n * (x.shape[1] * x.shape[2] * cin + ho * wo * cout)
    if activations <= k_count * cin * cout:
        return "offsets"
    rows = _tile_rows(geometry, cin, cout, jnp.dtype(_acc_dtype(x)).itemsize)
    tiles = n * (ho // rows) if rows else 0
    if tiles <= 1:
        return "offsets"
    if k_count * cin <= PATCH_DW_MAX_FEATURES and cout <= PATCH_DW_MAX_COUT:
        return "tiles_dw_patches"
    return "tiles"


def _make_fast(strategy):
    def impl(x, sim, kernel_k, *, geometry, precision):
        if strategy is None and kernel_k.shape[0] * x.shape[-1] <= PATCH_MAX_FEATURES:
            return _patches(x, sim, kernel_k, geometry, precision)
        chosen = strategy or _forward_strategy(x, kernel_k, geometry)
        return _fast(x, sim, kernel_k, geometry, precision, chosen)

    return impl


def _checkpointed(x, sim, kernel_k, *, geometry, precision):
    """The offsets loop under jax.checkpoint: autodiff'd backward, forward mode supported."""
    fn = functools.partial(_forward_offsets, geometry=geometry, precision=precision)
    return jax.checkpoint(fn)(x, sim, kernel_k)


_IMPLS = {
    "fast": _make_fast(None),
    "fast_tiles": _make_fast("tiles"),
    "fast_offsets": _make_fast("offsets"),
    "fast_patches": lambda x, sim, kernel_k, *, geometry, precision: _patches(
        x, sim, kernel_k, geometry, precision
    ),
    "checkpoint": _checkpointed,
    "reference": _reference,
    "pallas": depth_conv_pallas,
}


def _validate(x, depth, kernel):
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D (N, H, W, Cin), got shape {x.shape}")
    if kernel.ndim != 4:
        raise ValueError(f"kernel must be 4-D (kh, kw, Cin, Cout) HWIO, got shape {kernel.shape}")
    depth = depth_as_nhw1(depth)
    if depth.shape[:3] != x.shape[:3]:
        raise ValueError(
            f"depth (N, H, W) = {depth.shape[:3]} must match x (N, H, W) = {x.shape[:3]}"
        )
    if kernel.shape[2] != x.shape[3]:
        raise ValueError(
            f"kernel input channels (kernel.shape[2] = {kernel.shape[2]}) must equal "
            f"x channels (x.shape[3] = {x.shape[3]})"
        )
    for name, a in (("x", x), ("kernel", kernel)):
        if not jnp.issubdtype(a.dtype, jnp.floating):
            raise ValueError(f"{name} must have a floating dtype, got {a.dtype}")
    if x.dtype != kernel.dtype:
        raise ValueError(
            f"x and kernel must have the same dtype, got x {x.dtype} and kernel {kernel.dtype}"
        )
    _check_odd(kernel.shape[:2], "kernel spatial size (kernel.shape[:2])")
    return depth


def _is_empty(x_shape, kernel_shape, out_hw) -> bool:
    """True when there is nothing to compute: no images, no output pixels, or Cin or Cout 0.

    Args:
      x_shape: ``(N, H, W, Cin)``; kernel_shape: ``(kh, kw, Cin, Cout)``; out_hw: ``(H', W')``.
    """
    return 0 in (x_shape[0], x_shape[3], kernel_shape[3], *out_hw)


def _empty_conv(x, kernel, out_hw):
    """The ``(N, H', W', Cout)`` zeros that ``lax.conv_general_dilated`` gives on empty input.

    An empty sum is 0 (Cin = 0), and an empty array holds nothing (N, H', W' or Cout = 0). A
    constant: its derivatives in ``x`` and ``kernel`` are zeros of their shapes.
    """
    return jnp.zeros((x.shape[0], *out_hw, kernel.shape[-1]), x.dtype)


def depth_aware_conv(
    x,
    depth,
    kernel,
    *,
    alpha=DEFAULT_ALPHA,
    strides=(1, 1),
    padding: Padding = "SAME",
    dilation=(1, 1),
    implementation: str = "fast",
    precision=None,
):
    """Depth-aware convolution ``Y(p) = Σ_o W(o)·H(p,o)·X(c(p) + d·o)`` (paper eq. 5), no bias.

    Output size and window placement are exactly those of ``lax.conv_general_dilated(x, kernel,
    strides, padding, rhs_dilation=dilation, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))``; X is
    zero-padded (padded neighbours contribute nothing). With constant depth (``H ≡ 1``) or a 1×1
    kernel it is that plain conv.

    Implementations (same numbers up to float rounding):
      * ``'fast'`` (default): never materialises the patch tensor of ``x``. Forward: the sum over
        the ``kh·kw`` strided shifts of the zero-padded ``x``, each weighted by ``H`` and
        contracted with its ``W(o)``, computed either in bands of output rows (``'tiles'``:
        temporaries bounded by :data:`TILE_BYTES`; chosen when the activations outweigh the
        kernel) or as a loop over the offsets (``'offsets'``: one shift alive at a time; chosen
        for kernel-heavy layers such as fc6). Backward: a hand-written VJP (``jax.custom_vjp``)
        that loops over the offsets and recomputes each shift from ``x`` and ``H``, so nothing but
        ``x``, ``H`` and the kernel is kept between the passes. Supports ``jit``, ``vmap`` and
        reverse mode (``jax.grad``, ``jax.vjp``; higher orders differentiate the hand-written
        backward as ordinary JAX code). **Not** forward mode (``jax.jvp``, ``jax.jacfwd``): use
        ``'checkpoint'`` for that.
        For narrow layers ``'fast'`` uses patch matrices where they measured faster: the whole
        ``'fast_patches'`` path when ``kh·kw·Cin ≤`` :data:`PATCH_MAX_FEATURES` (e.g. the RGB
        input layer), and dW from patch matrices (beside the row-tiled forward and an offsets-loop
        dx) when ``kh·kw·Cin ≤`` :data:`PATCH_DW_MAX_FEATURES` and ``Cout ≤``
        :data:`PATCH_DW_MAX_COUT`.
      * ``'fast_tiles'`` / ``'fast_offsets'``: ``'fast'`` with its forward strategy forced (and
        the offsets-loop backward for dx and dW).
      * ``'fast_patches'``: per tile (the whole batch when its patch matrix is at most
        :data:`PATCH_WHOLE_BYTES`, else bands of output rows under :data:`PATCH_TILE_BYTES`), the
        ``(pixels, kh·kw·Cin)`` matrix of ``H``-weighted shifts of ``x`` times the kernel as
        ``(kh·kw·Cin, Cout)``, one matmul. Hand-written VJP (reverse mode only) that recomputes
        the patches: ``dW = Σ_tiles patchesᵀ·g``; ``dx`` scatters ``H ⊙ (g·Wᵀ)`` back over the
        offsets, in a separate loop, so it costs nothing when only dW is used.
      * ``'checkpoint'``: the offsets loop under ``jax.checkpoint``, differentiated by JAX (the
        backward pass recomputes the shifts); supports forward and reverse mode; slower backward.
      * ``'reference'``: materialises the ``(N, H', W', kh·kw·Cin)`` patch tensor of ``x``,
        multiplies by ``H``, one contraction. Simple and memory-hungry; kept for tests.
      * ``'auto'``: the implementation measured fastest on the platform the call is traced on
        (``jax.default_backend()``), from the table in :mod:`drd_jax.ops.implementation_choice`;
        ``'fast'`` everywhere until a GPU has measured it.
      * ``'pallas'``: fused Pallas kernels (:mod:`drd_jax.ops.depth_conv_pallas`): an implicit
        GEMM over the offsets × ``Cin`` blocks per tile of output pixels, f32 accumulation, never
        the patch tensor nor K passes over memory; dx and dW are Pallas kernels too (custom VJP,
        first-order reverse mode only). Triton on GPU; on CPU the same kernels in Pallas
        interpret mode (slow: for tests). ``x`` is zero-padded once outside the kernel (one
        copy).

    Args:
      x: ``(N, H, W, Cin)`` features, float32 or bfloat16.
      depth: ``(N, H, W)`` or ``(N, H, W, 1)`` depth in metres (invalid: ≤ 0 or non-finite).
      kernel: ``(kh, kw, Cin, Cout)`` HWIO weights, same dtype as ``x``; ``kh``, ``kw`` odd.
      alpha: decay per metre of depth difference (default 8.3).
      strides: int or ``(sh, sw)``.
      padding: ``'SAME'``, ``'VALID'`` or ``((lo, hi), (lo, hi))``.
      dilation: int or ``(dh, dw)``; depth offsets use the same dilation.
      implementation: one of :data:`IMPLEMENTATIONS` (see above).
      precision: optional ``lax.Precision`` for the contractions (``None``: backend default, as
        for ``lax.conv_general_dilated``).

    Returns:
      ``(N, H', W', Cout)`` in ``x``'s dtype. ``H`` is computed in float32 and the contractions
      accumulate in float32. No gradient flows into ``depth``. Zero-size input (``N``, ``Cin`` or
      ``Cout`` 0, or an empty ``H' × W'``) gives zeros of that shape, as ``lax`` does.

    Raises:
      ValueError: wrong ranks, mismatched ``N/H/W`` between ``x`` and ``depth``, ``Cin`` mismatch,
        dtype mismatch, even kernel sizes, unknown ``padding`` or ``implementation``.
    """
    if implementation == AUTO:
        implementation = choose_implementation()
    if implementation not in _IMPLS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    x = jnp.asarray(x)
    kernel = jnp.asarray(kernel)
    depth = _validate(x, depth, kernel)
    _check_alpha(alpha)
    geometry = window_geometry(
        x.shape[1:3], kernel.shape[:2], strides=strides, padding=padding, dilation=dilation
    )
    if _is_empty(x.shape, kernel.shape, geometry[4]):
        return _empty_conv(x, kernel, geometry[4])
    return _depth_aware_conv_jit(
        x,
        depth,
        kernel,
        jnp.asarray(alpha, jnp.float32),
        geometry=geometry,
        implementation=implementation,
        precision=precision,
    )


@functools.partial(jax.jit, static_argnames=("geometry", "implementation", "precision"))
def _depth_aware_conv_jit(x, depth, kernel, alpha, *, geometry, implementation, precision):
    """The validated op, compiled once per shape and configuration.

    Under an outer ``jit`` this is inlined; called eagerly it avoids re-tracing the offset loops
    and the custom VJP on every call. ``alpha`` is traced, so sweeping it does not recompile.
    """
    k, s, d, pads, _ = geometry
    kh, kw, cin, cout = kernel.shape
    sim = depth_similarity(depth, k, alpha=alpha, strides=s, padding=pads, dilation=d)
    kernel_k = kernel.reshape(kh * kw, cin, cout)
    y = _IMPLS[implementation](x, sim, kernel_k, geometry=geometry, precision=precision)
    return y.astype(x.dtype)
