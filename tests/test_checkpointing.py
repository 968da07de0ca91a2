"""Tests for drd_jax.checkpointing (orbax CheckpointManager behind ``Checkpointer``)."""

import errno
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl import logging as absl_logging
from flax.training import train_state

from drd_jax.checkpointing import (
    Checkpointer,
    UnreadableCheckpointError,
    state_digest,
)
from drd_jax.config import hash_config
from drd_jax.files import DiskFullError
from experiments import quiet_orbax

FP = hash_config({"model": "tiny", "lr": 0.1})


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
    fp = hash_config(cfg, ignore=("workdir",))
    c = ckpt(tmp_path, config_fingerprint=fp, config=cfg)
    c.save(1000, make_state())
    c.close()
    on_disk = json.loads((tmp_path / "work" / "config.json").read_text())
    assert on_disk == {"config_fingerprint": fp, "config": cfg}
    same = hash_config({"workdir": "/b", "lr": 0.1}, ignore=["workdir"])
    ckpt(tmp_path, config_fingerprint=same).close()  # workdir ignored: same run
    other = hash_config({"lr": 0.2, "workdir": "/a"}, ignore=("workdir",))
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
    a = hash_config({"b": (1, 2), "a": {"y": np.float32(0.5), "x": "s"}})
    b = hash_config({"a": {"x": "s", "y": 0.5}, "b": [1, 2]})
    assert a == b and len(a) == 64
    assert a != hash_config({"a": {"x": "s", "y": 0.5}, "b": [2, 1]})
    assert hash_config({"a": {"x": 1, "d": 2}}, ignore=["a.d"]) == hash_config({"a": {"x": 1}})
    with pytest.raises(TypeError, match="not JSON"):
        hash_config({"f": object()})


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


# -- damaged checkpoints ------------------------------------------------------------------------


