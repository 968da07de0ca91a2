"""Training logs: JSON lines, TensorBoard event files and PNG curves from one ``write_scalars``.

A run's ``workdir`` gets::

    <workdir>/metrics.jsonl   one JSON object per line, flushed at every write:
                              {"step": 100, "split": "train", "wall_time": 1.7e9,
                               "scalars": {"loss": 0.53, "lr": 0.01}}
    <workdir>/tensorboard/    event files (tensorboardX, no TensorFlow); tags are "<split>/<key>";
                              written by tensorboardX's background thread: on disk within
                              ``flush_secs`` (30 s) of a write, and completely at ``close()``
    <workdir>/curves.png      one subplot per scalar key, one line per split (train vs eval),
                              drawn from metrics.jsonl by ``write_curves()`` and at ``close()``

Resuming: construct the writer with ``resume_step=<restored checkpoint step>`` (``0`` when starting
from scratch in a workdir that may hold a crashed run's log). Lines with ``step > resume_step`` are
dropped from ``metrics.jsonl`` (they will be logged again), and TensorBoard is told to hide its
events from those steps (``purge_step``), so neither log shows duplicates. ``metrics.jsonl`` is
rewritten only when there is something to drop; reading it (:func:`read_jsonl`) never writes.

A full disk raises :class:`~drd_jax.files.DiskFullError` naming the file.

Values: every scalar must be a real number (Python, numpy or JAX scalar, or a one-element array).
Strings, bools, complex numbers and multi-element arrays raise ``TypeError``/``ValueError``.
Non-finite values (NaN, ±inf) are *accepted* — a diverging loss should be visible, not crash the
logger — and written as JSON ``null`` (strict JSON, readable by any parser) and as the float itself
to TensorBoard; the curves leave a gap there.
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import pathlib
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from drd_jax.errors import DataError
from drd_jax.extras import require
from drd_jax.files import atomic_write_text, disk_full_error, is_disk_full

__all__ = ["MetricWriter", "read_jsonl"]

JSONL_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
CURVES_NAME = "curves.png"


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Reads a JSON-lines file into a list of dicts; a missing file gives ``[]``.

    A truncated last line (a crash mid-write) is skipped; a corrupt line elsewhere raises
    ``ValueError`` naming the line. Never writes.
    """
    return _read_records(pathlib.Path(path))[0]


def _read_records(path: pathlib.Path) -> tuple[list[dict[str, Any]], bool]:
    """``(records, torn)``: :func:`read_jsonl`'s records, and whether a truncated last line was
    skipped."""
    if not path.exists():
        return [], False
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                return records, True
            raise DataError(f"{path}:{i + 1}: not valid JSON ({e})") from e
    return records, False


@contextlib.contextmanager
def _disk_full_names(path: pathlib.Path, what: str) -> Iterator[None]:
    """Turns ``OSError(ENOSPC)`` while writing ``path`` into a :class:`DiskFullError`."""
    try:
        yield
    except OSError as e:
        if not is_disk_full(e):
            raise
        raise disk_full_error(
            path,
            what=what,
            needed=None,
            then="rerun the same command: it resumes from the newest checkpoint",
        ) from None  # its message says it all


def _scalar(key: str, value: Any) -> float:
    if isinstance(value, bool | np.bool_ | str | bytes):
        raise TypeError(f"scalar {key!r} must be a real number, got {type(value).__name__}")
    if not isinstance(value, numbers.Real):
        arr = np.asarray(value)
        if arr.size != 1:
            raise ValueError(f"scalar {key!r} must have one element, got shape {arr.shape}")
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise TypeError(f"scalar {key!r} must be a real number, got dtype {arr.dtype}")
        value = arr.reshape(())
    return float(value)


