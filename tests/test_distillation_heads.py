"""Distillation heads: SKD's score-map critic (with SAGAN self-attention) and KA's auto-encoder."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from drd_jax.models.distillation_heads import (
    FeatureAdapter,
    FeatureAutoEncoder,
    ScoreMapCritic,
    SelfAttention2D,
)

# XLA optimisations off: compiling the random initialisers dominates these tiny tests otherwise.
pytestmark = pytest.mark.usefixtures("fast_compile")

NUM_CLASSES = 3
TINY_CRITIC = dict(features=(4, 8, 8, 16))
AE = dict(features=6, code_features=3)


def _init(model, *args):
    return jax.jit(model.init)(jax.random.PRNGKey(0), *args)


def _apply(model, variables, *args, method=None):
    return jax.jit(functools.partial(model.apply, method=method))(variables, *args)


def _param_dtypes(model, *args):
    """Dtypes of the params ``model.init`` would create, without compiling anything."""
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), *args)
    return {leaf.dtype for leaf in jax.tree_util.tree_leaves(shapes)}


def _normal(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _score_maps(n, h, w, seed=0):
    logits = _normal((n, h, w, NUM_CLASSES), seed)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _features(seed=0, n=4, h=8, w=8, c=6):
    return _normal((n, h, w, c), seed)


@pytest.fixture(scope="module")
def critic_and_variables():
    critic = ScoreMapCritic(**TINY_CRITIC)
    return critic, _init(critic, _score_maps(2, 16, 16))


@pytest.fixture(scope="module")
def active_critic_variables(critic_and_variables):
    """The critic's variables with gamma = 0.7, so that the attention blocks are not skipped."""
    params = dict(critic_and_variables[1]["params"])
    for name in ("attention_2", "attention_3"):
        params[name] = {**params[name], "gamma": jnp.asarray(0.7)}
    return {"params": params}


@pytest.fixture(scope="module")
def ae_and_variables():
    ae = FeatureAutoEncoder(**AE)
    return ae, _init(ae, _features())


@pytest.mark.parametrize("hw", [(8, 8), (16, 16), (12, 16), (96, 128), (1, 3)])
def test_critic_gives_one_score_per_example(critic_and_variables, active_critic_variables, hw):
    critic, _ = critic_and_variables
    scores = _apply(critic, active_critic_variables, _score_maps(2, *hw))
    assert scores.shape == (2,)
    assert scores.dtype == jnp.float32
    assert np.all(np.isfinite(scores))


def test_critic_param_tree(critic_and_variables):
    _, variables = critic_and_variables
    params = variables["params"]
    expected = {"conv_0", "conv_1", "conv_2", "conv_3", "attention_2", "attention_3", "final"}
    assert set(params) == expected
    assert params["conv_0"]["kernel"].shape == (4, 4, NUM_CLASSES, 4)
    assert params["attention_3"]["query"]["kernel"].shape == (1, 1, 16, 2)
    assert params["attention_2"]["query"]["kernel"].shape == (1, 1, 8, 1)  # C // 8, at least 1
    assert params["attention_2"]["value"]["kernel"].shape == (1, 1, 8, 8)
    assert params["attention_2"]["gamma"].shape == ()
    assert float(params["attention_2"]["gamma"]) == 0.0
    assert params["final"]["kernel"].shape == (3, 3, 16, 1)
    no_attention = ScoreMapCritic(attention=False, **TINY_CRITIC)
    shapes = jax.eval_shape(no_attention.init, jax.random.PRNGKey(0), _score_maps(1, 8, 8))
    assert set(shapes["params"]) == {"conv_0", "conv_1", "conv_2", "conv_3", "final"}


def test_critic_examples_are_independent(critic_and_variables, active_critic_variables):
    critic, _ = critic_and_variables
    maps = _score_maps(2, 16, 16)
    changed = maps.copy()
    changed[1] = _score_maps(1, 16, 16, seed=5)[0]

    @jax.jit
    def run(variables, maps, changed):
        score = functools.partial(critic.apply, variables)
        # The WGAN-GP view: d(score of example 0) / d(input) must vanish on example 1.
        return score(maps), score(changed), jax.grad(lambda x: score(x)[0])(maps)

    before, after, grad = run(active_critic_variables, maps, changed)
    np.testing.assert_allclose(after[0], before[0], rtol=1e-6, atol=1e-7)
    assert not np.allclose(after[1], before[1])
    assert np.all(np.asarray(grad[1]) == 0)
    assert np.any(np.asarray(grad[0]) != 0)


def test_critic_input_gradient_is_finite(critic_and_variables, active_critic_variables):
    critic, _ = critic_and_variables
    grad_fn = jax.jit(jax.grad(lambda v, x: critic.apply(v, x).mean(), argnums=1))
    grad = grad_fn(active_critic_variables, _score_maps(2, 12, 16))
    assert grad.shape == (2, 12, 16, NUM_CLASSES)
    assert np.all(np.isfinite(grad))
    assert np.any(np.asarray(grad) != 0)


