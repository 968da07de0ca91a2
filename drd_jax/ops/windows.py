"""Sliding-window geometry shared by every windowed op in the package (docs/method.md, D-Conv).

One place decides how a ``k×k`` window with strides ``s`` and dilation ``d`` sits on an ``H×W``
input: :func:`resolve_padding` turns ``'SAME'`` / ``'VALID'`` / explicit pairs into explicit
``((lo, hi), (lo, hi))`` exactly as :func:`jax.lax.conv_general_dilated` (and ``nn.max_pool``) do,
:func:`output_size` gives the output length, and :func:`window_shifts` returns, for every offset of
the window, the strided view of the zero-padded input that offset reads. The output position
``p`` reads input row ``p·s − lo + i·d`` for window row ``i`` (likewise for columns); offsets are
listed in row-major ``(kh, kw)`` order, the order :func:`jax.lax.conv_general_dilated_patches` uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from jax import lax

Padding = str | Sequence[tuple[int, int]]


def as_pair(value, name: str, *, minimum: int = 1) -> tuple[int, int]:
    """Normalises an int or a pair of ints to a ``(rows, cols)`` tuple of Python ints ≥ ``minimum``.

    Raises:
      ValueError: naming ``name`` when ``value`` is not an int or a pair of ints ≥ ``minimum``.
    """
    if isinstance(value, int | jnp.integer) and not isinstance(value, bool):
        pair = (int(value), int(value))
    else:
        try:
            pair = tuple(value)
        except TypeError:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}") from None
        if len(pair) != 2 or not all(
            isinstance(v, int | jnp.integer) and not isinstance(v, bool) for v in pair
        ):
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        pair = (int(pair[0]), int(pair[1]))
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return pair


def effective_kernel_size(kernel_size, dilation) -> tuple[int, int]:
    """Extent in input pixels of a dilated window: ``(k − 1)·d + 1`` per spatial axis."""
    k = as_pair(kernel_size, "kernel_size")
    d = as_pair(dilation, "dilation")
    return ((k[0] - 1) * d[0] + 1, (k[1] - 1) * d[1] + 1)


def resolve_padding(
    padding: Padding,
    spatial_shape: Sequence[int],
    kernel_size,
    *,
    strides=(1, 1),
    dilation=(1, 1),
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Explicit ``((lo_h, hi_h), (lo_w, hi_w))`` zero padding, in input pixels.

    ``'SAME'`` and ``'VALID'`` (any case) follow :func:`jax.lax.padtype_to_pads` applied to the
    dilated (effective) kernel, which is what ``lax.conv_general_dilated(..., rhs_dilation=d)`` and
    ``flax.linen.max_pool`` do; ``'SAME'`` gives ``ceil(H / s)`` outputs and puts the odd pixel of
    padding at the high end. Explicit pairs are returned as Python ints (negative values crop, as in
    ``lax``).

    Args:
      padding: ``'SAME'``, ``'VALID'`` or a pair of ``(lo, hi)`` int pairs (rows, then columns).
      spatial_shape: ``(H, W)`` of the input.
      kernel_size: int or ``(kh, kw)``.
      strides: int or ``(sh, sw)``.
      dilation: int or ``(dh, dw)``; the spacing between window taps, in input pixels.

    Raises:
      ValueError: for an unknown padding string or a malformed explicit padding.
    """
    strides = as_pair(strides, "strides")
    eff = effective_kernel_size(kernel_size, dilation)
    if isinstance(padding, str):
        mode = padding.upper()
        if mode not in ("SAME", "VALID"):
            raise ValueError(
                f"padding must be 'SAME', 'VALID' or ((lo, hi), (lo, hi)), got {padding!r}"
            )
        pads = lax.padtype_to_pads(tuple(spatial_shape), eff, strides, mode)
        return tuple((int(lo), int(hi)) for lo, hi in pads)  # type: ignore[return-value]
    try:
        pads = tuple(tuple(p) for p in padding)
    except TypeError:
        pads = ()
    if len(pads) != 2 or not all(
        len(p) == 2 and all(isinstance(v, int | jnp.integer) and not isinstance(v, bool) for v in p)
        for p in pads
    ):
        raise ValueError(
            f"padding must be 'SAME', 'VALID' or ((lo, hi), (lo, hi)) of ints, got {padding!r}"
        )
    return tuple((int(lo), int(hi)) for lo, hi in pads)  # type: ignore[return-value]