class MetricWriter:
    """Writes scalars to ``metrics.jsonl`` and TensorBoard, and draws training curves.

    Args:
      workdir: the run's directory (created if missing).
      resume_step: when resuming, the restored step: log lines after it are dropped (see module
        docstring). ``None`` appends to whatever is there.
      tensorboard: also write TensorBoard event files under ``<workdir>/tensorboard``.
      curves_on_close: draw ``<workdir>/curves.png`` in :meth:`close` (when anything was logged).
      active: ``False`` makes every method a no-op (e.g. ``jax.process_index() != 0``).
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        resume_step: int | None = None,
        tensorboard: bool = True,
        curves_on_close: bool = True,
        active: bool = True,
    ):
        self.workdir = pathlib.Path(workdir)
        self.jsonl_path = self.workdir / JSONL_NAME
        self.tensorboard_dir = self.workdir / TENSORBOARD_DIR
        self.curves_path = self.workdir / CURVES_NAME
        self.active = active
        self._curves_on_close = curves_on_close
        self._tb = None
        self._file = None
        if not active:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            self.truncate_after(resume_step)
        self._file = open(self.jsonl_path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close)
        if tensorboard:
            summary_writer = require("tensorboardX", extra="train").SummaryWriter
            self._tb = summary_writer(
                logdir=str(self.tensorboard_dir),
                purge_step=None if resume_step is None else int(resume_step) + 1,
                flush_secs=30,
            )

    def write_scalars(self, step: int, scalars: Mapping[str, Any], *, split: str = "train") -> None:
        """Logs ``scalars`` at ``step`` under ``split`` (e.g. ``"train"``, ``"eval"``)."""
        if not self.active:
            return
        if self._file is None:
            raise RuntimeError("MetricWriter is closed")
        if isinstance(step, bool) or not isinstance(step, numbers.Integral | np.integer):
            step = np.asarray(step)
            if step.shape != () or not np.issubdtype(step.dtype, np.integer):
                raise TypeError(f"step must be an integer, got {step!r}")
        step = int(step)
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}")
        if not isinstance(split, str) or not split or "/" in split:
            raise ValueError(f"split must be a non-empty string without '/', got {split!r}")
        if not scalars:
            raise ValueError("scalars must not be empty")
        values = {}
        for key, value in scalars.items():
            if not isinstance(key, str) or not key:
                raise TypeError(f"scalar names must be non-empty strings, got {key!r}")
            values[key] = _scalar(key, value)
        record = {
            "step": step,
            "split": split,
            "wall_time": time.time(),
            "scalars": {k: (v if math.isfinite(v) else None) for k, v in values.items()},
        }
        with _disk_full_names(self.jsonl_path, "the training log"):
            self._file.write(json.dumps(record, allow_nan=False) + "\n")
            self._file.flush()
        if self._tb is not None:
            with _disk_full_names(self.tensorboard_dir, "TensorBoard events"):
                for key, value in values.items():
                    self._tb.add_scalar(f"{split}/{key}", value, global_step=step)
                self._tb.flush()

    def truncate_after(self, step: int) -> int:
        """Drops the lines of ``metrics.jsonl`` with ``step > step``; returns how many were dropped.

        The file is rewritten atomically (temporary file + rename), and only when a line is
        dropped: a truncated last line is dropped too; a log with nothing to drop is not touched.
        """
        if not self.active or not self.jsonl_path.exists():
            return 0
        if self._file is not None:
            self._file.flush()
        records, torn = _read_records(self.jsonl_path)
        kept = [r for r in records if int(r["step"]) <= step]
        if len(kept) == len(records) and not torn:
            return 0
        with _disk_full_names(self.jsonl_path, "the training log"):
            atomic_write_text(
                self.jsonl_path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept)
            )
        if self._file is not None:  # keep appending to the new file, not the replaced one
            self._file.close()
            self._file = open(self.jsonl_path, "a", encoding="utf-8")  # noqa: SIM115
        return len(records) - len(kept)

    def write_curves(self, path: str | os.PathLike | None = None) -> pathlib.Path | None:
        """Draws every scalar of ``metrics.jsonl`` against step into a PNG (default ``curves.png``).

        One subplot per scalar key, one line per split. Returns the path, or ``None`` when there
        is nothing to draw. Uses matplotlib's Agg canvas directly (no pyplot, no global backend).
        """
        if not self.active:
            return None
        if self._file is not None:
            self._file.flush()
        series: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
        for r in read_jsonl(self.jsonl_path):
            for key, value in r["scalars"].items():
                xs, ys = series.setdefault(key, {}).setdefault(r["split"], ([], []))
                xs.append(int(r["step"]))
                ys.append(math.nan if value is None else float(value))
        if not series:
            return None

        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        keys = sorted(series)
        ncols = min(3, len(keys))
        nrows = math.ceil(len(keys) / ncols)
        fig = Figure(figsize=(4.5 * ncols, 3.2 * nrows), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, key in zip(axes, keys, strict=False):
            for split in sorted(series[key]):
                xs, ys = series[key][split]
                order = np.argsort(xs, kind="stable")
                marker = "o" if len(xs) < 30 else None
                ax.plot(np.asarray(xs)[order], np.asarray(ys)[order], marker=marker, label=split)
            ax.set_title(key)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
        for ax in axes[len(keys) :]:
            ax.set_visible(False)
        out = pathlib.Path(path) if path is not None else self.curves_path
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=100)
        return out

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Flushes and closes the logs, then draws ``curves.png`` (if ``curves_on_close``)."""
        if self._file is None:
            return
        self._file.close()
        self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._curves_on_close:
            self.write_curves()

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
