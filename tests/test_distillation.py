"""The distillation methods beside VTCE inside training: features, the student step's terms, the
WGAN-GP critic, the knowledge-adaptation auto-encoder stage, pmap/jit, resume (tiny, CPU)."""

import functools
import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from drd_jax import config as config_lib
from drd_jax import distillation, losses, parallel, runs, steps, train
from drd_jax import state as state_lib
from drd_jax.metric_writers import read_jsonl
from drd_jax.models import FEATURE_LAYERS, DeepLabVGG16, apply_with_features
from experiments.configs import synthetic

pytestmark = pytest.mark.usefixtures("fast_compile")

NUM_CLASSES = 4
ALL_TERMS = {
    "vtce_weight": 1.0,
    "pixel_kd_weight": 10.0,
    "pair_kd_weight": 0.5,
    "holistic_kd_weight": 0.1,
    "adaptation_weight": 50.0,
    "affinity_weight": 1.0,
}
TERM_OF_FIELD = {
    "vtce_weight": "vtce_loss",
    "pixel_kd_weight": "pixel_kd_loss",
    "pair_kd_weight": "pair_kd_loss",
    "holistic_kd_weight": "holistic_kd_loss",
    "adaptation_weight": "adaptation_loss",
    "affinity_weight": "affinity_loss",
}


def tiny(data_dir=None, **overrides):
    c = synthetic.get_config("tiny")
    c.data_dir = data_dir or ""
    c.mode = "student"
    c.dropout_rate = 0.0
    c.vtce_weight = 0.0
    for k, v in overrides.items():
        c[k] = v
    return c


def _batch(seed, n=2, size=32):
    rng = np.random.default_rng(seed)
    return {
        "image": jnp.asarray(rng.normal(size=(n, size, size, 3)), jnp.float32),
        "depth": jnp.asarray(rng.uniform(0.5, 5.0, size=(n, size, size)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, NUM_CLASSES, size=(n, size, size)), jnp.int32),
    }


@functools.cache
def _teacher_params():
    return state_lib.init_params(tiny(), jax.random.PRNGKey(7), NUM_CLASSES)


def _setup(**weights):
    """(config, state, Distillation, step function) of a student with ``weights``."""
    config = tiny(batch_size=2, **weights)  # the global batch of _batch()
    # A plain network stands in for the teacher here (these tests are about the student's step;
    # compiling a D-Conv teacher would only slow them down). Whole runs below use a real one.
    teacher_model = state_lib.make_model(config, NUM_CLASSES, depth_aware=False)
    state = state_lib.create_train_state(config, jax.random.PRNGKey(0), num_classes=NUM_CLASSES)
    kd = distillation.make_distillation(config, teacher_model)
    step = steps.make_train_step(
        config, num_classes=NUM_CLASSES, num_train_images=16, distillation=kd
    )
    return config, state, kd, step


# -- features ------------------------------------------------------------------------------------


def test_features_come_from_the_same_forward_pass():
    model = DeepLabVGG16(NUM_CLASSES, width=1 / 16, dropout_rate=0.0)
    image = _batch(0)["image"]
    variables = model.init(jax.random.PRNGKey(0), image)
    assert set(variables) == {"params"}  # nothing sown unless asked for
    logits, features = apply_with_features(model.apply, variables, image)
    np.testing.assert_array_equal(logits, model.apply(variables, image))
    assert set(features) == set(FEATURE_LAYERS)
    assert features["conv5_3"].shape == (2, 4, 4, 32)
    assert features["fc6"].shape == features["fc7"].shape == (2, 4, 4, 64)
    assert all(float(jnp.min(f)) >= 0.0 for f in features.values())  # post-ReLU
    # fc7's features are what fc8 (1×1) turns into the stride-8 logits.
    fc8 = variables["params"]["fc8"]
    coarse = features["fc7"] @ fc8["kernel"][0, 0] + fc8["bias"]
    resized = jax.image.resize(coarse, logits.shape, method="bilinear")
    np.testing.assert_allclose(resized, logits, rtol=1e-5, atol=1e-5)


# -- config --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"mode": "baseline", "pixel_kd_weight": 1.0}, "pixel_kd_weight"),
        ({"mode": "teacher", "holistic_kd_weight": 0.1}, "holistic_kd_weight"),
        ({"affinity_weight": 1.0}, "teacher_workdir"),
        ({"pair_kd_weight": -1.0, "teacher_workdir": "x"}, "pair_kd_weight"),
        ({"kd_feature_layer": "conv1_1"}, "kd_feature_layer"),
        ({"pair_kd_node_scale": 0.0}, "pair_kd_node_scale"),
        ({"critic_learning_rate": 0.0}, "critic_learning_rate"),
        ({"ka_code_features": 0}, "ka_code_features"),
    ],
)
def test_config_errors_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=f"config.{field}"):
        config_lib.validate_config(tiny(**overrides))


