"""Tests for the fused Pallas D-Conv (drd_jax.ops.depth_conv_pallas, implementation='pallas').

On this CPU machine the kernels run in Pallas interpret mode; the comparisons are against
implementation='reference' (the patch tensor), forward and both cotangents. The same kernels are
also lowered for CUDA (Triton) from here, which checks that every op in them has a Triton lowering.
Spatial sizes and channels are small: interpret mode is slow.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from drd_jax.ops import IMPLEMENTATIONS, depth_aware_conv
from drd_jax.ops import depth_conv as dc
from drd_jax.ops.depth_conv_pallas import (
    HigherOrderGradientError,
    NoTpuKernelError,
    depth_conv_pallas,
)
from drd_jax.ops.windows import window_geometry

pytestmark = pytest.mark.usefixtures("fast_compile")

ASYM = ((2, 0), (1, 3))
# IEEE float32 dots on both sides (on a GPU the default would be TF32 in Triton and in XLA)
HIGHEST = lax.Precision.HIGHEST


def make_inputs(seed, n, h, w, cin, cout, k, dtype=jnp.float32):
    """x, kernel (dtype) and a piecewise depth map with 0, negative, NaN and ±inf pixels."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(n, h, w, cin)), dtype)
    kernel = jnp.asarray(rng.normal(size=(k, k, cin, cout)) / np.sqrt(k * k * cin), dtype)
    depth = rng.choice([1.0, 1.2, 3.0], size=(n, h, w)) + rng.uniform(0.0, 0.1, size=(n, h, w))
    flat = depth.reshape(-1)
    idx = rng.permutation(flat.size)[: max(5, flat.size // 6)]
    flat[idx] = np.array([0.0, -1.0, np.nan, np.inf, -np.inf])[np.arange(idx.size) % 5]
    return x, jnp.asarray(depth, jnp.float32), kernel


def dconv(impl, **options):
    return jax.jit(functools.partial(depth_aware_conv, implementation=impl, **options))


def forward_and_vjp(impl, depth, **options):
    """jit of ``(a, w, ct) -> (y, dx, dW)``: one compile for the forward and both cotangents."""
    f = functools.partial(depth_aware_conv, depth=depth, implementation=impl, **options)

    def run(a, w, ct):
        y, vjp = jax.vjp(lambda a_, w_: f(a_, kernel=w_), a, w)
        return (y, *vjp(ct.astype(y.dtype)))

    return jax.jit(run)


def assert_matches_reference(x, depth, kernel, options, *, rtol=1e-5, atol=1e-5, grad_tol=1e-4):
    """Forward (rtol/atol) and dx, dW (grad_tol) of 'pallas' against 'reference'."""
    out_shape = jax.eval_shape(dconv("reference", **options), x, depth, kernel).shape
    ct = jnp.asarray(np.random.default_rng(2).normal(size=out_shape), jnp.float32)
    want = forward_and_vjp("reference", depth, **options)(x, kernel, ct)
    got = forward_and_vjp("pallas", depth, **options)(x, kernel, ct)
    for name, g, e in zip(("y", "dx", "dW"), got, want, strict=True):
        assert g.shape == e.shape and g.dtype == e.dtype == x.dtype, name
        g, e = np.asarray(g, np.float32), np.asarray(e, np.float32)
        if x.dtype == jnp.float32:
            tol = (rtol, atol) if name == "y" else (grad_tol, grad_tol)
            np.testing.assert_allclose(g, e, rtol=tol[0], atol=tol[1], err_msg=name)
        else:  # bfloat16: both round their inputs and outputs, in different places
            np.testing.assert_allclose(g, e, atol=0.02 * np.abs(e).max(), err_msg=name)


# (n, h, w, cin, cout, kernel, strides, dilation, padding); sizes the blocks (16) do not divide
GRID = [
    (2, 6, 7, 3, 5, 3, 1, 1, "SAME"),  # RGB-like input layer, Cin 3
    (1, 7, 9, 5, 40, 3, 2, 1, "SAME"),  # Cout: three blocks of 16
    (1, 8, 9, 4, 3, 3, (2, 1), (2, 1), ASYM),
    (1, 8, 9, 40, 4, 3, (1, 2), (1, 2), "VALID"),  # Cin: three blocks of 16
    (1, 9, 8, 3, 4, 5, 2, 2, ((1, 0), (3, 2))),
    (1, 8, 7, 3, 4, 3, (2, 1), (1, 2), ((-1, 2), (1, 0))),  # negative padding crops a row
    (1, 28, 30, 3, 4, 3, 1, 12, "SAME"),  # dilation 12 (fc6)
    (1, 28, 29, 3, 4, 3, 2, 12, "VALID"),
    (1, 26, 27, 2, 3, 3, 1, 12, ((12, 3), (0, 11))),
    (1, 5, 34, 4, 3, 3, 1, 1, "SAME"),  # W' = 34: more than one pixel block per row
    (1, 5, 6, 3, 4, 1, 2, 1, ASYM),  # 1x1, strides 2: input phases no tap reads
]


def _case(case, seed, dtype=jnp.float32):
    n, h, w, cin, cout, k, s, d, padding = case
    x, depth, kernel = make_inputs(seed, n, h, w, cin, cout, k, dtype)
    return x, depth, kernel, dict(strides=s, dilation=d, padding=padding, precision=HIGHEST)


@pytest.mark.parametrize("case", GRID)
def test_forward_and_vjp_match_reference_float32(case):
    assert_matches_reference(*_case(case, 0))


@pytest.mark.parametrize("case", [GRID[1], GRID[7]])
def test_bfloat16_close_to_reference(case):
    assert_matches_reference(*_case(case, 3, jnp.bfloat16))


@pytest.mark.parametrize(
    "n, hw, cin, cout, dilation",
    [(1, (6, 8), 64, 64, 1), (1, (14, 15), 32, 40, 12)],  # conv1_2-like; fc6-like (narrower)
)
def test_network_layer_shapes(n, hw, cin, cout, dilation):
    """Small versions of DeepLab-VGG16's layers: 3x3 64->64 and fc6's 3x3 dilation 12."""
    x, depth, kernel = make_inputs(5, n, *hw, cin, cout, 3)
    assert_matches_reference(x, depth, kernel, dict(dilation=dilation, precision=HIGHEST))


@pytest.mark.parametrize(
    "case, blocks",
    [
        (GRID[1], dict(block_h=2, block_w=2, block_cin=2, block_cout=16, dw_splits=2)),
        (GRID[8], dict(block_h=4, block_w=4, block_cin=1, block_cout=2, dw_splits=3)),
    ],
)
def test_explicit_blocks_and_dw_splits_give_the_same_numbers(case, blocks):
    """Blocks smaller than Triton allows (so interpreted everywhere): several row, column and
    channel blocks, padded rows and columns, and several dW splits."""
    x, depth, kernel, options = _case(case, 7)
    precision = options.pop("precision")
    k = kernel.shape[0]
    geometry = window_geometry(x.shape[1:3], (k, k), **options)
    sim = dc.depth_similarity(
        depth, k, strides=geometry[1], padding=geometry[3], dilation=geometry[2]
    )
    kernel_k = kernel.reshape(k * k, *kernel.shape[2:])
    want_y, want_vjp = jax.vjp(
        lambda a, w: dc._reference(a, sim, w, geometry=geometry, precision=precision), x, kernel_k
    )
    small = functools.partial(
        depth_conv_pallas, geometry=geometry, precision=precision, interpret=True, **blocks
    )
    got_y, got_vjp = jax.jit(lambda a, w: jax.vjp(lambda a_, w_: small(a_, sim, w_), a, w))(
        x, kernel_k
    )
    np.testing.assert_allclose(got_y, want_y, rtol=1e-5, atol=1e-5)
    for g, e in zip(got_vjp(want_y), want_vjp(want_y), strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["block_h", "block_w", "block_cin", "block_cout"])
def test_block_sizes_must_be_powers_of_two(name):
    geometry = window_geometry((6, 7), (3, 3), strides=1, padding="SAME", dilation=1)
    x, sim, kernel_k = jnp.zeros((1, 6, 7, 3)), jnp.ones((1, 6, 7, 9)), jnp.zeros((9, 3, 4))
    with pytest.raises(ValueError, match=f"{name} must be a power of two, got 24"):
        depth_conv_pallas(x, sim, kernel_k, geometry=geometry, **{name: 24})


def test_public_api_jit_and_empty_batch():
    assert "pallas" in IMPLEMENTATIONS
    x, depth, kernel = make_inputs(8, 1, 6, 5, 3, 4, 3)
    eager = depth_aware_conv(x, depth, kernel, strides=2, implementation="pallas")
    jitted = dconv("pallas", strides=2)(x, depth, kernel)
    np.testing.assert_allclose(eager, jitted, rtol=1e-6, atol=1e-6)
    y = depth_aware_conv(
        jnp.zeros((0, 6, 5, 3)), jnp.ones((0, 6, 5)), kernel, implementation="pallas"
    )
    assert y.shape == (0, 6, 5, 4)
    grads = jax.grad(
        lambda a, w: depth_aware_conv(a, jnp.ones((0, 6, 5)), w, implementation="pallas").sum(),
        argnums=(0, 1),
    )(jnp.zeros((0, 6, 5, 3)), kernel)
    assert grads[0].shape == (0, 6, 5, 3)
    np.testing.assert_array_equal(grads[1], np.zeros(kernel.shape, np.float32))
    # the kernel entry point itself: no grid of zero programs, zero cotangents
    geometry = window_geometry((6, 5), (3, 3), strides=1, padding="SAME", dilation=1)
    kernel_k = kernel.reshape(9, 3, 4)
    direct = functools.partial(depth_conv_pallas, geometry=geometry)
    empty_x, empty_sim = jnp.zeros((0, 6, 5, 3)), jnp.zeros((0, 6, 5, 9))
    assert direct(empty_x, empty_sim, kernel_k).shape == (0, 6, 5, 4)
    dw = jax.grad(lambda w: direct(empty_x, empty_sim, w).sum())(kernel_k)
    np.testing.assert_array_equal(dw, np.zeros(kernel_k.shape, np.float32))


def test_no_gradient_into_depth():
    x, depth, kernel = make_inputs(9, 1, 5, 6, 2, 3, 3)
    depth = jnp.abs(jnp.nan_to_num(depth, nan=1.0, posinf=2.0, neginf=2.0)) + 0.5
    g = jax.grad(
        lambda dep: jnp.sum(depth_aware_conv(x, dep, kernel, alpha=1.0, implementation="pallas"))
    )(depth)
    np.testing.assert_array_equal(g, np.zeros_like(depth))


def test_tpu_backend_is_refused_with_a_clear_error(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    geometry = window_geometry((6, 7), (3, 3), strides=1, padding="SAME", dilation=1)
    x, sim, kernel_k = jnp.zeros((1, 6, 7, 3)), jnp.ones((1, 6, 7, 9)), jnp.zeros((9, 3, 4))
    with pytest.raises(NoTpuKernelError, match="none for TPU: use implementation='fast'"):
        depth_conv_pallas(x, sim, kernel_k, geometry=geometry)


def test_higher_order_gradient_is_a_clear_error():
    x, depth, kernel = make_inputs(10, 1, 5, 4, 2, 3, 3)

    def grad_norm(a):
        g = jax.grad(lambda w: jnp.sum(depth_aware_conv(a, depth, w, implementation="pallas")))
        return jnp.sum(g(kernel) ** 2)

    with pytest.raises(HigherOrderGradientError, match="first-order reverse mode only"):
        jax.grad(grad_norm)(x)


# (x shape, kernel size, strides, dilation, padding, dtype, precision) lowered for CUDA from here
LOWER_CASES = [
    ((2, 16, 20, 64, 64), 3, 1, 1, "SAME", jnp.bfloat16, None),
    ((1, 30, 40, 32, 48), 3, 2, 12, "SAME", jnp.float32, HIGHEST),
    ((1, 30, 40, 32, 48), 3, 1, 12, "SAME", jnp.bfloat16, None),
    ((1, 9, 11, 3, 64), 3, 2, 1, ASYM, jnp.bfloat16, None),
]


@pytest.mark.parametrize("shape, k, s, d, padding, dtype, precision", LOWER_CASES)
def test_kernels_lower_for_cuda_as_triton(shape, k, s, d, padding, dtype, precision):
    """Forward and gradient cross-lower for CUDA: Triton custom calls, no interpreter loop."""
    n, h, w, cin, cout = shape
    x = jax.ShapeDtypeStruct((n, h, w, cin), dtype)
    depth = jax.ShapeDtypeStruct((n, h, w), jnp.float32)
    kernel = jax.ShapeDtypeStruct((k, k, cin, cout), dtype)
    f = functools.partial(
        depth_aware_conv,
        strides=s,
        dilation=d,
        padding=padding,
        implementation="pallas",
        precision=precision,
    )

    def lowered(fn):
        return jax.jit(fn).trace(x, depth, kernel).lower(lowering_platforms=("cuda",)).as_text()

    text = lowered(f)
    assert text.count("__gpu$xla.gpu.triton") == 1  # the forward kernel
    assert "stablehlo.while" not in text  # no interpreted grid loop
    loss = lambda a, dep, w: jnp.sum(f(a, dep, w).astype(jnp.float32))  # noqa: E731
    text = lowered(jax.grad(loss, argnums=(0, 2)))
    assert text.count("__gpu$xla.gpu.triton") == 2  # dx and dW
    assert "stablehlo.while" not in text