def truncate_largest_file(step_dir: pathlib.Path) -> pathlib.Path:
    """Cuts the largest file under ``step_dir`` to half its size (a damaged copy/disk)."""
    path = max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    os.truncate(path, path.stat().st_size // 2)
    return path


def save_steps(tmp_path, steps) -> dict[int, State]:
    """Saves ``make_state(step)`` at each step (distinct params), extra ``{"at": step}``."""
    states = {s: make_state(s) for s in steps}
    c = ckpt(tmp_path, save_interval_steps=1)
    for s, state in states.items():
        assert c.save(s, state, extra={"at": s})
    c.close()
    return states


def test_restore_falls_back_past_a_damaged_checkpoint(tmp_path, caplog):
    states = save_steps(tmp_path, (1, 2, 3))
    checkpoints = tmp_path / "work" / "checkpoints"
    truncate_largest_file(checkpoints / "3")
    c = ckpt(tmp_path, save_interval_steps=1)
    with caplog.at_level(logging.WARNING):
        state, extra = c.restore(target=make_state(9), fall_back=True)
    assert extra == {"at": 2}
    assert_trees_equal(state.params, states[2].params)
    # Moved aside with a warning naming both places, never deleted.
    moved = tmp_path / "work" / "damaged_checkpoints" / "3"
    assert moved.is_dir() and not (checkpoints / "3").exists()
    assert str(checkpoints / "3") in caplog.text and str(moved) in caplog.text
    assert c.latest_step() == 2 and c.all_steps() == [1, 2]
    assert c.save(3, states[3])  # the lost step can be written again
    c.close()


def test_reading_a_damaged_checkpoint_names_it_in_one_line(tmp_path):
    save_steps(tmp_path, (1, 2))
    damaged = tmp_path / "work" / "checkpoints" / "2"
    truncate_largest_file(damaged)
    reader = ckpt(tmp_path, read_only=True)
    for call in (
        lambda: reader.restore(2, target=make_state(9)),
        lambda: reader.restore(target=make_state(9)),  # the latest, without falling back
    ):
        with pytest.raises(UnreadableCheckpointError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message
        assert str(damaged) in message and "step 1" in message  # what else there is
    with pytest.raises(ValueError, match="read-only"):
        reader.restore(target=make_state(9), fall_back=True)
    reader.close()
    assert damaged.is_dir()  # a reader moves nothing


def test_nothing_readable_moves_nothing(tmp_path):
    """Every checkpoint failing (e.g. a state of another shape) is no proof of damage."""
    save_steps(tmp_path, (1, 2))

    class Wider(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(x)

    params = Wider().init(jax.random.key(0), jnp.ones((1, 3)))
    other = State.create(apply_fn=None, params=params, tx=optax.sgd(0.1), rng=jax.random.key(0))
    c = ckpt(tmp_path, save_interval_steps=1)
    with pytest.raises(UnreadableCheckpointError, match="no checkpoint .* can be read"):
        c.restore(target=other, fall_back=True)
    assert c.all_steps() == [1, 2]
    assert not (tmp_path / "work" / "damaged_checkpoints").exists()
    c.close()


def flip_bytes(step_dir: pathlib.Path, count: int = 16, seed: int = 0) -> pathlib.Path:
    """Inverts ``count`` bytes (seeded positions) in the middle of the largest data file of the
    step's state: damage that orbax may read back without an error, as garbage."""
    data = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    path = max(data, key=lambda p: p.stat().st_size)
    body = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    for i in rng.choice(np.arange(len(body) // 4, 3 * len(body) // 4), count, replace=False):
        body[i] ^= 0xFF
    path.write_bytes(bytes(body))
    return path


def edit_recorded_digest(step_dir: pathlib.Path) -> None:
    """Changes the state checksum recorded with a checkpoint (its state stays as saved)."""
    path = step_dir / "meta" / "metadata"
    meta = json.loads(path.read_text())
    meta["state_digest"] = "0" * 64
    path.write_text(json.dumps(meta))


def test_state_digest_covers_every_leaf_and_key_data():
    state = make_state(0)
    assert state_digest(state) == state_digest(make_state(0))
    for other in (
        make_state(1),
        state.replace(step=state.step + 1),
        state.replace(rng=jax.random.key(7)),
        state.replace(params=jax.tree.map(lambda x: x * 1.001, state.params)),
    ):
        assert state_digest(other) != state_digest(state)
    # The same values in a wider dtype (e.g. restored into a template with a Python int step).
    widened = state.replace(step=np.int64(state.step))
    assert state_digest(widened) == state_digest(state)


def big_state(seed: int) -> dict:
    """A state whose bytes are mostly array data (random: it does not compress)."""
    rng = np.random.default_rng(seed)
    return {"w": jnp.asarray(rng.normal(size=(128, 128)), jnp.float32), "step": jnp.int32(seed)}


@pytest.mark.parametrize("damage", [edit_recorded_digest, flip_bytes])
def test_changed_content_is_caught_by_its_checksum(tmp_path, damage):
    """Bytes changed on disk: every reader refuses the checkpoint in one line naming it, and a
    resuming writer moves it aside and restores the newest good one."""
    c = ckpt(tmp_path, save_interval_steps=1)
    for step in (1, 2, 3):
        assert c.save(step, big_state(step), extra={"at": step})
    c.close()
    checkpoints = tmp_path / "work" / "checkpoints"
    damage(checkpoints / "3")
    reader = ckpt(tmp_path, read_only=True)
    with pytest.raises(UnreadableCheckpointError) as info:
        reader.restore(3, target=big_state(9))
    reader.close()
    message = str(info.value)
    assert "\n" not in message and str(checkpoints / "3") in message
    assert "differs from the checksum recorded" in message
    c = ckpt(tmp_path, save_interval_steps=1)
    state, extra = c.restore(target=big_state(9), fall_back=True)
    c.close()
    assert extra == {"at": 2}
    assert_trees_equal(state, big_state(2))
    assert (tmp_path / "work" / "damaged_checkpoints" / "3").is_dir()


# -- config of a workdir without checkpoints ----------------------------------------------------


def test_a_workdir_without_checkpoints_takes_a_new_config(tmp_path):
    ckpt(tmp_path).close()  # e.g. a run refused after config.json was written
    other = hash_config({"model": "tiny", "lr": 0.2})
    ckpt(tmp_path, config_fingerprint=other, read_only=True).close()  # a reader changes nothing
    config_json = tmp_path / "work" / "config.json"
    assert json.loads(config_json.read_text())["config_fingerprint"] == FP
    c = ckpt(tmp_path, config_fingerprint=other, config={"lr": 0.2})
    assert json.loads(config_json.read_text()) == {
        "config_fingerprint": other,
        "config": {"lr": 0.2},
    }
    c.save(1000, make_state())
    c.close()
    with pytest.raises(ValueError, match="different config"):  # now it holds a trained step
        ckpt(tmp_path)


# -- logs ---------------------------------------------------------------------------------------


def orbax_records(records, below=logging.WARNING):
    return [r for r in records if f"{os.sep}orbax{os.sep}" in r.pathname and r.levelno < below]


@pytest.fixture
def quiet_tools():
    """The command-line tools' filters and hooks (``experiments.quiet_orbax``; the library installs
    none: ``test_the_library_changes_no_hook_logger_or_warnings_filter``)."""
    quiet_orbax.install()


NO_SIDE_EFFECTS = r"""
import json, logging, sys, warnings
from absl import logging as absl_logging

def snapshot():
    loggers = ["", "absl", "asyncio", "orbax", "jax"]
    return {
        "excepthook": repr(sys.excepthook),
        "unraisablehook": repr(sys.unraisablehook),
        "showwarning": repr(warnings.showwarning),
        "warning_filters": repr(warnings.filters),
        "logger_filters": {n: repr(logging.getLogger(n).filters) for n in loggers},
        "absl_handler_filters": repr(absl_logging.get_absl_handler().filters),
        "absl_verbosity": absl_logging.get_verbosity(),
    }

# The libraries drd_jax builds on set their own filters when imported (numpy does): import them
# first, so that the snapshots differ only by what drd_jax does.
import numpy, jax, flax.linen, optax, orbax.checkpoint, ml_collections, tqdm  # noqa
import tensorflow_datasets, grain, array_record, PIL.Image, scipy.io, h5py  # noqa
before = snapshot()
import pkgutil, importlib, pathlib, os
import drd_jax
for m in pkgutil.walk_packages(drd_jax.__path__, "drd_jax."):
    importlib.import_module(m.name)
import jax.numpy as jnp
from drd_jax.checkpointing import Checkpointer, UnreadableCheckpointError
work = pathlib.Path(sys.argv[1])
c = Checkpointer(work, config_fingerprint="fp", save_interval_steps=1)
c.save(1, {"w": jnp.ones((64, 64))})
c.save(2, {"w": jnp.ones((64, 64))}, metrics={"mean_iou": 0.5})
c.close()
big = max((p for p in (work / "checkpoints" / "2").rglob("*") if p.is_file()),
          key=lambda p: p.stat().st_size)
os.truncate(big, big.stat().st_size // 2)
reader = Checkpointer(work, config_fingerprint="fp", read_only=True)
reader.metrics(2)
try:
    reader.restore(2, target={"w": jnp.zeros((64, 64))})
except UnreadableCheckpointError:
    pass
reader.close()
after = snapshot()
print(json.dumps({"same": before == after, "before": before, "after": after}))
"""


@pytest.mark.integration
def test_the_library_changes_no_hook_logger_or_warnings_filter(tmp_path):
    """Importing every drd_jax module, saving, reading and failing to restore a checkpoint leave
    the process's hooks, logger filters, warnings filters and absl verbosity as they were."""
    proc = subprocess.run(
        [sys.executable, "-c", NO_SIDE_EFFECTS, str(tmp_path / "work")],
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["same"], (result["before"], result["after"])


def test_the_tools_install_their_filters_once(quiet_tools):
    hooks = (sys.excepthook, sys.unraisablehook, warnings.showwarning)
    filters = list(logging.getLogger("absl").filters)
    quiet_orbax.install()
    assert (sys.excepthook, sys.unraisablehook, warnings.showwarning) == hooks
    assert logging.getLogger("absl").filters == filters


@pytest.fixture
def absl_info():
    """absl (hence orbax) logging at INFO, as under ``absl.app`` with the default verbosity."""
    old = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.INFO)
    yield
    absl_logging.set_verbosity(old)


def test_the_tools_keep_orbax_quiet_by_default(tmp_path, caplog, absl_info, quiet_tools):
    with caplog.at_level(logging.INFO):
        c = ckpt(tmp_path, save_interval_steps=1, async_save=True)
        c.save(1, make_state())  # no metrics: orbax would warn 'Requested tracked_metric'
        c.save(2, make_state(), metrics={"mean_iou": 0.5})
        c.restore(target=make_state())
        c.close()
    assert not orbax_records(caplog.records), orbax_records(caplog.records)[:3]
    assert "tracked_metric" not in caplog.text
    c = ckpt(tmp_path)
    assert c.best_step() == 2  # the checkpoint without metrics competes only for the latest slots
    c.close()


def test_a_reader_asking_for_metrics_is_quiet(tmp_path, caplog):
    """A fresh read-only manager's first question is a step's metrics (export's card): orbax
    warned twice per item that it 'could not be restored' without its handler."""
    c = ckpt(tmp_path, save_interval_steps=1)
    c.save(1, make_state(), metrics={"mean_iou": 0.5})
    c.close()
    with caplog.at_level(logging.WARNING):
        reader = ckpt(tmp_path, read_only=True)
        assert reader.metrics(1) == {"mean_iou": 0.5}
        reader.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_after_a_failed_read_abandoned_reads_are_not_printed(tmp_path, quiet_tools):
    """Each array of a failed restore whose read orbax abandons ends as asyncio's "exception was
    never retrieved" with a traceback: after the one-line error, they say nothing more."""
    save_steps(tmp_path, (1,))
    truncate_largest_file(tmp_path / "work" / "checkpoints" / "1")
    reader = ckpt(tmp_path, read_only=True)
    with pytest.raises(UnreadableCheckpointError):
        reader.restore(1, target=make_state(9))
    reader.close()
    record = logging.LogRecord(
        "asyncio", logging.ERROR, __file__, 1, "Future exception was never retrieved", (), None
    )
    assert not logging.getLogger("asyncio").filter(record)


def test_orbax_logs_again_at_verbosity_1(tmp_path, caplog, absl_info, quiet_tools):
    absl_logging.set_verbosity(1)  # what `--verbosity=1` sets
    with caplog.at_level(logging.DEBUG):
        c = ckpt(tmp_path, save_interval_steps=1)
        c.save(1, make_state())
        c.close()
    assert orbax_records(caplog.records)
    assert "tracked_metric" in caplog.text


# -- disk full ----------------------------------------------------------------------------------


@pytest.fixture
def small_fs(small_tmpfs):
    """A 1 MiB tmpfs (skips without root or permission to mount)."""
    return small_tmpfs("1m")


def fill(directory: pathlib.Path, keep_free: int = 0) -> pathlib.Path:
    """Writes a file into ``directory`` until the file system has ``keep_free`` bytes left."""
    filler = directory / "filler"
    free = shutil.disk_usage(directory).free - keep_free
    with open(filler, "wb") as f:
        try:
            f.write(b"\1" * max(free, 0))
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


def test_disk_full_names_the_path_and_the_space_needed(small_fs):
    state = make_state()
    c = Checkpointer(small_fs / "work", config_fingerprint=FP, save_interval_steps=1)
    c.save(1, state)
    c.wait()
    filler = fill(small_fs)
    with pytest.raises(DiskFullError) as info:
        c.save(2, state)
        c.wait()
    message = str(info.value)
    assert info.value.errno == errno.ENOSPC and "\n" not in message
    assert str(small_fs / "work" / "checkpoints") in message
    assert "no space left" in message and "needs about" in message and "free" in message
    assert "step 1" in message  # where a rerun resumes
    c.close()  # after the error: no second one
    filler.unlink()
    # Space freed, the last good checkpoint is there to resume from. (Saving again in this same
    # process races the failed save's orbax threads over its tmp directory; a real run exits on
    # the error, and tests/test_disk_full.py resumes a real process to the end.)
    reader = Checkpointer(small_fs / "work", config_fingerprint=FP, read_only=True)
    assert reader.latest_step() == 1


def test_disk_full_in_orbax_becomes_one_disk_full_error(tmp_path, monkeypatch):
    """Without a small file system: what orbax/TensorStore raise on ENOSPC, simulated."""
    c = ckpt(tmp_path, save_interval_steps=1)
    c.save(1, make_state())

    def full(*args, **kwargs):
        raise ValueError(
            'RESOURCE_EXHAUSTED: Error writing "params/0" in OCDBT database: Failed to write '
            "69254 bytes to file 11: No space left on device [os_error_code='28']"
        )

    monkeypatch.setattr(c._manager, "save", full)
    with pytest.raises(DiskFullError, match=r"no space left .*checkpoints.*step 1"):
        c.save(2, make_state())
    c.close()