def test_runs_without_the_new_methods_keep_their_fingerprint():
    config = tiny()
    old = ml_collections.ConfigDict(config.to_dict())
    for field in distillation.KD_FIELDS:  # a config written before these fields existed
        del old[field]
    assert config_lib.fingerprint(old) == config_lib.fingerprint(config)
    changed = tiny(critic_learning_rate=1e-3)  # irrelevant while no method uses it
    assert config_lib.fingerprint(changed) == config_lib.fingerprint(config)
    on = tiny(holistic_kd_weight=0.1)
    assert config_lib.fingerprint(on) != config_lib.fingerprint(config)
    assert config_lib.fingerprint(on) != config_lib.fingerprint(
        tiny(holistic_kd_weight=0.1, **{"critic_learning_rate": 1e-3})
    )
    # Such a config still makes a train state (load_run of an old student run does this).
    state = state_lib.create_train_state(old, jax.random.PRNGKey(0), num_classes=NUM_CLASSES)
    assert state.critic is None and state.adapter is None


# -- the student step ----------------------------------------------------------------------------


@pytest.mark.integration  # a whole train step
def test_every_term_is_in_the_loss_and_each_network_gets_its_update():
    config, state, kd, step = _setup(**ALL_TERMS)
    assert state.critic is not None and state.adapter is not None
    assert state.autoencoder_params is not None
    new, m = jax.jit(step)(state, _batch(1), _teacher_params())
    m = jax.device_get(m)
    assert bool(m["finite"])
    expected = float(m["ce_loss"])
    for field, weight in ALL_TERMS.items():
        term = float(m[TERM_OF_FIELD[field]])
        assert math.isfinite(term) and term != 0.0, field
        expected += weight * term
    assert float(m["loss"]) == pytest.approx(float(expected), rel=1e-5)
    for key in ("critic_loss", "critic_wasserstein", "gradient_penalty"):
        assert math.isfinite(float(m[key]))

    def changed(a, b):
        pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
        return any(not np.array_equal(x, y) for x, y in pairs)

    assert changed(new.params, state.params)
    assert changed(new.critic.params, state.critic.params)
    assert changed(new.adapter.params, state.adapter.params)
    assert not changed(new.autoencoder_params, state.autoencoder_params)  # frozen after its stage
    assert int(new.critic.step) == int(new.adapter.step) == 1


@pytest.mark.integration  # a whole train step
def test_only_switched_on_terms_are_computed():
    _, state, _, step = _setup(pixel_kd_weight=10.0)
    assert state.critic is None and state.adapter is None and state.autoencoder_params is None
    _, m = jax.jit(step)(state, _batch(2), _teacher_params())
    assert "pixel_kd_loss" in m and "pair_kd_loss" not in m and "critic_loss" not in m
    assert float(m["vtce_loss"]) == 0.0
    assert float(m["loss"]) == pytest.approx(
        float(m["ce_loss"]) + 10.0 * float(m["pixel_kd_loss"]), rel=1e-5
    )


