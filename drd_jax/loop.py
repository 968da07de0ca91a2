"""The host side of a training loop: pending step metrics, the train log, progress, evaluation.

The loops themselves are written out where they run (``drd_jax.train``, and knowledge
adaptation's auto-encoder stage in ``drd_jax.distillation.autoencoder``). They share these pieces:
:class:`PendingMetrics` keeps each dispatched step's metrics on the devices until a sync step
brings them all to the host in one transfer, :class:`TrainLog` writes the train scalars,
:func:`progress_bar` shows progress and :func:`evaluate` sums a confusion matrix.

Progress (:func:`progress_bar`): a tqdm bar when stderr is a terminal; in a log file or a pipe,
where a bar's ``\r`` frames would pile up, one plain log line at each logged step instead.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import IO, Any

import numpy as np

from drd_jax.extras import require
from drd_jax.metric_writers import MetricWriter
from drd_jax.parallel import DataParallel

tqdm = require("tqdm", extra="train").tqdm

__all__ = [
    "NOT_LOGGED",
    "LineProgress",
    "PendingMetrics",
    "TrainLog",
    "evaluate",
    "progress_bar",
]

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


class PendingMetrics:
    """The metrics of the steps dispatched since the last sync step, still on the devices.

    A training loop dispatches each step without waiting for it (``add`` keeps its metrics, a
    pytree of device arrays) and brings them to the host only at a sync step (``to_host``): one
    transfer for every step since the previous sync, so the host never stalls the devices between
    syncs.
    """

    def __init__(self):
        self._steps: list[int] = []
        self._metrics: list[Any] = []

    def __len__(self) -> int:
        return len(self._steps)

    def add(self, step: int, metrics: Any) -> None:
        """Keeps the device ``metrics`` of step ``step`` (0-based: the step's index)."""
        self._steps.append(int(step))
        self._metrics.append(metrics)

    def to_host(self, par: DataParallel) -> list[tuple[int, Mapping[str, np.ndarray]]]:
        """Every pending step's ``(step, host metrics)``, oldest first, in one ``par.host``
        transfer; the buffer is empty afterwards."""
        host_metrics = par.host(self._metrics) if self._metrics else []
        out = list(zip(self._steps, host_metrics, strict=True))
        self._steps, self._metrics = [], []
        return out


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
