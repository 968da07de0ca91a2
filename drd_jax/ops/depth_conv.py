"""Depth similarity windows and the depth-aware convolution (D-Conv) of SPEC §1.

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

from drd_jax.ops.windows import (
    Padding,
    as_pair,
    dynamic_shift_of_padded,
    pad_spatial,
    shift_of_padded,
    window_geometry,
)

DEFAULT_ALPHA = 8.3
IMPLEMENTATIONS = ("fast", "fast_tiles", "fast_offsets", "checkpoint", "reference")


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
      alpha: decay per metre of depth difference (SPEC: 8.3).
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


def _tile_rows(geometry, cin, cout, itemsize, *, strict=True) -> int:
    """Output rows per tile: the largest divisor of H' whose tile fits in TILE_BYTES.

    With ``strict``, 0 when that divisor is under half the rows that would fit (e.g. a prime H'),
    i.e. when tiling would mean many tiny tiles.
    """
    k, _, _, _, (ho, wo) = geometry
    per_row = wo * k[0] * k[1] * (cin + cout) * itemsize
    target = max(1, TILE_BYTES // max(per_row, 1))
    rows = max(r for r in range(1, min(ho, target) + 1) if ho % r == 0)
    return rows if not strict or 2 * rows >= min(ho, target) else 0


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
    forward = _forward_tiles if strategy == "tiles" else _forward_offsets
    return forward(x, sim, kernel_k, geometry=geometry, precision=precision)


def _fast_fwd(x, sim, kernel_k, geometry, precision, strategy):
    return _fast(x, sim, kernel_k, geometry, precision, strategy), (x, sim, kernel_k)


def _fast_bwd(geometry, precision, strategy, residuals, g):
    del strategy
    x, sim, kernel_k = residuals
    dx, dw = _backward_offsets(x, sim, kernel_k, g, geometry=geometry, precision=precision)
    return dx, jnp.zeros_like(sim), dw


_fast.defvjp(_fast_fwd, _fast_bwd)


def _forward_strategy(x, kernel_k, geometry) -> str:
    """'tiles' when activations dominate the memory and a good tiling exists, else 'offsets'.

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
    return "tiles" if tiles > 1 else "offsets"


def _make_fast(strategy):
    def impl(x, sim, kernel_k, *, geometry, precision):
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
    "checkpoint": _checkpointed,
    "reference": _reference,
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
    """Depth-aware convolution ``Y(p) = Σ_o W(o)·H(p,o)·X(c(p) + d·o)`` (SPEC §1), no bias.

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
      * ``'fast_tiles'`` / ``'fast_offsets'``: ``'fast'`` with its forward strategy forced.
      * ``'checkpoint'``: the offsets loop under ``jax.checkpoint``, differentiated by JAX (the
        backward pass recomputes the shifts); supports forward and reverse mode; slower backward.
      * ``'reference'``: materialises the ``(N, H', W', kh·kw·Cin)`` patch tensor of ``x``,
        multiplies by ``H``, one contraction. Simple and memory-hungry; kept for tests.

    Args:
      x: ``(N, H, W, Cin)`` features, float32 or bfloat16.
      depth: ``(N, H, W)`` or ``(N, H, W, 1)`` depth in metres (invalid: ≤ 0 or non-finite).
      kernel: ``(kh, kw, Cin, Cout)`` HWIO weights, same dtype as ``x``; ``kh``, ``kw`` odd.
      alpha: decay per metre of depth difference (SPEC: 8.3).
      strides: int or ``(sh, sw)``.
      padding: ``'SAME'``, ``'VALID'`` or ``((lo, hi), (lo, hi))``.
      dilation: int or ``(dh, dw)``; depth offsets use the same dilation.
      implementation: one of :data:`IMPLEMENTATIONS` (see above).
      precision: optional ``lax.Precision`` for the contractions (``None``: backend default, as
        for ``lax.conv_general_dilated``).

    Returns:
      ``(N, H', W', Cout)`` in ``x``'s dtype. ``H`` is computed in float32 and the contractions
      accumulate in float32. No gradient flows into ``depth``.

    Raises:
      ValueError: wrong ranks, mismatched ``N/H/W`` between ``x`` and ``depth``, ``Cin`` mismatch,
        dtype mismatch, even kernel sizes, unknown ``padding`` or ``implementation``.
    """
    if implementation not in _IMPLS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    x = jnp.asarray(x)
    kernel = jnp.asarray(kernel)
    depth = _validate(x, depth, kernel)
    _check_alpha(alpha)
    geometry = window_geometry(
        x.shape[1:3], kernel.shape[:2], strides=strides, padding=padding, dilation=dilation
    )
    if 0 in geometry[4]:  # an empty output, as lax gives when the window exceeds the input
        return jnp.zeros((x.shape[0], *geometry[4], kernel.shape[-1]), x.dtype)
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