def test_critic_rejects_bad_input(critic_and_variables):
    critic, variables = critic_and_variables
    with pytest.raises(ValueError, match=r"\(16, 16, 3\)"):
        critic.apply(variables, jnp.zeros((16, 16, 3)))
    with pytest.raises(ValueError, match="at least 1"):
        critic.apply(variables, jnp.zeros((1, 0, 16, 3)))
    with pytest.raises(ValueError, match="at least one"):
        jax.eval_shape(
            ScoreMapCritic(features=()).init, jax.random.PRNGKey(0), _score_maps(1, 8, 8)
        )


def test_critic_bfloat16_keeps_float32_params(critic_and_variables, active_critic_variables):
    maps = _score_maps(2, 16, 12)
    critic = ScoreMapCritic(dtype=jnp.bfloat16, **TINY_CRITIC)
    assert _param_dtypes(critic, maps) == {jnp.dtype(jnp.float32)}
    scores = _apply(critic, active_critic_variables, maps)
    reference = _apply(critic_and_variables[0], active_critic_variables, maps)
    assert scores.shape == (2,)
    assert scores.dtype == jnp.float32
    assert np.all(np.isfinite(scores))
    np.testing.assert_allclose(scores, reference, rtol=0.1, atol=0.05)


def test_self_attention_is_identity_at_init():
    x = _normal((2, 3, 5, 16), seed=1)
    attention = SelfAttention2D()

    @jax.jit
    def init_and_apply(x):
        variables = attention.init(jax.random.PRNGKey(0), x)
        return variables, attention.apply(variables, x)

    variables, out = init_and_apply(x)
    assert variables["params"]["gamma"].shape == ()
    assert float(variables["params"]["gamma"]) == 0.0
    assert variables["params"]["query"]["kernel"].shape == (1, 1, 16, 2)
    np.testing.assert_array_equal(out, x)


def test_self_attention_matches_numpy():
    x = _normal((2, 2, 3, 16), seed=1)
    attention = SelfAttention2D()
    params = jax.tree_util.tree_map(np.asarray, _init(attention, x)["params"])
    # Non-zero biases too, so that the reference checks them.
    for i, name in enumerate(("query", "key", "value")):
        bias = params[name]["bias"]
        params[name] = {**params[name], "bias": 0.3 * _normal(bias.shape, seed=10 + i)}
    params["gamma"] = np.asarray(0.5, np.float32)
    out = _apply(attention, {"params": params}, x)

    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    xs = np.asarray(x, np.float64).reshape(2, 6, 16)  # (N, positions, C)
    expected = np.empty_like(xs)
    for n in range(2):
        q = xs[n] @ p["query"]["kernel"][0, 0] + p["query"]["bias"]  # (6, 16 // 8)
        k = xs[n] @ p["key"]["kernel"][0, 0] + p["key"]["bias"]
        v = xs[n] @ p["value"]["kernel"][0, 0] + p["value"]["bias"]  # (6, 16)
        energy = q @ k.T  # (query positions, key positions)
        weights = np.exp(energy - energy.max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)  # softmax over the key positions
        expected[n] = xs[n] + p["gamma"] * (weights @ v)
    assert q.shape == (6, 2)
    np.testing.assert_allclose(out, expected.reshape(x.shape), rtol=1e-5, atol=1e-5)


