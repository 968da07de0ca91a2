"""``config.dtype='bfloat16'``: the network computes in bfloat16 while params, optimiser state and
losses stay float32; float32 runs (and runs recorded before the field) keep their fingerprints."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import tiny

from drd_jax import config as config_lib
from drd_jax import state as state_lib
from drd_jax import steps

pytestmark = pytest.mark.usefixtures("fast_compile")
NUM_CLASSES = 6


def test_dtype_is_checked_and_float32_keeps_the_fingerprint():
    c = tiny("")
    old = ml_collections.ConfigDict(c.to_dict())
    del old["dtype"]  # a run recorded before the field existed
    assert config_lib.fingerprint(old) == config_lib.fingerprint(c)
    c.dtype = "bfloat16"
    config_lib.validate_config(c)
    assert config_lib.fingerprint(c) != config_lib.fingerprint(old)
    c.dtype = "float16"
    with pytest.raises(ValueError, match=r"config\.dtype"):
        config_lib.validate_config(c)


def _one_step(dtype):
    c = tiny("", dtype=dtype, dropout_rate=0.0)
    state = state_lib.create_train_state(c, jax.random.PRNGKey(0), num_classes=NUM_CLASSES)
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.normal(size=(4, 32, 32, 3)), jnp.float32),
        "depth": jnp.ones((4, 32, 32), jnp.float32),
        "label": jnp.asarray(rng.integers(0, NUM_CLASSES, (4, 32, 32)), jnp.int32),
    }
    step = jax.jit(steps.make_train_step(c, num_classes=NUM_CLASSES, num_train_images=16))
    new_state, metrics = step(state, batch)
    logits = state.apply_fn({"params": state.params}, batch["image"], train=False)
    return state, new_state, metrics, logits


@pytest.mark.integration  # a whole train step
def test_a_bfloat16_step_keeps_float32_params_and_the_float32_loss():
    s32, new32, m32, logits32 = _one_step("float32")
    s16, new16, m16, logits16 = _one_step("bfloat16")
    assert logits32.dtype == jnp.float32 and logits16.dtype == jnp.bfloat16
    for tree in (s16.params, new16.params, new16.opt_state):
        floats = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
        assert {x.dtype for x in floats} == {jnp.dtype(jnp.float32)}
    # The same initial params (float32 either way), the loss within bfloat16 rounding.
    for a, b in zip(jax.tree.leaves(s32.params), jax.tree.leaves(s16.params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert bool(m16["finite"]) and m16["loss"].dtype == jnp.float32
    assert float(m16["loss"]) == pytest.approx(float(m32["loss"]), rel=2e-2)