@pytest.mark.integration  # a whole train step
def test_the_critic_step_trains_only_the_critic_and_is_the_wgan_gp_step():
    config, state, kd, step = _setup(holistic_kd_weight=0.1)
    batch, teacher_params = _batch(3), _teacher_params()
    teacher_logits = jax.jit(kd.teacher_model.apply)({"params": teacher_params}, batch["image"])
    real = jax.nn.softmax(teacher_logits)
    epsilon = jnp.array([0.25, 0.75])

    def critic_loss_of_student(student_params, critic_params):
        logits = state.apply_fn({"params": student_params}, batch["image"])
        loss, _ = distillation.critic_loss(
            critic_params,
            kd.critic,
            real,
            jax.nn.softmax(logits),
            epsilon=epsilon,
            gp_weight=10.0,
            image_denominator=2.0,
        )
        return loss

    g_student, g_critic = jax.jit(jax.grad(critic_loss_of_student, argnums=(0, 1)))(
        state.params, state.critic.params
    )
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(g_student))
    assert any(float(jnp.max(jnp.abs(g))) > 0.0 for g in jax.tree.leaves(g_critic))

    # The student's holistic term moves the student (through the critic's score).
    def generator_term(student_params):
        logits = state.apply_fn({"params": student_params}, batch["image"])
        scores = kd.critic.apply({"params": state.critic.params}, jax.nn.softmax(logits))
        return jnp.mean(losses.wgan_generator_loss(scores))

    g = jax.jit(jax.grad(generator_term))(state.params)
    assert any(float(jnp.max(jnp.abs(x))) > 0.0 for x in jax.tree.leaves(g))

    # In the step: one Adam step of the critic on this step's student scores (dropout is off, so
    # the train-mode logits are the ones computed here), with the step's own penalty weights.
    new, m = jax.jit(step)(state, batch, teacher_params)
    epsilon = distillation.penalty_weights(
        state.dropout_rng, state.step, local_batch=2, global_batch=2
    )
    student_logits = jax.jit(state.apply_fn)({"params": state.params}, batch["image"])
    critic_grad = jax.jit(
        jax.value_and_grad(distillation.critic_loss, has_aux=True),
        static_argnums=1,
        static_argnames=("gp_weight", "image_denominator"),
    )
    (loss, _), grads = critic_grad(
        state.critic.params,
        kd.critic,
        real,
        jax.nn.softmax(student_logits),
        epsilon=epsilon,
        gp_weight=config.critic_gp_weight,
        image_denominator=2.0,
    )
    assert float(m["critic_loss"]) == pytest.approx(float(loss), rel=1e-4, abs=1e-6)
    want = state.critic.apply_gradients(grads=grads).params
    for a, b in zip(jax.tree.leaves(new.critic.params), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.integration  # a whole train step
def test_pmap_jit_and_one_device_agree_with_the_critic_and_adapter():
    weights = {"holistic_kd_weight": 0.1, "adaptation_weight": 50.0}
    _, state0, _, step = _setup(**weights)
    teacher_params = _teacher_params()
    batches = [_batch(10), _batch(11)]
    results = {}
    for kind, devices in (("jit", 1), ("pmap", 2)):  # (jit over 2 devices: test_train.py)
        par = parallel.DataParallel(kind, devices)
        fn = par.compile(step)
        state = par.put_state(state0)
        tparams = par.put_state(teacher_params)
        for batch in batches:
            if kind == "pmap":
                batch = {k: v.reshape((2, 1) + v.shape[1:]) for k, v in batch.items()}
            state, m = fn(state, par.shard_batch(batch), tparams)
        results[(kind, devices)] = (jax.device_get(par.unreplicate(state)), par.host(m))
    ref_state, ref_m = results[("jit", 1)]
    for key, (s, m) in results.items():
        for name in ("loss", "holistic_kd_loss", "adaptation_loss", "critic_loss"):
            assert float(m[name]) == pytest.approx(float(ref_m[name]), rel=2e-4, abs=1e-6), key
        for tree in ("params", "critic", "adapter"):
            a, b = jax.tree.leaves(getattr(s, tree)), jax.tree.leaves(getattr(ref_state, tree))
            for x, y in zip(a, b, strict=True):
                np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5, err_msg=f"{key} {tree}")


# -- whole runs: the auto-encoder stage and resume -----------------------------------------------


@pytest.fixture(scope="module")
def teacher_dir(tiny_teacher_run):
    """The session's tiny teacher run (read only)."""
    return tiny_teacher_run.workdir


def _ka_config(data_dir, teacher_dir, **overrides):
    return tiny(
        data_dir,
        init="teacher",
        teacher_workdir=str(teacher_dir),
        adaptation_weight=50.0,
        affinity_weight=1.0,
        ka_autoencoder_steps=12,
        ka_autoencoder_learning_rate=3e-4,
        log_every_steps=1,
        **overrides,
    )


def test_the_autoencoder_stage_learns_and_a_resumed_run_does_not_redo_it(
    data_dir, teacher_dir, tmp_path
):
    config = _ka_config(data_dir, teacher_dir)
    result = train.train_and_evaluate(config, tmp_path / "whole")
    stage = read_jsonl(tmp_path / "whole" / "autoencoder" / "metrics.jsonl")
    assert [r["step"] for r in stage if r["split"] == "train"] == list(range(1, 13))
    held_out = {
        r["step"]: r["scalars"]["reconstruction_loss"] for r in stage if r["split"] == "eval"
    }
    assert set(held_out) == {0, 12}
    assert held_out[12] < 0.7 * held_out[0], held_out
    student = read_jsonl(tmp_path / "whole" / "metrics.jsonl")
    train_scalars = [r["scalars"] for r in student if r["split"] == "train"]
    assert all(s["adaptation_loss"] > 0 and s["affinity_loss"] > 0 for s in train_scalars)

    # Interrupted after 2 of 4 steps, then resumed: the same final params, and the auto-encoder
    # comes back from the checkpoint instead of being trained again.
    part = tmp_path / "resumed"
    stopped = train.train_and_evaluate(_ka_config(data_dir, teacher_dir, stop_after_steps=2), part)
    assert stopped["stopped_at_step"] == 2
    stage_file = part / "autoencoder" / "metrics.jsonl"
    before = stage_file.read_bytes()
    resumed = train.train_and_evaluate(config, part)
    assert stage_file.read_bytes() == before
    assert resumed["params_fingerprint"] == result["params_fingerprint"]
    final = json.loads((part / runs.FINAL_METRICS_NAME).read_text())
    assert final["confusion_matrix"] == result["confusion_matrix"]
    run = runs.load_run(part)
    assert run.params is not None and run.config.adaptation_weight == 50.0