def output_size(in_size: int, kernel_size: int, stride: int, dilation: int, pad: tuple[int, int]):
    """Output length along one axis: ``max(0, ⌊(in + lo + hi − eff) / s⌋ + 1)``, as in ``lax``."""
    eff = (kernel_size - 1) * dilation + 1
    return max(0, (in_size + pad[0] + pad[1] - eff) // stride + 1)


def window_geometry(spatial_shape, kernel_size, *, strides, padding, dilation):
    """Normalised ``(kernel, strides, dilation, pads, out_shape)`` of a window on an input.

    All entries are pairs of Python ints; ``out_shape`` is ``(H', W')``.
    """
    k = as_pair(kernel_size, "kernel_size")
    s = as_pair(strides, "strides")
    d = as_pair(dilation, "dilation")
    pads = resolve_padding(padding, spatial_shape, k, strides=s, dilation=d)
    out = tuple(output_size(spatial_shape[a], k[a], s[a], d[a], pads[a]) for a in range(2))
    return k, s, d, pads, out


def pad_spatial(x, pads, value=0):
    """Pads (or, for negative entries, crops) axes 1 and 2 of an ``(N, H, W, C)`` array."""
    config = [(0, 0, 0), (pads[0][0], pads[0][1], 0), (pads[1][0], pads[1][1], 0), (0, 0, 0)]
    return lax.pad(x, jnp.asarray(value, x.dtype), config)


def shift_of_padded(xp, offset, *, strides, dilation, out_shape):
    """The ``(N, H', W', C)`` view of padded ``xp`` read by window tap ``offset = (i, j)``.

    Output position ``p`` gets ``xp[p·s + offset·d]``; ``offset`` counts from the window's top-left.
    """
    n, _, _, c = xp.shape
    if out_shape[0] == 0 or out_shape[1] == 0:
        return jnp.zeros((n, out_shape[0], out_shape[1], c), xp.dtype)
    start = (0, offset[0] * dilation[0], offset[1] * dilation[1], 0)
    limit = (
        n,
        start[1] + (out_shape[0] - 1) * strides[0] + 1,
        start[2] + (out_shape[1] - 1) * strides[1] + 1,
        c,
    )
    return lax.slice(xp, start, limit, (1, strides[0], strides[1], 1))


def dynamic_shift_of_padded(xp, i, j, *, strides, dilation, out_shape, spatial_axes=(1, 2)):
    """Like :func:`shift_of_padded` for a traced window tap ``(i, j)`` (e.g. a loop index).

    ``spatial_axes`` names the (row, column) axes of ``xp``, so channel-major layouts such as
    ``(C, N, H, W)`` (``spatial_axes=(2, 3)``) work too. Strides are applied after a dynamic slice.
    """
    ra, ca = spatial_axes
    start = [0] * xp.ndim
    start[ra] = i * dilation[0]
    start[ca] = j * dilation[1]
    size = list(xp.shape)
    size[ra] = (out_shape[0] - 1) * strides[0] + 1
    size[ca] = (out_shape[1] - 1) * strides[1] + 1
    view = lax.dynamic_slice(xp, start, size)
    if tuple(strides) != (1, 1):
        step = [1] * xp.ndim
        step[ra], step[ca] = strides
        view = lax.slice(view, [0] * xp.ndim, view.shape, step)
    return view


def window_shifts(
    x, kernel_size, *, strides=(1, 1), padding: Padding = "SAME", dilation=(1, 1)
) -> tuple:
    """The ``kh·kw`` strided, shifted views of the zero-padded input, one per window offset.

    ``shifts[i * kw + j][n, y, x, c] == x_padded[n, y·sh + i·dh, x·sw + j·dw, c]``, so that
    ``stack(shifts, axis=-1)`` (channel-minor) is the patch tensor of ``x``. Offsets are row-major
    ``(kh, kw)``, the order of :func:`depth_similarity`'s last axis. Nothing is stacked here: under
    ``jit`` each view is a strided slice that XLA fuses into its consumer.

    Args:
      x: ``(N, H, W, C)`` array (any dtype; padding value is 0).
      kernel_size: int or ``(kh, kw)`` window size (even sizes allowed here).
      strides: int or ``(sh, sw)``.
      padding: ``'SAME'``, ``'VALID'`` or ``((lo, hi), (lo, hi))``, as in
        ``lax.conv_general_dilated``.
      dilation: int or ``(dh, dw)``.

    Returns:
      A tuple of ``kh·kw`` arrays of shape ``(N, H', W', C)``, dtype of ``x``.
    """
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D (N, H, W, C), got shape {x.shape}")
    k, s, d, pads, out = window_geometry(
        x.shape[1:3], kernel_size, strides=strides, padding=padding, dilation=dilation
    )
    xp = pad_spatial(x, pads)
    return tuple(
        shift_of_padded(xp, (i, j), strides=s, dilation=d, out_shape=out)
        for i in range(k[0])
        for j in range(k[1])
    )
