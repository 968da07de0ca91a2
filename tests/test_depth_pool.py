"""Tests for drd_jax.ops.depth_pool against independent NumPy loops and flax pooling."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from drd_jax.ops import depth_aware_avg_pool, pool_depth


def dpool(**options):
    """The depth-aware pool under jit (one compile per configuration keeps the tests fast)."""
    return jax.jit(lambda x, depth: depth_aware_avg_pool(x, depth, **options))


ALPHA = 8.3
ASYM = ((2, 0), (0, 1))


def np_pads(size, k, s, padding):
    """(lo, out) along one axis, by hand ('SAME'/'VALID' as lax.reduce_window, or a pair)."""
    if padding == "SAME":
        out = -(-size // s)
        total = max((out - 1) * s + k - size, 0)
        return total // 2, out
    if padding == "VALID":
        return 0, max(0, (size - k) // s + 1)
    lo, hi = padding
    return lo, max(0, (size + lo + hi - k) // s + 1)


def np_windows(shape_hw, k, s, padding):
    """Yields (py, px, [(r, c, i, j) for every tap]) with input coordinates (may be outside)."""
    axes = [
        np_pads(shape_hw[a], k[a], s[a], padding if isinstance(padding, str) else padding[a])
        for a in range(2)
    ]
    (lo_r, out_r), (lo_c, out_c) = axes
    for py in range(out_r):
        for px in range(out_c):
            taps = [
                (py * s[0] - lo_r + i, px * s[1] - lo_c + j, i, j)
                for i in range(k[0])
                for j in range(k[1])
            ]
            yield py, px, taps
    return out_r, out_c


def np_out_shape(shape_hw, k, s, padding):
    return tuple(
        np_pads(shape_hw[a], k[a], s[a], padding if isinstance(padding, str) else padding[a])[1]
        for a in range(2)
    )


def np_valid(dep, r, c):
    h, w = dep.shape
    return 0 <= r < h and 0 <= c < w and bool(np.isfinite(dep[r, c]) and dep[r, c] > 0)


def np_depth_aware_pool(x, depth, k, s, padding, alpha):
    n_img, h, w, ch = x.shape
    out = np.zeros((n_img, *np_out_shape((h, w), k, s, padding), ch))
    for n in range(n_img):
        dep = depth[n]
        for py, px, taps in np_windows((h, w), k, s, padding):
            cr, cc = taps[(k[0] // 2) * k[1] + k[1] // 2][:2]
            num, den = np.zeros(ch), 0.0
            for r, c, _, _ in taps:
                if not (0 <= r < h and 0 <= c < w):
                    continue  # padding counts in neither sum
                wt = 1.0
                if np_valid(dep, r, c) and np_valid(dep, cr, cc):
                    wt = np.exp(-alpha * abs(float(dep[r, c]) - float(dep[cr, cc])))
                num += wt * x[n, r, c]
                den += wt
            out[n, py, px] = num / den if den > 0 else 0.0
    return out


def np_pool_depth(depth, k, s, padding, method):
    n_img, h, w = depth.shape
    out = np.zeros((n_img, *np_out_shape((h, w), k, s, padding)))
    for n in range(n_img):
        dep = depth[n]
        for py, px, taps in np_windows((h, w), k, s, padding):
            if method == "nearest":
                r, c, _, _ = taps[((k[0] - 1) // 2) * k[1] + (k[1] - 1) // 2]
                out[n, py, px] = dep[r, c] if np_valid(dep, r, c) else 0.0
            else:
                vals = [float(dep[r, c]) for r, c, _, _ in taps if np_valid(dep, r, c)]
                out[n, py, px] = np.mean(vals) if vals else 0.0
    return out


def make_depth(rng, n, h, w):
    depth = rng.choice([1.0, 1.1, 2.5], size=(n, h, w)) + rng.uniform(0, 0.1, size=(n, h, w))
    flat = depth.reshape(-1)
    idx = rng.permutation(flat.size)[: flat.size // 5]
    bad = np.array([0.0, -2.0, np.nan, np.inf, -np.inf])
    flat[idx] = bad[np.arange(idx.size) % bad.size]
    return depth.astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Depth-aware average pooling
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "window, strides, padding",
    [(3, 1, "SAME"), (3, 2, "SAME"), (3, 2, "VALID"), (3, 1, ASYM), ((3, 5), (2, 1), "SAME")],
)
def test_depth_aware_pool_matches_numpy(window, strides, padding):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 8, 3)).astype(np.float32)
    depth = make_depth(rng, 2, 7, 8)
    k = (window, window) if isinstance(window, int) else window
    s = (strides, strides) if isinstance(strides, int) else strides
    y = dpool(window=k, strides=s, padding=padding)(x, depth)
    expected = np_depth_aware_pool(x, depth, k, s, padding, ALPHA)
    assert y.shape == expected.shape and y.dtype == jnp.float32
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "strides, padding", [(1, "SAME"), (2, "SAME"), (2, "VALID"), (1, ((1, 1), (1, 1)))]
)
def test_constant_depth_equals_avg_pool_without_padding(strides, padding):
    x = np.random.default_rng(1).normal(size=(2, 7, 9, 4)).astype(np.float32)
    depth = np.full((2, 7, 9, 1), 3.0, np.float32)
    y = dpool(window=3, strides=strides, padding=padding)(x, depth)
    expected = nn.avg_pool(
        x, (3, 3), strides=(strides, strides), padding=padding, count_include_pad=False
    )
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)


def test_depth_aware_pool_gradient_is_the_true_one():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1, 4, 5, 2))
    depth = make_depth(rng, 1, 4, 5)
    with jax.enable_x64(True):
        x64 = jnp.asarray(x, jnp.float64)

        pool = dpool(window=3, strides=(2, 1), alpha=2.0)

        def f(a):
            return pool(a, depth)

        check_grads(f, (x64,), order=1, modes=("rev", "fwd"), atol=1e-6, rtol=1e-6)
        # dL/dx(q) = sum_p ct(p) w(p, q) / sum_o w(p, o): the weights appear in the backward pass.
        y, pullback = jax.vjp(f, x64)
        ct = rng.normal(size=y.shape)
        (dx,) = pullback(jnp.asarray(ct))
    expected = np.zeros_like(x)
    for r in range(4):
        for col in range(5):
            e = np.zeros_like(x)
            e[0, r, col, :] = 1.0  # channels are independent: all at once
            jac_column = np_depth_aware_pool(e, depth, (3, 3), (2, 1), "SAME", 2.0)
            expected[0, r, col] = np.sum(jac_column * ct, axis=(0, 1, 2))
    np.testing.assert_allclose(dx, expected, rtol=1e-5, atol=1e-8)  # H is float32


def test_depth_aware_pool_has_no_depth_gradient_and_never_nan():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1, 6, 6, 2)).astype(np.float32)
    depth = np.abs(make_depth(rng, 1, 6, 6))
    depth = np.nan_to_num(depth, nan=1.0, posinf=1.0) + 0.5

    def loss(d):
        return jnp.sum(depth_aware_avg_pool(x, d, alpha=1.0) ** 2)

    g = jax.jit(jax.grad(loss))(jnp.asarray(depth))
    np.testing.assert_array_equal(g, np.zeros_like(depth))
    weird = np.full((1, 6, 6), np.nan, np.float32)
    y = dpool(padding=((3, 3), (3, 3)), strides=2)(x, weird)
    assert np.all(np.isfinite(np.asarray(y)))
    assert np.all(np.asarray(y)[:, 0, 0] == 0)  # a window of padding only


def test_depth_aware_pool_bfloat16_and_jit():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 6, 7, 3)).astype(np.float32)
    depth = make_depth(rng, 2, 6, 7)
    pool = dpool(strides=2)
    y32 = pool(x, depth)
    y16 = pool(jnp.asarray(x, jnp.bfloat16), depth)
    assert y16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y16, np.float32), y32, atol=0.05)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((np.zeros((4, 4, 2)), np.ones((1, 4, 4))), {}, "x must be 4-D"),
        ((np.zeros((1, 4, 4, 2)), np.ones((1, 4, 5))), {}, r"depth \(N, H, W\)"),
        ((np.zeros((1, 4, 4, 2)), np.ones((1, 4, 4, 2))), {}, "depth must have shape"),
        ((np.zeros((1, 4, 4, 2)), np.ones((1, 4, 4))), {"window": 2}, "window must be odd"),
        ((np.zeros((1, 4, 4, 2)), np.ones((1, 4, 4))), {"padding": "FULL"}, "padding must be"),
        ((np.zeros((1, 4, 4, 2), np.int32), np.ones((1, 4, 4))), {}, "floating dtype"),
    ],
)
def test_depth_aware_pool_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        depth_aware_avg_pool(*args, **kwargs)


# ------------------------------------------------------------------------------------------------
# pool_depth
# ------------------------------------------------------------------------------------------------

POOL_CASES = [
    (3, 2, ((1, 1), (1, 1))),
    (3, 1, ((1, 1), (1, 1))),
    (2, 2, "VALID"),
    (3, 2, "SAME"),
    (2, 2, "SAME"),
    (3, 3, "VALID"),
    ((3, 2), (2, 1), ((0, 2), (1, 0))),
]


@pytest.mark.parametrize("window, strides, padding", POOL_CASES)
@pytest.mark.parametrize("method", ["valid_mean", "nearest"])
def test_pool_depth_matches_numpy_and_max_pool_size(window, strides, padding, method):
    rng = np.random.default_rng(5)
    depth = make_depth(rng, 2, 9, 10)
    k = (window, window) if isinstance(window, int) else window
    s = (strides, strides) if isinstance(strides, int) else strides
    out = jax.jit(lambda d: pool_depth(d, window=k, strides=s, padding=padding, method=method))(
        depth
    )
    ref_size = nn.max_pool(np.zeros((2, 9, 10, 1), np.float32), k, strides=s, padding=padding)
    assert out.shape == ref_size.shape[:3] and out.dtype == jnp.float32
    np.testing.assert_allclose(out, np_pool_depth(depth, k, s, padding, method), rtol=1e-6)
    assert np.all(np.isfinite(np.asarray(out)))


def test_pool_depth_keeps_rank_and_defaults_to_pool1():
    depth = make_depth(np.random.default_rng(6), 1, 8, 6)
    out3 = jax.jit(pool_depth)(depth)
    out4 = jax.jit(pool_depth)(depth[..., None])
    assert out3.shape == (1, 4, 3) and out4.shape == (1, 4, 3, 1)
    np.testing.assert_array_equal(out3, out4[..., 0])


def test_pool_depth_all_invalid_gives_zero_and_constant_is_kept():
    bad = np.full((1, 4, 4), np.nan, np.float32)
    bad[0, 0, 0] = -1.0
    assert np.all(np.asarray(jax.jit(pool_depth)(bad)) == 0)
    const = np.full((1, 5, 5), 2.0, np.float32)
    np.testing.assert_allclose(
        jax.jit(pool_depth)(const), np.full((1, 3, 3), 2.0)
    )  # padding not counted


def test_pool_depth_has_no_gradient_and_jits():
    depth = jnp.asarray(np.random.default_rng(7).uniform(1, 2, size=(1, 6, 6)), jnp.float32)
    g = jax.jit(jax.grad(lambda d: jnp.sum(pool_depth(d))))(depth)
    np.testing.assert_array_equal(g, np.zeros_like(depth))
    np.testing.assert_array_equal(jax.jit(pool_depth)(depth), pool_depth(depth))


def test_pool_depth_errors():
    with pytest.raises(ValueError, match="method must be one of"):
        pool_depth(np.ones((1, 4, 4)), method="max")
    with pytest.raises(ValueError, match="depth must have shape"):
        pool_depth(np.ones((4, 4)))
    with pytest.raises(ValueError, match="window must be"):
        pool_depth(np.ones((1, 4, 4)), window=0)