def test_autoencoder_methods_agree(ae_and_variables):
    ae, variables = ae_and_variables
    x = _features()
    assert variables["params"]["encoder_conv1"]["kernel"].shape == (3, 3, 6, 4)  # (6 + 3) // 2

    @jax.jit
    def run(variables, x):
        recon, code = ae.apply(variables, x)
        encoded = ae.apply(variables, x, method=FeatureAutoEncoder.encode)
        decoded = ae.apply(variables, encoded, method=FeatureAutoEncoder.decode)
        return recon, code, encoded, decoded

    recon, code, encoded, decoded = run(variables, x)
    assert recon.shape == x.shape
    assert code.shape == encoded.shape == (4, 8, 8, 3)
    assert np.all(np.asarray(encoded) >= 0)
    assert np.any(np.asarray(encoded) > 0)
    np.testing.assert_allclose(code, encoded, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(recon, decoded, rtol=1e-6, atol=1e-6)


def test_autoencoder_other_sizes_and_hidden_width():
    wide = FeatureAutoEncoder(hidden_features=10, **AE)
    y = _features(n=1, h=5, w=7)
    shapes = jax.eval_shape(wide.init, jax.random.PRNGKey(0), y)
    assert shapes["params"]["decoder_conv1"]["kernel"].shape == (3, 3, 3, 10)
    recon, code = jax.eval_shape(wide.apply, shapes, y)
    assert recon.shape == (1, 5, 7, 6)
    assert code.shape == (1, 5, 7, 3)
    tiny = FeatureAutoEncoder(features=1, code_features=1)
    shapes = jax.eval_shape(tiny.init, jax.random.PRNGKey(0), _features(n=1, h=3, w=2, c=1))
    assert shapes["params"]["encoder_conv1"]["kernel"].shape == (3, 3, 1, 1)


def test_autoencoder_rejects_wrong_channels(ae_and_variables):
    ae, variables = ae_and_variables
    with pytest.raises(ValueError, match=r"6 channels, got 5"):
        ae.apply(variables, _features(c=5))
    with pytest.raises(ValueError, match=r"6 channels, got 5"):
        ae.apply(variables, _features(c=5), method=FeatureAutoEncoder.encode)
    with pytest.raises(ValueError, match=r"3 channels, got 6"):
        ae.apply(variables, _features(), method=FeatureAutoEncoder.decode)
    with pytest.raises(ValueError, match=r"6 channels, got 5"):
        jax.eval_shape(ae.init, jax.random.PRNGKey(0), _features(c=5))


def test_autoencoder_learns_to_reconstruct(ae_and_variables):
    ae, variables = ae_and_variables
    x = _features(seed=2, n=2, h=6, w=6)
    tx = optax.adam(1e-2)

    def loss_fn(params):
        recon, _ = ae.apply({"params": params}, x)
        return jnp.mean((recon - x) ** 2)

    @jax.jit
    def train(params):
        def step(carry, _):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), None, length=60)
        return losses, loss_fn(params)

    losses, final = train(variables["params"])
    assert np.all(np.isfinite(losses))
    assert float(final) < 0.7 * float(losses[0]), (float(losses[0]), float(final))


def test_autoencoder_bfloat16_keeps_float32_params(ae_and_variables):
    _, variables = ae_and_variables
    x = _features()
    ae = FeatureAutoEncoder(dtype=jnp.bfloat16, **AE)
    assert _param_dtypes(ae, x) == {jnp.dtype(jnp.float32)}
    recon, code = _apply(ae, variables, x)
    assert recon.dtype == jnp.bfloat16 and code.dtype == jnp.bfloat16
    assert recon.shape == x.shape and code.shape == (4, 8, 8, 3)
    assert np.all(np.isfinite(np.asarray(recon, np.float32)))


@pytest.mark.parametrize("num_layers", [1, 3])
def test_adapter_shapes(num_layers):
    adapter = FeatureAdapter(features=3, num_layers=num_layers, hidden_features=5)
    x = _features(n=2, h=5, w=7, c=8)

    @jax.jit
    def init_and_apply(x):
        variables = adapter.init(jax.random.PRNGKey(0), x)
        return variables, adapter.apply(variables, x)

    variables, y = init_and_apply(x)
    params = variables["params"]
    assert set(params) == {f"conv_{i}" for i in range(num_layers)}
    assert params["conv_0"]["kernel"].shape == (3, 3, 8, 5 if num_layers > 1 else 3)
    assert params[f"conv_{num_layers - 1}"]["kernel"].shape[-1] == 3
    assert y.shape == (2, 5, 7, 3)
    assert np.any(np.asarray(y) < 0)  # linear last layer


def test_adapter_defaults_and_checks():
    adapter = FeatureAdapter(features=4)
    x = _features(n=1, h=4, w=4, c=8)
    shapes = jax.eval_shape(adapter.init, jax.random.PRNGKey(0), x)
    assert set(shapes["params"]) == {"conv_0", "conv_1", "conv_2"}
    assert shapes["params"]["conv_0"]["kernel"].shape == (3, 3, 8, 4)  # hidden = features
    assert shapes["params"]["conv_1"]["kernel"].shape == (3, 3, 4, 4)
    with pytest.raises(ValueError, match="num_layers"):
        jax.eval_shape(FeatureAdapter(features=4, num_layers=0).init, jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match=r"\(4, 4, 8\)"):
        jax.eval_shape(adapter.init, jax.random.PRNGKey(0), x[0])


def test_adapter_bfloat16_keeps_float32_params():
    x = _features(n=1, h=4, w=4, c=8)
    adapter = FeatureAdapter(features=3, dtype=jnp.bfloat16)

    @jax.jit
    def init_and_apply(x):
        variables = adapter.init(jax.random.PRNGKey(0), x)
        return variables, adapter.apply(variables, x)

    variables, y = init_and_apply(x)
    assert {p.dtype for p in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(jnp.float32)}
    assert y.dtype == jnp.bfloat16 and y.shape == (1, 4, 4, 3)
    assert np.all(np.isfinite(np.asarray(y, np.float32)))
