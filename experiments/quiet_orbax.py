"""Quiet orbax, TensorStore and asyncio in the command-line tools (``install``, once per process).

The library changes no logger, hook or warnings filter (``drd_jax.checkpointing``). The tools'
log is for people, so :func:`install` (called by ``experiments.cli.run`` and by the scripts that
train or read runs) silences what says nothing a user can act on:

* orbax's INFO lines (several per save, with option dumps) and its ``Requested
  `tracked_metric`; did not provide metrics`` warning on the saves without metrics (by design:
  only evaluated checkpoints compete for "best");
* orbax's tracebacks of a full disk (``drd_jax.files.DiskFullError`` says it once);
* TensorStore's ``RuntimeError: Event loop is closed``: when a save fails (e.g. a full disk),
  orbax closes that save's event loop while TensorStore's other writes are pending, and each of
  them then prints that error with a traceback (about 120 for a real model), also after the run
  has stopped with its own message;
* after a failed save or restore (``drd_jax.checkpointing.io_failed``): asyncio's "Future/Task
  exception was never retrieved" of the abandoned reads and writes (one per array, each with a
  traceback and a TensorStore spec), their coroutines' errors at collection, and Python's
  "coroutine ... was never awaited" warnings of them.

Orbax's other warnings and errors stay. absl's ``--verbosity=1`` shows everything again.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import warnings
from typing import Any

from absl import logging as absl_logging

from drd_jax.checkpointing import io_failed
from drd_jax.files import is_disk_full

__all__ = ["install"]

_TRACKED_METRIC_WARNING = "Requested `tracked_metric`"
_NEVER_AWAITED = re.compile(r"coroutine '.*' was never awaited")


def _verbose() -> bool:
    return absl_logging.get_verbosity() >= 1


def _from_orbax(record: logging.LogRecord) -> bool:
    return f"{os.sep}orbax{os.sep}" in str(record.pathname)


def _is_disk_full_record(record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return error is not None and is_disk_full(error)


class _QuietOrbax(logging.Filter):
    """Drops orbax's INFO/DEBUG records, its per-save ``tracked_metric`` warning and its
    tracebacks of a full disk, unless absl's verbosity is 1 or more. On absl's logger, which
    orbax logs through."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _verbose() or not _from_orbax(record):
            return True
        if record.levelno < logging.WARNING:
            return False
        if str(record.msg).startswith(_TRACKED_METRIC_WARNING):
            return False
        return not _is_disk_full_record(record)


class _QuietAsyncio(logging.Filter):
    """After a failed save or restore, drops asyncio's "exception was never retrieved" of the
    abandoned reads and writes, and any record of a full disk."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not io_failed() or _verbose():
            return True
        if "exception was never retrieved" in str(record.msg):
            return False
        return not _is_disk_full_record(record)


def _is_closed_loop(error: BaseException | None) -> bool:
    return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


def _orbax_coroutine(obj: Any) -> bool:
    code = getattr(obj, "cr_code", None)
    return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


def _quiet_unraisable(previous):
    """``sys.unraisablehook`` without :func:`_is_closed_loop` errors, nor, after a failed save or
    restore, the errors of its abandoned orbax coroutines (one traceback per array, with a full
    TensorStore spec: thousands of lines) or of anything collected while Python shuts down."""

    def hook(unraisable) -> None:
        if _is_closed_loop(unraisable.exc_value):
            return
        if io_failed() and not _verbose():
            if _orbax_coroutine(unraisable.object) or sys.is_finalizing():
                return
        previous(unraisable)

    return hook


def _quiet_excepthook(previous):
    """``sys.excepthook`` without :func:`_is_closed_loop` errors (TensorStore prints them)."""

    def hook(kind, value, tb) -> None:
        if not _is_closed_loop(value):
            previous(kind, value, tb)

    return hook


def _quiet_showwarning(previous):
    """``warnings.showwarning`` without, after a failed save or restore, the "coroutine ... was
    never awaited" warnings of its abandoned coroutines."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if (
            issubclass(category, RuntimeWarning)
            and _NEVER_AWAITED.match(str(message))
            and io_failed()
            and not _verbose()
        ):
            return
        previous(message, category, filename, lineno, file, line)

    return show


_installed = False
_lock = threading.Lock()


def install() -> None:
    """Installs the filters and hooks of the module docstring (idempotent; process-wide: for a
    program's entry point, never for a library)."""
    global _installed
    with _lock:
        if _installed:
            return
        logging.getLogger("absl").addFilter(_QuietOrbax())
        logging.getLogger("asyncio").addFilter(_QuietAsyncio())
        sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)
        sys.excepthook = _quiet_excepthook(sys.excepthook)
        warnings.showwarning = _quiet_showwarning(warnings.showwarning)
        _installed = True
