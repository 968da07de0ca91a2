"""drd_jax.divergence: the monitor alone, and a training run that stops on an exploding loss."""

import doctest
import json
import math
import re

import jax.numpy as jnp
import ml_collections
import pytest
from helpers import tiny

from drd_jax import config as config_lib
from drd_jax import divergence, runs, steps, train
from drd_jax.checkpointing import Checkpointer
from drd_jax.divergence import DivergenceMonitor, TrainingDivergedError
from drd_jax.metric_writers import read_jsonl

pytestmark = pytest.mark.usefixtures("fast_compile")


def test_reports_the_first_value_above_factor_times_the_recent_median():
    monitor = DivergenceMonitor(100.0, window=5, warmup=3)
    for loss in (2.0, 1.5, 1.2, 1.0, 0.9):
        assert monitor.check(loss) is None
    # The median of the last 5 values (2.0, 1.5, 1.2, 1.0, 0.9) is 1.2: 120 passes, 121 does not.
    assert monitor.check(120.0) is None
    # Now the window holds 1.5, 1.2, 1.0, 0.9, 120: median 1.2 still.
    problem = monitor.check(1.2 * 100 + 1)
    assert problem is not None and "median 1.2" in problem and "limit 100" in problem
    # A reported value is not recorded: the reference stays, so the same value is reported again.
    assert monitor.check(121.0) is not None
    assert monitor.check(1.1) is None


def test_warmup_off_and_non_finite_values():
    monitor = DivergenceMonitor(10.0, warmup=3)
    assert monitor.check(1.0) is None
    assert monitor.check(1e6) is None  # second value: still warming up (early spikes are common)
    assert monitor.check(1.0) is None
    assert monitor.check(1e6) is not None  # median of (1, 1e6, 1) is 1
    for value in (math.inf, math.nan):  # left to the in-step finite flag
        assert monitor.check(value) is None
    off = DivergenceMonitor(0.0, warmup=1)
    assert not off.enabled
    assert all(off.check(v) is None for v in (1.0, 1.0, 1e30))
    zero = DivergenceMonitor(10.0, warmup=1)
    assert zero.check(0.0) is None and zero.check(5.0) is None  # no ratio to a zero median


@pytest.mark.parametrize("kwargs", [{"factor": 1.0}, {"factor": -3.0}, {"factor": 10, "window": 0}])
def test_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="factor|window"):
        DivergenceMonitor(**kwargs)


def test_docstring_examples():
    result = doctest.testmod(divergence)
    assert result.attempted > 0 and result.failed == 0


def test_divergence_factor_is_checked_and_not_in_the_fingerprint():
    c = tiny("")
    for bad in (0.5, 1.0, -1.0):
        c.divergence_factor = bad
        with pytest.raises(ValueError, match=r"config\.divergence_factor"):
            config_lib.validate_config(c)
    c.divergence_factor = 0.0
    config_lib.validate_config(c)
    old = ml_collections.ConfigDict(c.to_dict())
    del old["divergence_factor"]  # a workdir written before the field existed
    assert (
        config_lib.fingerprint(old) == config_lib.fingerprint(c) == config_lib.fingerprint(tiny(""))
    )


EXPLODES_AT = 12  # the step (counter before the update) whose cross-entropy is multiplied


@pytest.fixture
def exploding_cross_entropy(monkeypatch):
    """``train_step`` whose reported cross-entropy is 1e4 × the real one from step 12 on.

    The loop sees what it would see from a diverging run (finite, huge); everything after the
    step (the check, the error, the checkpoints, the resume) is the real code.
    """
    real_step = steps.train_step

    def step(state, *args, **kwargs):
        new_state, metrics = real_step(state, *args, **kwargs)
        blown = jnp.where(state.step >= EXPLODES_AT, 1e4, 1.0)
        return new_state, {**metrics, "ce_loss": metrics["ce_loss"] * blown}

    monkeypatch.setattr(steps, "train_step", step)


def test_an_exploding_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
    data_dir, tmp_path, exploding_cross_entropy, caplog
):
    c = tiny(data_dir, num_train_steps=20, checkpoint_every_steps=5, log_every_steps=1)
    with pytest.raises(TrainingDivergedError, match=r"diverged at step 12") as info:
        train.train_and_evaluate(c, tmp_path)
    message = str(info.value)
    assert isinstance(info.value, FloatingPointError)
    assert "last good checkpoint: step 10" in message and "divergence_factor" in message
    assert re.search(r"limit 100 x", message)
    assert any("diverged at step 12" in r.getMessage() for r in caplog.records)  # logged too
    assert not (tmp_path / runs.FINAL_METRICS_NAME).exists()
    body = json.loads((tmp_path / "config.json").read_text())
    ckpt = Checkpointer(tmp_path, config_fingerprint=body["config_fingerprint"], read_only=True)
    try:
        assert ckpt.latest_step() == 10  # nothing of steps 11-13 was saved
    finally:
        ckpt.close()
    logged = [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    assert logged == list(range(1, 13))  # the exploded step is not logged as a normal one

    # The user's way on: the same command with the check off resumes from step 10 and finishes.
    c.divergence_factor = 0.0
    result = train.train_and_evaluate(c, tmp_path)
    assert result["steps"] == 20 and math.isfinite(result["mean_iou"])
    logged = [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    assert logged == list(range(1, 21))
