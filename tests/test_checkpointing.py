"""Tests for drd_jax.checkpointing (orbax CheckpointManager behind ``Checkpointer``)."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

from drd_jax.checkpointing import Checkpointer, config_fingerprint

FP = config_fingerprint({"model": "tiny", "lr": 0.1})


class TinyMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2)(nn.relu(nn.Dense(4)(x)))


class State(train_state.TrainState):
    rng: jax.Array


def make_state(seed: int = 0) -> State:
    model = TinyMLP()
    params = model.init(jax.random.key(seed), jnp.ones((1, 3)))
    return State.create(
        apply_fn=model.apply,
        params=params,
        tx=optax.sgd(0.1, momentum=0.9),
        rng=jax.random.key(seed + 100),
    )


def trained_state() -> State:
    """A state whose params, momentum trace, step and rng all differ from ``make_state(1)``."""
    state = make_state(0)
    for _ in range(2):
        grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), state.params)
        state = state.apply_gradients(grads=grads)
    return state.replace(rng=jax.random.split(state.rng)[0])


def ckpt(tmp_path, **kw) -> Checkpointer:
    kw.setdefault("config_fingerprint", FP)
    kw.setdefault("async_save", False)
    return Checkpointer(tmp_path / "work", **kw)


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert jax.dtypes.issubdtype(y.dtype, jax.dtypes.prng_key)
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_restores_state_and_extra(tmp_path):
    state = trained_state()
    extra = {"epoch": 3, "data_position": [1, 2], "rng": np.asarray([7, 8], np.uint32)}
    c = Checkpointer(tmp_path / "work", config_fingerprint=FP, save_interval_steps=2)  # async
    assert c.save(2, state, extra=extra)
    c.close()

    c = ckpt(tmp_path, save_interval_steps=2)
    template = make_state(1)
    restored, got_extra = c.restore(target=template)
    assert isinstance(restored, State)
    assert_trees_equal(restored.params, state.params)
    assert_trees_equal(restored.opt_state, state.opt_state)  # sgd momentum trace
    assert int(restored.step) == 2
    np.testing.assert_array_equal(jax.random.key_data(restored.rng), jax.random.key_data(state.rng))
    assert restored.apply_fn is template.apply_fn and restored.tx is template.tx
    assert got_extra == {"epoch": 3, "data_position": [1, 2], "rng": [7, 8]}
    # the restored state trains on exactly like the original
    g = jax.tree.map(jnp.ones_like, state.params)
    assert_trees_equal(
        restored.apply_gradients(grads=g).params, state.apply_gradients(grads=g).params
    )
    c.close()


def test_interval_latest_and_max_to_keep(tmp_path):
    state = make_state()
    c = ckpt(tmp_path, save_interval_steps=10, max_to_keep=2)
    assert c.latest_step() is None
    saved = [s for s in (5, 10, 15, 20, 25, 30) if c.save(s, state)]
    assert saved == [10, 20, 30]
    assert c.save(37, state, force=True)  # final save off the interval
    assert not c.save(37, state, force=True)  # already there: no error, nothing written
    assert not c.save(30, state)  # older than latest
    assert c.latest_step() == 37
    assert c.all_steps() == [30, 37]  # latest 2 kept, no metrics -> no best
    assert c.best_step() is None
    c.close()
    assert ckpt(tmp_path).latest_step() == 37  # visible to a new process


def test_best_is_kept_beyond_max_to_keep(tmp_path):
    state = make_state()
    c = ckpt(tmp_path, save_interval_steps=1, max_to_keep=2)
    for step, miou in [(1, 0.2), (2, 0.6), (3, 0.4), (4, float("nan")), (5, 0.5)]:
        assert c.save(step, state, metrics={"mean_iou": miou, "loss": 1.0})
    c.save(6, state)
    assert c.best_step() == 2
    assert c.all_steps() == [2, 5, 6]
    c.close()
    c = ckpt(tmp_path, max_to_keep=2)  # ranking survives a restart
    assert c.best_step() == 2
    restored, _ = c.restore(c.best_step(), target=state)
    assert int(restored.step) == 0
    with pytest.raises(ValueError, match="mean_iou"):
        c.save(8, state, metrics={"loss": 1.0})
    c.close()


def test_min_mode(tmp_path):
    state = make_state()
    c = ckpt(tmp_path, save_interval_steps=1, best_metric="loss", best_mode="min")
    for step, loss in [(1, 3.0), (2, 1.0), (3, 2.0)]:
        c.save(step, state, metrics={"loss": loss})
    assert c.best_step() == 2
    c.close()


def test_mismatched_config_is_refused(tmp_path):
    cfg = {"lr": 0.1, "workdir": "/a"}
    fp = config_fingerprint(cfg, ignore=("workdir",))
    c = ckpt(tmp_path, config_fingerprint=fp, config=cfg)
    c.save(1000, make_state())
    c.close()
    on_disk = json.loads((tmp_path / "work" / "config.json").read_text())
    assert on_disk == {"config_fingerprint": fp, "config": cfg}
    same = config_fingerprint({"workdir": "/b", "lr": 0.1}, ignore=["workdir"])
    ckpt(tmp_path, config_fingerprint=same).close()  # workdir ignored: same run
    other = config_fingerprint({"lr": 0.2, "workdir": "/a"}, ignore=("workdir",))
    with pytest.raises(ValueError, match=r"work.*different config.*new workdir"):
        ckpt(tmp_path, config_fingerprint=other)


def test_restore_without_checkpoint_raises(tmp_path):
    c = ckpt(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        c.restore(target=make_state())
    c.save(1000, make_state())
    with pytest.raises(FileNotFoundError, match=r"step 5 .*\[1000\]"):
        c.restore(5, target=make_state())
    c.close()


def test_interrupted_save_is_not_latest(tmp_path):
    state = make_state()
    c = ckpt(tmp_path, save_interval_steps=1)
    c.save(1, state)
    c.close()
    # What a crash mid-write leaves: orbax writes into a tmp dir and renames it when complete.
    stale = tmp_path / "work" / "checkpoints" / "2.orbax-checkpoint-tmp-1234567"
    (stale / "state").mkdir(parents=True)
    (stale / "state" / "partial").write_bytes(b"\0" * 10)
    c = ckpt(tmp_path, save_interval_steps=1)
    assert c.latest_step() == 1
    assert c.save(2, state)
    assert c.latest_step() == 2
    assert not stale.exists()  # removed in the background on open, awaited by the next save
    c.close()


def test_config_fingerprint_is_canonical():
    a = config_fingerprint({"b": (1, 2), "a": {"y": np.float32(0.5), "x": "s"}})
    b = config_fingerprint({"a": {"x": "s", "y": 0.5}, "b": [1, 2]})
    assert a == b and len(a) == 64
    assert a != config_fingerprint({"a": {"x": "s", "y": 0.5}, "b": [2, 1]})
    assert config_fingerprint({"a": {"x": 1, "d": 2}}, ignore=["a.d"]) == config_fingerprint(
        {"a": {"x": 1}}
    )
    with pytest.raises(TypeError, match="not JSON"):
        config_fingerprint({"f": object()})


def test_bad_extra_is_rejected_before_writing(tmp_path):
    c = ckpt(tmp_path, save_interval_steps=1)
    with pytest.raises(ValueError, match="finite"):
        c.save(1, make_state(), extra={"x": float("inf")})
    assert c.latest_step() is None
    c.close()


def test_read_only_reader_leaves_a_writer_alone(tmp_path):
    """A reader (e.g. a student loading its teacher) never deletes a save in progress or writes."""
    state = trained_state()
    c = ckpt(tmp_path, save_interval_steps=1)
    c.save(1, state, extra={"class_names": ["a", "b"]})
    c.close()
    in_progress = tmp_path / "work" / "checkpoints" / "2.orbax-checkpoint-tmp-7654321"
    (in_progress / "state").mkdir(parents=True)
    config_json = (tmp_path / "work" / "config.json").read_bytes()
    reader = ckpt(tmp_path, read_only=True)
    assert reader.read_extra() == {"class_names": ["a", "b"]}
    restored, _ = reader.restore(target=make_state(1))
    assert_trees_equal(restored.params, state.params)
    assert int(restored.step) == int(state.step)
    with pytest.raises(RuntimeError, match="read-only"):
        reader.save(3, state, force=True)
    reader.close()
    assert in_progress.exists()
    assert (tmp_path / "work" / "config.json").read_bytes() == config_json
    # A read-only reader of a missing run writes nothing either.
    with pytest.raises(FileNotFoundError):
        Checkpointer(tmp_path / "nothing", config_fingerprint=FP, read_only=True).restore(
            target=state
        )
    assert not (tmp_path / "nothing" / "config.json").exists()
