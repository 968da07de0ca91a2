"""Tests for drd_jax.ops.depth_conv and drd_jax.ops.windows against an independent NumPy loop.

The NumPy oracle below follows docs/method.md (D-Conv) literally: explicit Python loops over output
positions and window offsets, its own padding arithmetic (the 'SAME'/'VALID' rules of
lax.conv_general_dilated written out by hand), its own validity rule. It calls nothing from drd_jax.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

from drd_jax.ops import (
    IMPLEMENTATIONS,
    depth_aware_conv,
    depth_conv,
    depth_similarity,
    resolve_padding,
    window_shifts,
)

pytestmark = pytest.mark.usefixtures("fast_compile")  # compile-bound: see conftest

ALPHA = 8.3
DN = ("NHWC", "HWIO", "NHWC")


# ------------------------------------------------------------------------------------------------
# Independent NumPy oracle
# ------------------------------------------------------------------------------------------------


def np_pads(size, k, s, d, padding):
    """(lo, hi, out) along one axis, by hand."""
    eff = (k - 1) * d + 1
    if padding == "SAME":
        out = -(-size // s)
        total = max((out - 1) * s + eff - size, 0)
        return total // 2, total - total // 2, out
    if padding == "VALID":
        return 0, 0, max(0, (size - eff) // s + 1)
    lo, hi = padding
    return lo, hi, max(0, (size + lo + hi - eff) // s + 1)


def np_is_valid(depth, r, c):
    h, w = depth.shape
    if not (0 <= r < h and 0 <= c < w):
        return False
    v = depth[r, c]
    return bool(np.isfinite(v) and v > 0)


def np_geometry(shape_hw, k, s, d, padding):
    axes = []
    for a in range(2):
        pad_a = padding if isinstance(padding, str) else padding[a]
        axes.append(np_pads(shape_hw[a], k[a], s[a], d[a], pad_a))
    return axes


def np_similarity(depth, k, s, d, padding, alpha):
    """H of every window: (N, H', W', kh*kw) float64, by explicit loops."""
    n_img = depth.shape[0]
    (lo_r, _, out_r), (lo_c, _, out_c) = np_geometry(depth.shape[1:3], k, s, d, padding)
    sim = np.ones((n_img, out_r, out_c, k[0] * k[1]))
    for n in range(n_img):
        dep = depth[n]
        for py in range(out_r):
            for px in range(out_c):
                cr = py * s[0] - lo_r + (k[0] // 2) * d[0]
                cc = px * s[1] - lo_c + (k[1] // 2) * d[1]
                for i in range(k[0]):
                    for j in range(k[1]):
                        r = py * s[0] - lo_r + i * d[0]
                        c = px * s[1] - lo_c + j * d[1]
                        if np_is_valid(dep, r, c) and np_is_valid(dep, cr, cc):
                            sim[n, py, px, i * k[1] + j] = np.exp(
                                -alpha * abs(float(dep[r, c]) - float(dep[cr, cc]))
                            )
    return sim


def np_depth_aware_conv(x, depth, kernel, s, d, padding, alpha):
    """Y(p) = sum_o W(o) H(p,o) X(c(p) + d*o), zero padding, by explicit loops (float64)."""
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    k = kernel.shape[:2]
    sim = np_similarity(depth, k, s, d, padding, alpha)
    (lo_r, _, out_r), (lo_c, _, out_c) = np_geometry(x.shape[1:3], k, s, d, padding)
    n_img, h, w, _ = x.shape
    y = np.zeros((n_img, out_r, out_c, kernel.shape[3]))
    for n in range(n_img):
        for py in range(out_r):
            for px in range(out_c):
                for i in range(k[0]):
                    for j in range(k[1]):
                        r = py * s[0] - lo_r + i * d[0]
                        c = px * s[1] - lo_c + j * d[1]
                        if 0 <= r < h and 0 <= c < w:
                            y[n, py, px] += sim[n, py, px, i * k[1] + j] * (
                                x[n, r, c] @ kernel[i, j]
                            )
    return y


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------


def make_depth(rng, n, h, w, *, invalid=True):
    """Piecewise depth (a few levels plus small noise, so H spans (0, 1]) with invalid pixels."""
    depth = rng.choice([1.0, 1.2, 3.0], size=(n, h, w)) + rng.uniform(0.0, 0.1, size=(n, h, w))
    if invalid:
        flat = depth.reshape(-1)
        idx = rng.permutation(flat.size)[: max(5, flat.size // 6)]
        bad = np.array([0.0, -1.0, np.nan, np.inf, -np.inf])
        flat[idx] = bad[np.arange(idx.size) % bad.size]
    return depth.astype(np.float32)


def make_inputs(seed, n, h, w, cin, cout, k, *, invalid=True):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, h, w, cin)).astype(np.float32)
    kernel = rng.normal(size=(k[0], k[1], cin, cout)).astype(np.float32)
    return x, make_depth(rng, n, h, w, invalid=invalid), kernel


def dconv(impl="fast", **options):
    """The op under jit (one compile per configuration keeps the tests fast)."""
    return jax.jit(functools.partial(depth_aware_conv, implementation=impl, **options))


def plain_conv(x, kernel, s, padding, d):
    return lax.conv_general_dilated(
        x, kernel, s, padding, rhs_dilation=d, dimension_numbers=DN, precision="highest"
    )


# ------------------------------------------------------------------------------------------------
# Against the NumPy oracle
# ------------------------------------------------------------------------------------------------

ASYM = ((2, 0), (1, 3))
CASES = [
    # (kernel, strides, dilation, padding, (h, w))
    (1, 2, 1, ASYM, (5, 6)),
    (3, 1, 1, "SAME", (6, 7)),
    (3, 1, 1, "VALID", (6, 7)),
    (3, 2, 1, "SAME", (7, 8)),
    (3, 2, 1, ASYM, (7, 8)),
    (3, 1, 2, "SAME", (7, 6)),
    (3, 2, 2, "VALID", (8, 9)),
    (3, 1, 2, ASYM, (8, 9)),
    (5, 1, 1, "SAME", (6, 7)),
    (5, 2, 2, ASYM, (9, 8)),
    (5, 1, 2, "VALID", (10, 11)),
    ((3, 5), (1, 2), (2, 1), ((0, 1), (3, 2)), (7, 9)),
    (3, 1, 12, "SAME", (28, 30)),
    (3, 2, 12, "VALID", (28, 29)),
    (3, 1, 12, ((12, 3), (0, 11)), (28, 28)),
]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


@pytest.mark.parametrize("kernel_size, strides, dilation, padding, hw", CASES)
def test_matches_numpy_loop(kernel_size, strides, dilation, padding, hw):
    k, s, d = _pair(kernel_size), _pair(strides), _pair(dilation)
    n = 2 if max(k) <= 3 and d[0] < 12 else 1  # N = 1 keeps the compile of 5x5 tiles out
    x, depth, kernel = make_inputs(sum(hw) + k[0], n, *hw, 2, 3, k)
    expected = np_depth_aware_conv(x, depth, kernel, s, d, padding, ALPHA)
    lax_shape = plain_conv(x, kernel, s, padding, d).shape
    assert expected.shape == lax_shape  # the oracle's own padding arithmetic agrees with lax
    # Cin = 2: 'fast' takes the patch formulation; the shift-and-add paths are forced by name
    for impl in ("fast", "fast_tiles", "fast_offsets", "reference"):
        got = dconv(impl, strides=s, padding=padding, dilation=d)(x, depth, kernel)
        assert got.shape == lax_shape and got.dtype == jnp.float32, impl
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=impl)
    if k[0] % 2 and k[1] % 2:
        sim = depth_similarity(depth, k, alpha=ALPHA, strides=s, padding=padding, dilation=d)
        np.testing.assert_allclose(
            sim, np_similarity(depth, k, s, d, padding, ALPHA), rtol=1e-5, atol=1e-7
        )


def test_similarity_invalid_pairs_are_exactly_one_and_never_nan():
    rng = np.random.default_rng(1)
    depth = make_depth(rng, 2, 9, 8)
    depth[0, :, 0] = np.nan  # a whole invalid column, next to the zero padding
    sim = np.asarray(depth_similarity(depth, 3, alpha=ALPHA, padding="SAME"))
    expected = np_similarity(depth, (3, 3), (1, 1), (1, 1), "SAME", ALPHA)
    assert np.all(np.isfinite(sim)) and sim.dtype == np.float32
    ones = expected == 1.0
    assert ones.sum() > 0 and np.all(sim[ones] == 1.0)
    assert np.all(sim[:, 0, :, :3] == 1.0)  # top row: the upper neighbours are padding
    np.testing.assert_allclose(sim, expected, rtol=1e-5, atol=1e-7)


def test_similarity_accepts_nhw1_and_kernel_pair():
    depth = make_depth(np.random.default_rng(2), 1, 6, 5)
    a = depth_similarity(depth, (3, 5), dilation=(2, 1))
    b = depth_similarity(depth[..., None], (3, 5), dilation=(2, 1))
    assert a.shape == (1, 6, 5, 15)
    np.testing.assert_array_equal(a, b)


def test_extreme_depths_never_nan():
    x, _, kernel = make_inputs(3, 1, 6, 6, 2, 2, (3, 3))
    depth = np.full((1, 6, 6), 1e38, np.float32)
    depth[0, ::2] = 1e-38
    depth[0, 3, 3] = np.nan
    for impl in ("fast", "reference"):
        assert np.all(np.isfinite(np.asarray(dconv(impl)(x, depth, kernel)))), impl


# ------------------------------------------------------------------------------------------------
# Special cases: constant depth, 1x1, fast == reference
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding, impl", [("SAME", "fast"), (ASYM, "fast_offsets")])
def test_constant_depth_is_plain_conv(padding, impl):
    x, _, kernel = make_inputs(4, 2, 9, 10, 3, 4, (3, 3))
    depth = np.full((2, 9, 10), 2.5, np.float32)
    sim = depth_similarity(depth, 3, strides=2, padding=padding, dilation=2)
    assert np.all(np.asarray(sim) == 1.0)
    expected = plain_conv(x, kernel, (2, 2), padding, (2, 2))
    y = dconv(impl, strides=(2, 2), padding=padding, dilation=(2, 2))(x, depth, kernel)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_1x1_kernel_is_plain_conv_for_any_depth():
    x, depth, kernel = make_inputs(5, 2, 7, 6, 4, 3, (1, 1))
    assert np.all(np.asarray(depth_similarity(depth, 1)) == 1.0)
    for impl in ("fast", "reference"):
        y = dconv(impl, strides=(2, 1))(x, depth, kernel)
        np.testing.assert_allclose(
            y, plain_conv(x, kernel, (2, 1), "SAME", (1, 1)), rtol=1e-6, atol=1e-6
        )


@pytest.mark.parametrize(
    "strides, padding, dilation",
    [((2, 1), ((1, 2), (0, 3)), (2, 3)), ((1, 1), "SAME", (1, 1))],
)
def test_all_implementations_agree(strides, padding, dilation):
    x, depth, kernel = make_inputs(6, 2, 16, 20, 8, 12, (3, 3))
    kwargs = dict(strides=strides, padding=padding, dilation=dilation)
    ref = dconv("reference", **kwargs)(x, depth, kernel)
    for impl in IMPLEMENTATIONS:
        got = dconv(impl, **kwargs)(x, depth, kernel)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5, err_msg=impl)


def test_alpha_zero_is_plain_conv_and_alpha_changes_output():
    x, depth, kernel = make_inputs(7, 1, 6, 6, 2, 2, (3, 3))
    f = jax.jit(lambda a: depth_aware_conv(x, depth, kernel, alpha=a, implementation="reference"))
    y0 = f(0.0)
    np.testing.assert_allclose(y0, plain_conv(x, kernel, (1, 1), "SAME", (1, 1)), atol=1e-5)
    y1 = f(1.0)
    assert not np.allclose(y0, y1)


# ------------------------------------------------------------------------------------------------
# Window helpers
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "k, s, d, padding",
    [(3, 1, 1, "SAME"), (2, 2, 1, "VALID"), (3, 2, 2, ASYM), (4, 3, 1, "SAME"), (3, 1, 1, "same")],
)
def test_window_shifts_stack_to_the_patch_tensor(k, s, d, padding):
    x = np.random.default_rng(8).normal(size=(2, 9, 8, 3)).astype(np.float32)
    shifts = window_shifts(x, k, strides=s, padding=padding, dilation=d)
    assert len(shifts) == k * k
    pads = resolve_padding(padding, (9, 8), k, strides=s, dilation=d)
    patches = lax.conv_general_dilated_patches(
        x, (k, k), (s, s), pads, rhs_dilation=(d, d), dimension_numbers=("NHWC", "OIHW", "NHWC")
    )
    stacked = jnp.stack(shifts, axis=-1).reshape(patches.shape)  # (C, kh*kw) channel-major
    np.testing.assert_array_equal(stacked, patches)


@pytest.mark.parametrize("size", [5, 6, 7, 30])
@pytest.mark.parametrize("k, s, d", [(3, 1, 1), (3, 2, 1), (5, 2, 2), (3, 3, 12), (2, 2, 1)])
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_resolve_padding_matches_lax(size, k, s, d, padding):
    pads = resolve_padding(padding, (size, size + 1), k, strides=s, dilation=d)
    assert pads[0] == np_pads(size, k, s, d, padding)[:2]
    assert pads[1] == np_pads(size + 1, k, s, d, padding)[:2]


def test_output_size_and_zero_size_outputs_follow_lax():
    x, depth, kernel = make_inputs(9, 1, 4, 4, 1, 1, (3, 3))
    for padding in [((-1, 0), (2, -1)), "VALID"]:
        d = (3, 3) if padding == "VALID" else (1, 1)
        y = depth_aware_conv(x, depth, kernel, padding=padding, dilation=d)
        assert y.shape == plain_conv(x, kernel, (1, 1), padding, d).shape


# ------------------------------------------------------------------------------------------------
# Autodiff, jit, dtypes
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "impl, modes",
    [
        ("fast", ("rev",)),  # custom VJP: reverse mode only (documented)
        ("fast_offsets", ("rev",)),
        ("fast_patches", ("rev",)),
        ("checkpoint", ("rev", "fwd")),
        ("reference", ("rev", "fwd")),
    ],
)
def test_gradients_in_x_and_kernel(impl, modes):
    x, depth, kernel = make_inputs(10, 1, 6, 5, 2, 3, (3, 3))
    with jax.enable_x64(True):
        x64, k64 = jnp.asarray(x, jnp.float64), jnp.asarray(kernel, jnp.float64)

        op = dconv(impl, alpha=2.0, strides=(2, 1), padding=ASYM)

        def f(a, w):
            return op(a, depth, w)

        check_grads(f, (x64, k64), order=1, modes=modes, atol=1e-6, rtol=1e-6)


def test_fast_and_reference_vjps_agree():
    x, depth, kernel = make_inputs(11, 2, 8, 7, 3, 4, (3, 3))
    options = dict(strides=(2, 1), padding=((-1, 2), (1, 0)), dilation=(1, 2))  # crops a row
    ct = np.random.default_rng(0).normal(size=(2, 4, 4, 4)).astype(np.float32)

    def vjp(impl):  # Cin = 3: 'fast' is 'fast_patches'; the other paths are forced by name
        f = dconv(impl, depth=depth, **options)
        return jax.jit(lambda a, w, g: jax.vjp(lambda a_, w_: f(a_, kernel=w_), a, w)[1](g))(
            x, kernel, ct
        )

    expected = vjp("reference")
    for impl in ("fast", "fast_tiles", "fast_offsets", "fast_patches", "checkpoint"):
        for got, want in zip(vjp(impl), expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=impl)


@pytest.mark.parametrize("impl", ["fast", "checkpoint", "reference"])
def test_no_gradient_into_depth(impl):
    x, depth, kernel = make_inputs(12, 1, 5, 5, 2, 2, (3, 3))
    depth = np.abs(np.nan_to_num(depth, nan=1.0, posinf=2.0, neginf=2.0)) + 0.5

    def loss(dep):
        return jnp.sum(depth_aware_conv(x, dep, kernel, alpha=1.0, implementation=impl) ** 2)

    g = jax.grad(loss)(jnp.asarray(depth))
    assert g.shape == depth.shape
    np.testing.assert_array_equal(g, np.zeros_like(depth))
    assert np.all(np.asarray(jax.grad(lambda d: jnp.sum(depth_similarity(d, 3)))(depth)) == 0)


def test_jit_matches_eager():
    x, depth, kernel = make_inputs(13, 2, 9, 8, 3, 2, (3, 3))
    f = functools.partial(depth_aware_conv, strides=(2, 2), padding="SAME", dilation=(2, 1))
    np.testing.assert_allclose(jax.jit(f)(x, depth, kernel), f(x, depth, kernel), rtol=1e-6)


def test_fast_under_vmap_and_second_order_reverse_mode():
    rng = np.random.default_rng(16)
    x = jnp.asarray(rng.normal(size=(2, 2, 6, 5, 2)), jnp.float32)
    depth = jnp.asarray(make_depth(rng, 4, 6, 5).reshape(2, 2, 6, 5))
    kernel = jnp.asarray(rng.normal(size=(3, 3, 2, 3)), jnp.float32)

    def batched(impl):
        return jax.vmap(lambda a, d: depth_aware_conv(a, d, kernel, implementation=impl))(x, depth)

    want = batched("reference")
    for impl in ("fast", "fast_patches"):
        np.testing.assert_allclose(batched(impl), want, rtol=1e-5, atol=1e-5, err_msg=impl)

    def grad_norm(impl):  # d/dx of |dL/dW|^2: reverse mode through the hand-written backward
        def inner(a):
            g = jax.grad(
                lambda w: jnp.sum(depth_aware_conv(a, depth[0], w, implementation=impl) ** 2)
            )
            return jnp.sum(g(kernel) ** 2)

        return jax.jit(jax.grad(inner))(x[0])

    want = grad_norm("reference")
    for impl in ("fast", "fast_patches"):
        np.testing.assert_allclose(
            grad_norm(impl), want, rtol=1e-4, atol=1e-4 * float(jnp.abs(want).max()), err_msg=impl
        )


def test_bfloat16_close_to_float32():
    x, depth, kernel = make_inputs(14, 2, 10, 9, 8, 6, (3, 3))
    expected = depth_aware_conv(x, depth, kernel, alpha=1.0)
    scale = float(np.abs(np.asarray(expected)).max())
    for impl in ("fast", "fast_offsets", "fast_patches", "reference"):
        y = dconv(impl, alpha=1.0)(
            jnp.asarray(x, jnp.bfloat16), depth, jnp.asarray(kernel, jnp.bfloat16)
        )
        assert y.dtype == jnp.bfloat16, impl
        np.testing.assert_allclose(np.asarray(y, np.float32), expected, atol=0.03 * scale)


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------


def _ok():
    return make_inputs(15, 1, 5, 5, 2, 3, (3, 3))


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda x, d, k: (x[0], d, k), "x must be 4-D"),
        (lambda x, d, k: (x, d, k[0]), "kernel must be 4-D"),
        (lambda x, d, k: (x, d[0], k), "depth must have shape"),
        (lambda x, d, k: (x, np.stack([d, d], -1), k), "depth must have shape"),
        (lambda x, d, k: (x, d[:, :4], k), r"depth \(N, H, W\)"),
        (lambda x, d, k: (x, np.concatenate([d, d]), k), r"depth \(N, H, W\)"),
        (lambda x, d, k: (x, d, k[:, :, :1]), "input channels"),
        (lambda x, d, k: (x, d, np.zeros((2, 2, 2, 3), np.float32)), "must be odd"),
        (lambda x, d, k: (x, d, np.zeros((3, 4, 2, 3), np.float32)), "must be odd"),
        (lambda x, d, k: (x, d, k.astype(jnp.bfloat16)), "same dtype"),
    ],
)
def test_clear_errors_for_bad_arguments(change, match):
    with pytest.raises(ValueError, match=match):
        depth_aware_conv(*change(*_ok()))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(padding="FULL"), "padding must be"),
        (dict(padding=((1, 1),)), "padding must be"),
        (dict(padding=((1, 1), (1, 1.5))), "padding must be"),
        (dict(implementation="cuda"), "implementation must be one of"),
        (dict(strides=0), "strides must be >= 1"),
        (dict(dilation=(1, 2, 3)), "dilation must be an int or a pair"),
        (dict(alpha=-1.0), "alpha must be"),
    ],
)
def test_clear_errors_for_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        depth_aware_conv(*_ok(), **kwargs)


def test_similarity_rejects_even_kernels():
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        depth_similarity(np.ones((1, 4, 4), np.float32), 2)


# ------------------------------------------------------------------------------------------------
# 'fast_patches': whole-batch and row-tiled patch matrices, against the reference
# ------------------------------------------------------------------------------------------------


@pytest.fixture(params=["whole", "tiled"])
def patch_tiling(request, monkeypatch):
    """Runs a test with the whole-batch patch matrix, then with tiny row tiles (several tiles)."""
    jax.clear_caches()  # the tiling is chosen at trace time: drop traces made under other limits
    if request.param == "tiled":
        monkeypatch.setattr(depth_conv, "PATCH_WHOLE_BYTES", 0)
        monkeypatch.setattr(depth_conv, "PATCH_TILE_BYTES", 1)  # one output row per tile
    yield request.param
    jax.clear_caches()


PATCH_CASES = [
    # (kernel, strides, dilation, padding, (h, w), invalid depth)
    ((3, 3), (1, 1), (1, 1), "SAME", (8, 9), True),
    ((3, 3), (1, 1), (1, 1), "VALID", (7, 8), False),
    ((3, 3), (2, 1), (2, 3), ((1, 2), (0, 3)), (12, 14), True),
    ((3, 3), (2, 2), (1, 1), "SAME", (9, 10), True),
    ((5, 3), (2, 2), (1, 2), ((-1, 2), (1, 0)), (11, 12), True),
    ((1, 1), (1, 2), (1, 1), ASYM, (5, 6), True),
]


@pytest.mark.parametrize("kernel_size, strides, dilation, padding, hw, invalid", PATCH_CASES)
def test_fast_patches_values_and_vjp_match_reference(
    patch_tiling, kernel_size, strides, dilation, padding, hw, invalid
):
    x, depth, kernel = make_inputs(sum(hw), 2, *hw, 3, 4, kernel_size, invalid=invalid)
    options = dict(strides=strides, padding=padding, dilation=dilation)

    def vjp(impl):
        f = dconv(impl, depth=depth, **options)
        y, pullback = jax.vjp(lambda a, w: f(a, kernel=w), x, kernel)
        ct = np.random.default_rng(1).normal(size=y.shape).astype(np.float32)
        return (y, *pullback(ct))

    for got, want, name in zip(
        vjp("fast_patches"), vjp("reference"), ("y", "dx", "dW"), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4, err_msg=name)


def test_fast_patches_check_grads_and_jit(patch_tiling):
    x, depth, kernel = make_inputs(17, 2, 7, 6, 2, 3, (3, 3))
    with jax.enable_x64(True):
        x64, k64 = jnp.asarray(x, jnp.float64), jnp.asarray(kernel, jnp.float64)
        op = dconv("fast_patches", alpha=2.0, strides=(2, 1), padding=ASYM, dilation=(1, 2))
        check_grads(lambda a, w: op(a, depth, w), (x64, k64), order=1, modes=("rev",), atol=1e-6)
    f = functools.partial(depth_aware_conv, implementation="fast_patches", strides=(1, 2))
    np.testing.assert_allclose(jax.jit(f)(x, depth, kernel), f(x, depth, kernel), rtol=1e-6)


def test_fast_patches_kernel_gradient_alone_drops_the_dx_loop(patch_tiling):
    """With several tiles, dx and dW are separate loops: grad w.r.t. the kernel alone has no dx."""
    x, depth, kernel = make_inputs(18, 2, 6, 5, 2, 3, (3, 3))
    op = functools.partial(depth_aware_conv, depth=depth, implementation="fast_patches")

    def loops(argnums):
        grad = jax.grad(lambda a, w: jnp.sum(op(a, kernel=w) ** 2), argnums=argnums)
        return jax.jit(grad).lower(x, kernel).compile().as_text().count(" while(")

    if patch_tiling == "tiled":
        assert loops((0, 1)) == loops(1) + 1
    else:
        assert loops((0, 1)) == loops(1) == 0


def test_fast_strategy_choice_and_dw_from_patches_matches_reference():
    """'fast' picks the patch formulation for narrow inputs, dW from patches for mid widths."""
    from drd_jax.ops.windows import window_geometry

    def choice(n, h, w, cin, cout):
        x = jnp.zeros((n, h, w, cin), jnp.float32)
        geometry = window_geometry((h, w), (3, 3), strides=1, padding="SAME", dilation=1)
        return depth_conv._forward_strategy(x, jnp.zeros((9, cin, cout)), geometry)

    assert choice(2, 240, 320, 64, 64) == "tiles_dw_patches"  # conv1_2
    assert choice(2, 120, 160, 64, 128) == "tiles_dw_patches"  # conv2_1
    assert choice(2, 120, 160, 128, 128) == "tiles"  # conv2_2
    assert choice(2, 30, 40, 512, 1024) == "offsets"  # fc6
    assert 9 * 3 <= depth_conv.PATCH_MAX_FEATURES < 9 * 64  # conv1_1 (RGB) takes 'fast_patches'

    x, depth, kernel = make_inputs(19, 2, 10, 9, 8, 6, (3, 3))  # 72 columns: tiles_dw_patches
    assert choice(2, 10, 9, 8, 6) == "tiles_dw_patches"
    options = dict(strides=(2, 1), padding=((1, 2), (0, 3)), dilation=(1, 2))

    def vjp(impl):
        f = dconv(impl, depth=depth, **options)
        y, pullback = jax.vjp(lambda a, w: f(a, kernel=w), x, kernel)
        ct = np.random.default_rng(2).normal(size=y.shape).astype(np.float32)
        return (y, *pullback(ct))

    for got, want, name in zip(vjp("fast"), vjp("reference"), ("y", "dx", "dW"), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4, err_msg=name)


# ------------------------------------------------------------------------------------------------
# Zero-size batches and channels
# ------------------------------------------------------------------------------------------------

EMPTY_CASES = {
    # name: (x shape, kernel shape)
    "no_images": ((0, 8, 10, 4), (3, 3, 4, 5)),
    "no_input_channels": ((2, 8, 10, 0), (3, 3, 0, 5)),
    "no_output_channels": ((2, 8, 10, 4), (3, 3, 4, 0)),
    "no_images_no_channels": ((0, 8, 10, 0), (3, 3, 0, 5)),
}


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", sorted(EMPTY_CASES))
def test_zero_size_batch_and_channels_follow_lax(case, impl):
    """lax.conv's shapes (and zeros for Cin = 0), forward and gradient, every implementation."""
    x_shape, k_shape = EMPTY_CASES[case]
    rng = np.random.default_rng(0)
    x = rng.normal(size=x_shape).astype(np.float32)
    kernel = rng.normal(size=k_shape).astype(np.float32)
    depth = make_depth(rng, x_shape[0], x_shape[1], x_shape[2], invalid=True)
    options = dict(strides=(2, 1), padding="SAME", dilation=(1, 2))

    def ours(a, w):
        return depth_aware_conv(a, depth, w, implementation=impl, **options)

    def theirs(a, w):
        return plain_conv(a, w, options["strides"], "SAME", options["dilation"])

    y = ours(x, kernel)
    assert y.shape == theirs(x, kernel).shape and y.dtype == x.dtype
    np.testing.assert_array_equal(y, np.zeros(y.shape, np.float32))
    grads = jax.jit(jax.grad(lambda a, w: ours(a, w).sum(), argnums=(0, 1)))(x, kernel)
    want = jax.grad(lambda a, w: theirs(a, w).sum(), argnums=(0, 1))(x, kernel)
    for got, expected in zip(grads, want, strict=True):
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=0)


def test_zero_size_batch_of_the_issue():
    y = depth_aware_conv(jnp.zeros((0, 8, 10, 4)), jnp.ones((0, 8, 10)), jnp.zeros((3, 3, 4, 5)))
    assert y.shape == (0, 8, 10, 5)
