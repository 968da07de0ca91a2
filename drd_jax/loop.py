"""The host side of training: the step loop and the evaluation pass.

One loop (:func:`run_steps`) drives both the trainer (``drd_jax.train``) and knowledge
adaptation's auto-encoder stage (``drd_jax.distillation.autoencoder``): it feeds batches to a
compiled step (see ``drd_jax.parallel.DataParallel``) without waiting for it, and brings the
steps' metrics to the host only where they are logged (:class:`TrainLog`) or something is saved,
checking every step's metrics there before anything after it is kept.

Progress (:func:`progress_bar`): a tqdm bar when stderr is a terminal; in a log file or a pipe,
where a bar's ``\r`` frames would pile up, one plain log line at each logged step instead.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any

import numpy as np

from drd_jax.extras import require
from drd_jax.metric_writers import MetricWriter
from drd_jax.parallel import DataParallel

tqdm = require("tqdm", extra="train").tqdm

__all__ = ["NOT_LOGGED", "LineProgress", "TrainLog", "evaluate", "progress_bar", "run_steps"]

# Step metrics that are checked, not logged.
NOT_LOGGED = ("finite", "valid_pixels")


class LineProgress:
    """tqdm's ``update`` / ``set_postfix`` / ``close`` as plain log lines: each ``set_postfix``
    (one per logged step, see :class:`TrainLog`) logs
    ``'<desc>: step <n>/<total> (<pct>%), loss 0.5312, lr 1.00e-03, 42.0 img/s'``."""

    def __init__(self, *, total: int, initial: int = 0, desc: str = ""):
        self.total, self.n, self.desc = int(total), int(initial), desc

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **values: str) -> None:
        pct = 100 * self.n // max(self.total, 1)
        parts = [f"step {self.n}/{self.total} ({pct}%)"]
        parts += [f"{v} img/s" if k == "img_s" else f"{k} {v}" for k, v in values.items()]
        logging.info("%s: %s", self.desc, ", ".join(parts))

    def close(self) -> None:
        pass


def progress_bar(
    *, total: int, initial: int, desc: str, enabled: bool, stream: IO[str] | None = None
):
    """The progress display of a loop of ``total`` steps starting at ``initial``.

    A tqdm bar on ``stream`` (default ``sys.stderr``) when it is a terminal; a
    :class:`LineProgress` (log lines, no ``\r``) when it is not; tqdm's no-op bar when
    ``enabled`` is False. All three take ``update``, ``set_postfix`` and ``close``.
    """
    stream = sys.stderr if stream is None else stream
    if not enabled:
        return tqdm(total=total, initial=initial, disable=True)
    isatty = getattr(stream, "isatty", None)
    if callable(isatty) and isatty():
        return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=stream)
    return LineProgress(total=total, initial=initial, desc=desc)


class TrainLog:
    """Writes a loop's train scalars every ``log_every_steps`` steps and at ``end_step``.

    The scalars are the step's metrics (less :data:`NOT_LOGGED`) plus ``images_per_sec`` since the
    previous write (or since this log was made). ``tick`` advances ``bar`` (a tqdm bar) by one
    step; ``write`` shows ``loss``, ``lr`` and images/s on it.
    """

    def __init__(
        self,
        writer: MetricWriter,
        *,
        log_every_steps: int,
        end_step: int,
        batch_size: int,
        start_step: int = 0,
        bar: Any = None,
    ):
        self.writer = writer
        self.log_every_steps = int(log_every_steps)
        self.end_step = end_step
        self.batch_size = batch_size
        self.bar = bar
        self._last_time, self._last_step = time.perf_counter(), start_step

    def due(self, step: int) -> bool:
        """Whether step ``step`` (steps done) is logged."""
        return step % self.log_every_steps == 0 or step == self.end_step

    def tick(self) -> None:
        """One more step done."""
        if self.bar is not None:
            self.bar.update(1)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Logs the host ``metrics`` of step ``step`` (steps done)."""
        now = time.perf_counter()
        images = (step - self._last_step) * self.batch_size
        ips = images / max(now - self._last_time, 1e-9)
        self._last_time, self._last_step = now, step
        scalars = {k: float(v) for k, v in metrics.items() if k not in NOT_LOGGED}
        scalars["images_per_sec"] = ips
        self.writer.write_scalars(step, scalars, split="train")
        if self.bar is not None:
            formats = {"loss": ".4f", "lr": ".2e"}
            postfix = {k: format(scalars[k], f) for k, f in formats.items() if k in scalars}
            self.bar.set_postfix(**postfix, img_s=f"{ips:.1f}")


def run_steps(
    step_fn: Callable,
    state: Any,
    batches: Iterator[Mapping[str, np.ndarray]],
    par: DataParallel,
    *,
    start_step: int,
    end_step: int,
    step_args: tuple = (),
    check: Callable[[Mapping[str, np.ndarray], int], None],
    log: TrainLog,
    sync_due: Callable[[int], bool] | None = None,
    after_step: Callable[[int, Any], None] | None = None,
) -> Any:
    """Runs steps ``start_step .. end_step - 1`` of ``step_fn``; returns the last state.

    A step: the next batch of ``batches`` (this process's part), ``par.shard_batch`` and
    ``step_fn(state, batch, *step_args)`` (compiled by ``par``), dispatched without waiting for
    it: its metrics stay on the devices. They come to the host only at a *sync step*: a step
    ``log`` logs, one where ``sync_due(steps done)`` (e.g. a checkpoint is due), and the last.
    There the metrics of every step since the previous sync come in one transfer,
    ``check(metrics, step)`` runs on each in order (it raises to stop the run), the step is
    logged if due, and ``after_step(steps done, state)`` runs (e.g. to save it): whatever it
    keeps has been checked, and so has every step before it.
    """
    pending = []  # device metrics of the steps since the last sync
    for step in range(start_step, end_step):
        state, step_metrics = step_fn(state, par.shard_batch(next(batches)), *step_args)
        pending.append(step_metrics)
        done = step + 1
        log.tick()
        if log.due(done) or done == end_step or (sync_due is not None and sync_due(done)):
            host_metrics = par.host(pending)
            for i, metrics in enumerate(host_metrics):
                check(metrics, done - len(host_metrics) + i)
            pending = []
            if log.due(done):
                log.write(done, host_metrics[-1])
            if after_step is not None:
                after_step(done, state)
    return state


def evaluate(
    eval_fn: Callable, params: Any, eval_ds, par: DataParallel, num_classes: int
) -> np.ndarray:
    """The confusion matrix (K, K) of the whole eval dataset (int64, summed on the host).

    ``eval_fn(params, batch)`` is a compiled ``steps.eval_step``.
    """
    cm = np.zeros((num_classes, num_classes), np.int64)
    for batch in eval_ds:
        cm += par.host(eval_fn(params, par.shard_batch(batch))).astype(np.int64)
    return cm
