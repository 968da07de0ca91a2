"""DepthAwareConv: nn.Conv's params, nn.Conv's output when plain, the D-Conv op when depth-aware."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from drd_jax import ops
from drd_jax.layers import DepthAwareConv

RNG = jax.random.PRNGKey(0)


def _inputs(n=2, h=9, w=11, c=3):
    kx, kd = jax.random.split(jax.random.PRNGKey(1))
    x = jax.random.normal(kx, (n, h, w, c))
    depth = jax.random.uniform(kd, (n, h, w), minval=0.5, maxval=4.0)
    return x, depth


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=(3, 3)),
        dict(kernel_size=(3, 3), strides=(2, 2), padding="VALID"),
        dict(kernel_size=(5, 3), kernel_dilation=(2, 1), padding=((2, 1), (0, 3))),
        dict(kernel_size=(3, 3), padding=1, kernel_dilation=2),
        dict(kernel_size=(1, 1), use_bias=False),
    ],
)
def test_plain_layer_matches_nn_conv(kwargs):
    x, depth = _inputs()
    reference = nn.Conv(features=5, **kwargs)
    layer = DepthAwareConv(features=5, depth_aware=False, **kwargs)
    variables = reference.init(RNG, x)
    ours = layer.init(RNG, x, depth)
    assert jax.tree.structure(ours) == jax.tree.structure(variables)
    assert jax.tree.map(jnp.shape, ours) == jax.tree.map(jnp.shape, variables)
    np.testing.assert_allclose(
        layer.apply(variables, x, depth), reference.apply(variables, x), rtol=1e-6, atol=1e-6
    )


def test_depth_aware_layer_without_depth_is_plain_conv():
    x, _ = _inputs()
    variables = nn.Conv(features=4, kernel_size=(3, 3)).init(RNG, x)
    layer = DepthAwareConv(features=4, depth_aware=True)
    np.testing.assert_allclose(
        layer.apply(variables, x),
        nn.Conv(features=4, kernel_size=(3, 3)).apply(variables, x),
        rtol=1e-6,
        atol=1e-6,
    )


def test_depth_aware_layer_applies_the_op_then_bias():
    x, depth = _inputs()
    layer = DepthAwareConv(features=4, kernel_size=(3, 3), kernel_dilation=(2, 2), alpha=5.0)
    variables = layer.init(RNG, x, depth)
    variables = jax.tree.map(lambda v: v + 0.1, variables)  # non-zero bias
    params = variables["params"]
    expected = (
        ops.depth_aware_conv(x, depth, params["kernel"], alpha=5.0, dilation=(2, 2))
        + params["bias"]
    )
    got = layer.apply(variables, x, depth)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    plain = layer.apply(variables, x)
    assert float(jnp.max(jnp.abs(got - plain))) > 1e-3  # depth really changed the output


def test_bfloat16_computation_keeps_float32_params():
    x, depth = _inputs()
    layer = DepthAwareConv(features=4, dtype=jnp.bfloat16)
    variables = layer.init(RNG, x, depth)
    assert variables["params"]["kernel"].dtype == jnp.float32
    y = layer.apply(variables, x, depth)
    assert y.dtype == jnp.bfloat16
    y32 = DepthAwareConv(features=4).apply(variables, x, depth)
    np.testing.assert_allclose(y.astype(jnp.float32), y32, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(padding="CIRCULAR"), "padding"),
        (dict(kernel_size=(3, 3, 3)), "kernel_size"),
        (dict(strides=(1, 2, 1)), "strides"),
    ],
)
def test_bad_configuration_names_the_field(kwargs, message):
    x, depth = _inputs()
    with pytest.raises(ValueError, match=message):
        DepthAwareConv(features=4, **kwargs).init(RNG, x, depth)


def test_wrong_input_rank_is_rejected():
    with pytest.raises(ValueError, match="x must be"):
        DepthAwareConv(features=4).init(RNG, jnp.zeros((9, 11, 3)))
