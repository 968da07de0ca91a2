"""The asynchronous step loop: metrics reach the host only at sync steps, every step is still
checked, in order, before anything after it is logged or kept."""

import jax.numpy as jnp
import numpy as np
import pytest

from drd_jax import loop


class CountingParallel:
    """The two ``DataParallel`` methods the loop uses, counting the host transfers."""

    def __init__(self):
        self.host_calls = 0

    def shard_batch(self, batch):
        return batch

    def host(self, tree):
        self.host_calls += 1
        return [{k: np.asarray(v) for k, v in m.items()} for m in tree]


class Writer:
    def __init__(self):
        self.rows = []

    def write_scalars(self, step, scalars, split):
        self.rows.append((step, split, scalars["loss"]))


def step_fn(state, batch):
    loss = jnp.asarray(batch, jnp.float32)
    return state + 1, {"loss": loss, "finite": jnp.isfinite(loss)}


def require_finite(checked):
    def check(metrics, step):
        checked.append(step)
        if not bool(metrics["finite"]):
            raise FloatingPointError(f"non-finite at step {step}")

    return check


def _run(losses, *, log_every, sync_due=None, checked, kept):
    par, writer = CountingParallel(), Writer()
    log = loop.TrainLog(writer, log_every_steps=log_every, end_step=len(losses), batch_size=1)
    state = loop.run_steps(
        step_fn,
        0,
        iter(losses),
        par,
        start_step=0,
        end_step=len(losses),
        check=require_finite(checked),
        log=log,
        sync_due=sync_due,
        after_step=lambda step, state: kept.append((step, int(state))),
    )
    return state, par, writer


def test_metrics_reach_the_host_only_at_log_and_sync_steps():
    checked, kept = [], []
    losses = [float(i) for i in range(12)]
    state, par, writer = _run(
        losses, log_every=5, sync_due=lambda step: step == 7, checked=checked, kept=kept
    )
    assert int(state) == 12
    assert par.host_calls == 4  # steps 5, 7, 10 and the last (12): not one per step
    assert checked == list(range(12))  # every step checked, in order
    assert [row[0] for row in writer.rows] == [5, 10, 12]  # logged where due, with its own loss
    assert [row[2] for row in writer.rows] == [4.0, 9.0, 11.0]
    assert kept == [(5, 5), (7, 7), (10, 10), (12, 12)]  # after_step at the sync steps only


def test_a_non_finite_step_between_syncs_stops_the_run_before_anything_later_is_kept():
    checked, kept = [], []
    losses = [1.0] * 12
    losses[6] = float("nan")  # step 6: the loop learns of it at the sync after step 10
    with pytest.raises(FloatingPointError, match="at step 6"):
        _run(losses, log_every=5, checked=checked, kept=kept)
    assert checked == list(range(7))  # steps 0..6, in order; the error at the first bad one
    assert kept == [(5, 5)]  # nothing after step 5 kept
