"""The host side of the loops: pending step metrics reach the host in one transfer per sync step,
oldest first (the loops themselves are tested through ``drd_jax.train`` in test_train.py)."""

import jax.numpy as jnp
import numpy as np

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


def test_pending_metrics_reach_the_host_in_one_transfer_oldest_first():
    par = CountingParallel()
    pending = loop.PendingMetrics()
    for step in range(3, 8):
        pending.add(step, {"loss": jnp.asarray(float(step)), "finite": jnp.asarray(True)})
    assert len(pending) == 5
    fetched = pending.to_host(par)
    assert par.host_calls == 1  # five steps, one transfer
    assert [step for step, _ in fetched] == [3, 4, 5, 6, 7]
    assert [float(m["loss"]) for _, m in fetched] == [3.0, 4.0, 5.0, 6.0, 7.0]
    assert all(isinstance(m["loss"], np.ndarray) for _, m in fetched)  # host arrays
    assert len(pending) == 0 and pending.to_host(par) == []  # emptied; nothing more to bring
    assert par.host_calls == 1


def test_train_log_is_due_every_log_step_and_at_the_end():
    log = loop.TrainLog(Writer(), log_every_steps=5, end_step=12, batch_size=1)
    assert [s for s in range(1, 13) if log.due(s)] == [5, 10, 12]
