"""Checkpoints of a training run, behind one small class.

Everything orbax-specific lives in this module, so a move to orbax's v1 API touches only this file.
A run's ``workdir`` holds::

    <workdir>/config.json          {"config_fingerprint": ..., "config": ...}, by the first run
    <workdir>/checkpoints/<step>/  state/ (the train-state pytree, StandardSave)
                                   meta/  (JSON: config fingerprint, the state's content digest
                                           and the caller's ``extra`` dict)
                                   metrics/ (JSON, only when eval metrics were passed to ``save``)

Typical use in a training loop::

    fp = drd_jax.config.fingerprint(config)  # or any string naming the config
    ckpt = Checkpointer(workdir, config_fingerprint=fp, config=config.to_dict(),
                        save_interval_steps=1000)
    if ckpt.latest_step() is not None:
        state, extra = ckpt.restore(target=state)      # template: freshly initialised state
    ...
    ckpt.save(step, state, metrics=eval_metrics, extra={"rng": ..., "epoch": ...})
    ...
    ckpt.save(final_step, state, force=True)
    ckpt.close()

Guarantees and decisions:

* **Atomic saves.** Orbax writes a step into ``<step>.orbax-checkpoint-tmp-<n>`` and renames it to
  ``<step>`` only when every item is written (plus a ``commit_success.txt`` marker on file systems
  without atomic rename). A save interrupted mid-write therefore leaves only a tmp directory, which
  is never listed by :meth:`Checkpointer.latest_step`; the next ``Checkpointer`` on that workdir
  deletes it in the background (``cleanup_tmp_directories=True``; awaited before its first save).
* **Asynchronous saves.** ``save`` copies the arrays to host memory, returns, and writes in a
  background thread (so donated device buffers may be reused right away). :meth:`wait` blocks
  until the write has finished; :meth:`restore` and :meth:`close` wait first.
* **Which checkpoints are kept.** One orbax manager whose preservation policy is the union of
  "the latest ``max_to_keep``" and "the single best by ``best_metric``"
  (``AnyPreservationPolicy([LatestN(max_to_keep), BestN(n=1)])``).
  So the best checkpoint survives however old it is, and resuming always finds the newest ones.
  Checkpoints saved without ``metrics`` only compete for the latest slots.
* **Which steps are saved.** ``save`` writes when ``step % save_interval_steps == 0`` (or at a
  preemption sync point on multi-host runs), or whenever ``force=True``. It never writes a step
  that already exists, and returns ``False`` instead of raising, so a final ``force=True`` save at
  a step that was just saved periodically is harmless.
* **Config check.** The first run writes ``config.json`` with the fingerprint of its config. Opening
  the workdir with a different fingerprint raises ``ValueError`` naming the workdir; every
  checkpoint also records the fingerprint, checked again on restore.
* **Config of a workdir without checkpoints.** A workdir whose ``config.json`` names another
  config but that holds no checkpoint (no step was trained, e.g. a start refused by a later
  check) takes the new config: ``config.json`` is rewritten, with a warning.
* **Restore without a checkpoint raises** ``FileNotFoundError`` (check :meth:`latest_step` first).
* **Verified by content.** ``save`` records :func:`state_digest` of the state (SHA-256 of
  every leaf's values) in ``meta``; every restore recomputes it on the restored state. Bytes
  changed on disk that orbax reads back without complaint (a flipped bit in a data file) make
  the digests differ, and the checkpoint counts as damaged (below). Checkpoints written before
  digests were recorded, or of states sharded across hosts, are read unverified.
* **Damaged checkpoints.** A checkpoint that cannot be read (a truncated or lost file, or a
  digest that differs) raises
  :class:`UnreadableCheckpointError`, one line naming its directory and what to do. A writer
  resuming with ``restore(fall_back=True)`` instead restores the newest readable checkpoint and
  moves each newer unreadable one to ``<workdir>/damaged_checkpoints/<step>`` (never deleted),
  with a warning naming both places. If no checkpoint can be read (e.g. a state of another
  shape), nothing is moved and it raises.
* **Disk full.** A save that runs out of space raises :class:`~drd_jax.files.DiskFullError`
  once, naming the checkpoint directory, the space free there and the space the checkpoints
  need; orbax's own tracebacks of it are not logged. A rerun resumes from the newest complete
  checkpoint (the half-written one is an orbax tmp directory, cleaned up on open).
* **No process-wide side effects.** Importing this module or building a ``Checkpointer`` changes
  no logger, hook or warnings filter. Orbax logs INFO lines on every save (with option dumps), a
  ``Requested `tracked_metric`; did not provide metrics`` warning on saves without metrics (by
  design here: see "Which checkpoints are kept"), and after a failed save or restore its
  abandoned reads and writes print their own errors; the command-line tools silence those
  (``experiments.quiet_orbax``), a program of your own may do the same (:func:`io_failed`).
* A non-finite ``best_metric`` value (NaN/inf) does not raise: that checkpoint is saved without
  metrics (it cannot become "best") and a warning is logged. Other non-finite metric values are
  stored as JSON ``null``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import pathlib
import shutil
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging

from drd_jax.errors import CheckpointError, MissingFileError
from drd_jax.files import atomic_write_text, disk_full_error, format_bytes, is_disk_full
from drd_jax.json_values import to_json_value
from drd_jax.parallel import sync_processes

__all__ = [
    "DAMAGED_DIR",
    "Checkpointer",
    "UnreadableCheckpointError",
    "check_workdir_config",
    "io_failed",
    "recorded_config_fingerprint",
    "state_digest",
]

_CONFIG_FILE = "config.json"
_CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "damaged_checkpoints"
_STATE = "state"
_META = "meta"


class UnreadableCheckpointError(CheckpointError):
    """A checkpoint cannot be read back (damaged, incomplete, or of another state's shape).

    The message is one line naming the checkpoint's directory and what to do; ``path`` is that
    directory, ``step`` its step and ``reason`` what is wrong with it, in a few words.
    """

    def __init__(self, message: str, *, path: pathlib.Path, step: int, reason: str = ""):
        super().__init__(message)
        self.path = path
        self.step = step
        self.reason = reason or message


def _reason(error: BaseException, limit: int = 240) -> str:
    """The innermost cause of ``error`` in one short line (TensorStore's is the useful one)."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- failed reads and writes ---------------------------------------------------------------------

_failed_io = threading.Event()  # set once a save or restore of this process has failed


def _io_failed() -> None:
    """Marks a failed save or restore (see :func:`io_failed`)."""
    _failed_io.set()


def io_failed() -> bool:
    """Whether a save or restore of this process has failed.

    After a failure orbax abandons the other reads or writes of that save or restore, and each
    reports its own error later, in another thread (asyncio's "exception was never retrieved",
    TensorStore's ``RuntimeError: Event loop is closed``, Python's "coroutine ... was never
    awaited"). This module installs no log filter or hook against them: a program that wants them
    silenced asks here (as ``experiments.quiet_orbax`` does for the command-line tools).
    """
    return _failed_io.is_set()


def _tree_bytes(tree: Any) -> int:
    """Bytes of the array leaves of ``tree`` (in memory, uncompressed)."""
    return sum(int(getattr(x, "nbytes", 0)) for x in jax.tree.leaves(tree))


def _host_leaf(leaf: Any) -> np.ndarray | None:
    """One full host copy of a state leaf; None when no process holds all of it (an array
    sharded across hosts)."""
    if isinstance(leaf, jax.Array):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        if leaf.is_fully_addressable:
            return np.asarray(leaf)
        if leaf.is_fully_replicated:
            return np.asarray(leaf.addressable_data(0))
        return None
    return np.asarray(leaf)


def _canonical(array: np.ndarray) -> np.ndarray:
    """``array``'s values in one dtype per kind (integers and booleans as int64, floats as
    float64; both exact), so that a state restored into a template of a wider dtype (a Python
    ``int`` step restores as int64) has the digest of the one saved."""
    if array.dtype.kind in "biu":
        return array.astype(np.int64)
    if jax.numpy.issubdtype(array.dtype, jax.numpy.floating):
        with np.errstate(invalid="ignore"):  # NaN/inf of narrow floats (ml_dtypes) warn
            return array.astype(np.float64)
    return array


def state_digest(state: Any) -> str | None:
    """SHA-256 of a state pytree's content: every leaf's shape and values, in tree order.

    What a checkpoint records at save (``meta``) and :meth:`Checkpointer.restore` checks the
    restored state against, so bytes damaged on disk are caught even when orbax reads them without
    complaint. Values count in a canonical dtype (:func:`_canonical`): a restore into another
    dtype of the same values matches. PRNG key arrays count by their key data. None when a leaf
    is sharded across hosts (no process holds all of it): such a checkpoint is saved without a
    digest.
    """
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(state):
        array = _host_leaf(leaf)
        if array is None:
            return None
        array = _canonical(array)
        h.update(f"{array.dtype.kind}{array.shape};".encode())
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def _dir_bytes(path: pathlib.Path) -> int:
    """Bytes of the files under ``path`` (0 if it has gone)."""
    total = 0
    for p in path.rglob("*"):
        with contextlib.suppress(OSError):
            if p.is_file():
                total += p.stat().st_size
    return total


@contextlib.contextmanager
def _absl_verbosity(level: int | None):
    """Temporarily sets absl's logging verbosity (orbax logs through absl); None = unchanged."""
    if level is None:
        yield
        return
    old = absl_logging.get_verbosity()
    absl_logging.set_verbosity(level)
    try:
        yield
    finally:
        absl_logging.set_verbosity(old)


def _mismatch(workdir: pathlib.Path, found: str, expected: str) -> CheckpointError:
    return CheckpointError(
        f"workdir {workdir} belongs to a run with a different config (fingerprint {found[:12]}..., "
        f"this config {expected[:12]}...). Use a new workdir for a new config, or pass the same "
        "config to resume that run."
    )


def _committed_steps(checkpoint_dir: pathlib.Path) -> list[int]:
    """Steps with a fully written checkpoint directory (named by digits alone), ascending."""
    try:
        return sorted(int(p.name) for p in checkpoint_dir.iterdir() if p.name.isdigit())
    except (FileNotFoundError, NotADirectoryError):
        return []


def recorded_config_fingerprint(workdir: pathlib.Path) -> str | None:
    """The fingerprint in ``<workdir>/config.json``; None when there is no such file.

    Raises:
      ValueError: the file exists but holds no fingerprint.
    """
    path = workdir / _CONFIG_FILE
    if not path.exists():
        return None
    try:
        return str(json.loads(path.read_text())["config_fingerprint"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"workdir {workdir}: cannot read the config fingerprint from {path} ({e}). "
            "Use a new workdir."
        ) from e


def check_workdir_config(workdir: str | os.PathLike, config_fingerprint: str) -> bool:
    """Checks, without writing, that a run of ``config_fingerprint`` may use ``workdir``.

    Returns whether ``config.json`` must be (re)written: the workdir is new, or it holds no
    checkpoint (no step was trained) and records another config, which the new one replaces.

    Raises:
      ValueError: the workdir holds checkpoints of another config, or checkpoints without a
        readable ``config.json``; the message names it.
    """
    workdir = pathlib.Path(workdir).expanduser().absolute()
    has_steps = bool(_committed_steps(workdir / _CHECKPOINT_DIR))
    try:
        found = recorded_config_fingerprint(workdir)
    except ValueError:
        if has_steps:
            raise
        return True  # unreadable, but nothing was trained under it
    if found is None:
        if has_steps:
            raise CheckpointError(
                f"workdir {workdir} holds checkpoints but no {_CONFIG_FILE}, so its config is "
                "unknown. Use a new workdir."
            )
        return True
    if found == config_fingerprint:
        return False
    if has_steps:
        raise _mismatch(workdir, found, config_fingerprint)
    return True


class Checkpointer:
    """Saves and restores a train-state pytree plus a JSON dict of extras under ``workdir``.

    Args:
      workdir: the run's directory (created if missing).
      config_fingerprint: the run's (``drd_jax.config.fingerprint``); a workdir holding another
        one is refused.
      config: optional JSON-able config, recorded in ``config.json`` for humans (first run only).
      max_to_keep: how many of the latest checkpoints are kept (the best one is kept in addition).
      save_interval_steps: ``save`` writes only at steps divisible by this (unless ``force``).
      best_metric: key of the ``metrics`` dict that ranks checkpoints for :meth:`best_step`.
      best_mode: ``"max"`` (higher is better, e.g. mIoU) or ``"min"`` (e.g. a loss).
      async_save: write in a background thread (default); ``False`` makes ``save`` blocking.
      read_only: for readers of another process's run (e.g. a student reading its teacher while
        the teacher may still be training): never writes ``config.json`` and never deletes the
        unfinished ``*.orbax-checkpoint-tmp-*`` directories; ``save`` raises.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        config_fingerprint: str,
        config: Mapping[str, Any] | None = None,
        max_to_keep: int = 3,
        save_interval_steps: int = 1000,
        best_metric: str = "mean_iou",
        best_mode: str = "max",
        async_save: bool = True,
        read_only: bool = False,
    ):
        if not config_fingerprint or not isinstance(config_fingerprint, str):
            raise ValueError("config_fingerprint must be a non-empty string")
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
        if save_interval_steps < 1:
            raise ValueError(f"save_interval_steps must be >= 1, got {save_interval_steps}")
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        self.workdir = pathlib.Path(workdir).absolute()
        self.config_fingerprint = config_fingerprint
        self.best_metric = best_metric
        self.checkpoint_dir = self.workdir / _CHECKPOINT_DIR
        self.read_only = read_only
        self.max_to_keep = max_to_keep
        self._state_bytes: int | None = None  # of the last state passed to save()
        self._disk_full_reported = False
        self._closed = False
        self._check_or_write_config(config)
        self._manager = self._make_manager(max_to_keep, save_interval_steps, best_mode, async_save)

    def _make_manager(self, max_to_keep, save_interval_steps, best_mode, async_save):
        best_metric, read_only = self.best_metric, self.read_only

        def metric_fn(metrics: Mapping[str, Any]) -> float:
            return float(metrics[best_metric])

        # orbax warns three times that a read-only manager is read-only; say nothing instead.
        with _absl_verbosity(absl_logging.ERROR if read_only else None):
            cm = ocp.checkpoint_managers
            options = ocp.CheckpointManagerOptions(
                # best_fn makes the manager store metrics with each step and rank them in
                # best_step(); which steps are deleted is decided by preservation_policy alone.
                best_fn=metric_fn,
                best_mode=best_mode,
                preservation_policy=cm.AnyPreservationPolicy(
                    [
                        cm.LatestN(n=max_to_keep),
                        cm.BestN(
                            get_metric_fn=metric_fn,
                            reverse=best_mode == "min",
                            n=1,
                            keep_checkpoints_without_metrics=False,
                        ),
                    ]
                ),
                save_decision_policy=cm.AnySavePolicy(
                    [
                        cm.FixedIntervalPolicy(save_interval_steps),
                        cm.PreemptionCheckpointingPolicy(),
                    ]
                ),
                cleanup_tmp_directories=not read_only,
                read_only=read_only,
                enable_async_checkpointing=async_save,
            )
            # Handlers named up front: a manager that learns them from its first save or restore
            # warns twice per item when asked for a step's metadata (a reader's first call).
            handlers = {_STATE: ocp.StandardCheckpointHandler(), _META: ocp.JsonCheckpointHandler()}
            return ocp.CheckpointManager(
                self.checkpoint_dir, item_handlers=handlers, options=options
            )

    # -- config check ---------------------------------------------------------------------------

    def _check_or_write_config(self, config: Mapping[str, Any] | None) -> None:
        if not check_workdir_config(self.workdir, self.config_fingerprint):
            return
        if jax.process_index() != 0 or self.read_only:
            return
        path = self.workdir / _CONFIG_FILE
        if path.exists():
            logging.warning(
                "workdir %s holds no checkpoint yet: its %s (another config) is replaced by "
                "this run's config",
                self.workdir,
                _CONFIG_FILE,
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        body = {
            "config_fingerprint": self.config_fingerprint,
            "config": None if config is None else to_json_value(config),
        }
        atomic_write_text(path, json.dumps(body, indent=2, sort_keys=True) + "\n")

    # -- queries ----------------------------------------------------------------------------------

    def latest_step(self) -> int | None:
        """The newest fully written step, or ``None`` when there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """All kept steps, ascending."""
        return sorted(self._manager.all_steps())

    def best_step(self) -> int | None:
        """The kept step with the best ``best_metric``; ``None`` if no save had metrics."""
        return self._manager.best_step()

    def metrics(self, step: int) -> dict | None:
        """The eval metrics saved with ``step`` (``save(metrics=...)``; non-finite values are
        None), or None when it was saved without. ``FileNotFoundError`` when there is no such
        checkpoint, :class:`UnreadableCheckpointError` when its metadata cannot be read."""
        self.wait()
        step = self._existing_step(step)
        try:
            found = self._manager.metadata(step).metrics
        except Exception as e:  # noqa: BLE001 - orbax raises several types for a damaged step
            _io_failed()
            raise self._unreadable(step, e) from e
        return dict(found) if found else None

    # -- save / restore -------------------------------------------------------------------------

    def should_save(self, step: int) -> bool:
        """Whether :meth:`save` without ``force`` would write ``step``: on the interval, or when
        a preemption notice has reached the job (orbax's decision, as in ``save``)."""
        return bool(self._manager.should_save(int(step)))

    def save(
        self,
        step: int,
        state: Any,
        *,
        metrics: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> bool:
        """Saves ``state`` (any pytree of arrays) at ``step`` if the interval says so.

        Args:
          step: the training step (non-negative int).
          state: the pytree to save, e.g. a flax ``TrainState`` (params, opt_state, step, RNG keys).
          metrics: eval metrics for ranking (must contain ``best_metric``); scalars only.
          extra: JSON-able dict restored alongside, e.g. data-iterator position, epoch.
            Numpy/JAX scalars and arrays (also PRNG keys, as their key data) become lists/numbers.
          force: save even off the interval (use for the final step).

        Returns:
          Whether a checkpoint was written (``False`` off-interval or when ``step`` already exists).

        Raises:
          DiskFullError: this or the previous (asynchronous) save ran out of space.
        """
        if self.read_only:
            raise RuntimeError(f"Checkpointer of {self.workdir} is read-only")
        step = int(step)
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}")
        meta = {
            "config_fingerprint": self.config_fingerprint,
            "state_digest": state_digest(state),
            "extra": to_json_value(dict(extra or {})),
        }
        try:  # fail here, not in orbax's background thread
            json.dumps(meta, allow_nan=False)
        except ValueError as e:
            raise ValueError(
                f"extra must hold finite numbers only (no NaN/inf in JSON): {e}"
            ) from e
        metrics = self._clean_metrics(step, metrics)
        if step in self._manager.all_steps():
            return False
        self._state_bytes = _tree_bytes(state)
        with self._disk_full_check():
            return bool(
                self._manager.save(
                    step,
                    args=ocp.args.Composite(
                        **{_STATE: ocp.args.StandardSave(state), _META: ocp.args.JsonSave(meta)}
                    ),
                    metrics=metrics,
                    force=force,
                )
            )

    @contextlib.contextmanager
    def _disk_full_check(self) -> Iterator[None]:
        """Turns orbax's errors of a full disk into one :class:`DiskFullError`."""
        try:
            yield
        except Exception as e:
            _io_failed()
            if not is_disk_full(e):
                raise
            self._disk_full_reported = True
            logging.debug("the save that ran out of space", exc_info=e)  # --verbosity=1
            raise self._disk_full_error() from None  # its message says it all

    def _disk_full_error(self):
        steps = _committed_steps(self.checkpoint_dir)
        size = _dir_bytes(self.checkpoint_dir / str(steps[-1])) if steps else self._state_bytes
        needed = None
        if size:
            copies = self.max_to_keep + 2
            needed = (
                f"the run needs about {format_bytes(copies * size)} there for its checkpoints "
                f"({copies} x {format_bytes(size)}: the {self.max_to_keep} latest, the best and "
                "one being written)"
            )
        then = "rerun the same command: it " + (
            f"resumes from step {steps[-1]}, the newest complete checkpoint"
            if steps
            else "starts afresh (no checkpoint was completed)"
        )
        return disk_full_error(self.checkpoint_dir, what="a checkpoint", needed=needed, then=then)

    def _clean_metrics(self, step: int, metrics: Mapping[str, Any] | None) -> dict | None:
        if metrics is None:
            return None
        if self.best_metric not in metrics:
            raise ValueError(
                f"metrics passed to save() must contain best_metric {self.best_metric!r}; "
                f"got keys {sorted(metrics)}"
            )
        clean = {}
        for key, value in metrics.items():
            value = float(np.asarray(value))
            clean[str(key)] = value if math.isfinite(value) else None
        if clean[self.best_metric] is None:
            logging.warning(
                "Checkpointer: %s is not finite at step %d; saving without metrics (this "
                "checkpoint cannot become the best one).",
                self.best_metric,
                step,
            )
            return None
        return clean

    def _existing_step(self, step: int | None) -> int:
        if step is None:
            step = self.latest_step()
            if step is None:
                raise MissingFileError(f"no checkpoint in {self.checkpoint_dir}")
        elif int(step) not in self._manager.all_steps():
            raise MissingFileError(
                f"no checkpoint for step {step} in {self.checkpoint_dir}; "
                f"available steps: {self.all_steps()}"
            )
        return int(step)

    def restore(
        self, step: int | None = None, *, target: Any, fall_back: bool = False
    ) -> tuple[Any, dict]:
        """Restores the checkpoint at ``step`` (default: the latest) into ``target``'s structure.

        Args:
          step: which step; ``None`` means :meth:`latest_step`.
          target: a pytree like the saved one (e.g. a freshly initialised ``TrainState``, or its
            ``jax.ShapeDtypeStruct`` tree); the result has its tree structure, shapes, dtypes and
            shardings, including typed PRNG key arrays.
          fall_back: with ``step=None``, for the run's own writer (resume): when the latest
            cannot be read, restore the newest readable one instead and move each newer
            unreadable one to ``<workdir>/damaged_checkpoints/`` with a warning (see the module
            docstring). The restored step is the state's own ``step``.

        Returns:
          ``(state, extra)``; ``extra`` is the JSON dict given to ``save`` (lists stay lists).

        Raises:
          FileNotFoundError: no checkpoint at all, or none at ``step``.
          UnreadableCheckpointError: the checkpoint cannot be read (with ``fall_back``: none can).
          ValueError: the checkpoint was written under a different config fingerprint.
        """
        if fall_back and self.read_only:
            raise ValueError("fall_back=True moves damaged checkpoints: not for a read-only reader")
        if fall_back and step is not None:
            raise ValueError("fall_back=True restores the latest readable step: pass step=None")
        self.wait()
        step = self._existing_step(step)
        if not fall_back:
            return self._restore_step(step, target)
        newer_unreadable: list[tuple[int, UnreadableCheckpointError]] = []
        for candidate in sorted(self.all_steps(), reverse=True):
            try:
                restored = self._restore_step(candidate, target)
            except UnreadableCheckpointError as e:
                newer_unreadable.append((candidate, e))
                continue
            self._move_aside(newer_unreadable, restored_step=candidate)
            return restored
        newest, error = newer_unreadable[0]
        raise UnreadableCheckpointError(
            f"no checkpoint in {self.checkpoint_dir} can be read into this run's state (the "
            f"newest, step {newest}: {error.reason}); nothing was moved. If another version "
            "of drd_jax wrote them, resume with that version; if they are damaged, move the "
            "checkpoints directory away to train the run afresh",
            path=self.checkpoint_dir / str(newest),
            step=newest,
        ) from error

    def _restore_step(self, step: int, target: Any) -> tuple[Any, dict]:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        args = {_STATE: ocp.args.StandardRestore(abstract), _META: ocp.args.JsonRestore()}
        restored = self._read(step, args)
        extra = self._checked_extra(restored[_META])
        self._verify_content(step, restored[_STATE], restored[_META])
        return restored[_STATE], extra

    def _verify_content(self, step: int, state: Any, meta: Mapping[str, Any]) -> None:
        """:class:`UnreadableCheckpointError` unless ``state`` has the digest recorded at save
        (checkpoints saved without one, by older versions or sharded across hosts, pass)."""
        recorded = meta.get("state_digest")
        if recorded is None:
            return
        found = state_digest(state)
        if found is not None and found != recorded:
            raise self._unreadable(
                step,
                ValueError(
                    f"its content differs from the checksum recorded when it was saved "
                    f"(sha256 {found[:12]}... instead of {recorded[:12]}...): bytes on disk "
                    "were changed"
                ),
            )

    def _read(self, step: int, args: Mapping[str, Any]) -> Any:
        """orbax's restore of ``step``; :class:`UnreadableCheckpointError` if it fails."""
        try:
            return self._manager.restore(step, args=ocp.args.Composite(**args))
        except Exception as e:  # TensorStore/orbax raise plain Exception, ValueError, OSError...
            _io_failed()
            raise self._unreadable(step, e) from e

    def _unreadable(self, step: int, error: BaseException) -> UnreadableCheckpointError:
        path = self.checkpoint_dir / str(step)
        others = [s for s in self.all_steps() if s != step]
        where = "none"
        if others:
            where = f"step{'s' if len(others) > 1 else ''} {', '.join(map(str, others))}"
        return UnreadableCheckpointError(
            f"checkpoint step {step} of {self.workdir} cannot be read: {path} is damaged or "
            f"incomplete ({_reason(error)}). Other checkpoints there: {where}. To read another "
            f"one, move {path} out of {self.checkpoint_dir} or delete it; rerunning the run's "
            "training command does that for you and retrains the lost steps",
            path=path,
            step=step,
            reason=_reason(error),
        )

    def _move_aside(self, unreadable, *, restored_step: int) -> None:
        """Moves each unreadable step directory into ``<workdir>/damaged_checkpoints/`` (process 0
        on a multi-host run; every process then sees the new list of steps)."""
        if not unreadable:
            return
        if jax.process_index() == 0:
            damaged_dir = self.workdir / DAMAGED_DIR
            damaged_dir.mkdir(exist_ok=True)
            for step, error in unreadable:
                source = self.checkpoint_dir / str(step)
                dest = damaged_dir / str(step)
                n = 1
                while dest.exists():
                    dest, n = damaged_dir / f"{step}-{n}", n + 1
                shutil.move(source, dest)
                logging.warning(
                    "checkpoint step %d cannot be read (%s): moved %s to %s (inspect or delete "
                    "it there); resuming from step %d, the newest readable checkpoint",
                    step,
                    error.reason,
                    source,
                    dest,
                    restored_step,
                )
        sync_processes("drd_jax.checkpointing.move_aside")
        self._manager.reload()

    def read_extra(self, step: int | None = None) -> dict:
        """The ``extra`` dict saved with ``step`` (default: the latest), without reading the state.

        Raises ``FileNotFoundError`` when there is no such checkpoint,
        :class:`UnreadableCheckpointError` when it cannot be read and ``ValueError`` when it was
        written under another config fingerprint.
        """
        self.wait()
        step = self._existing_step(step)
        meta = self._read(step, {_META: ocp.args.JsonRestore()})[_META]
        return self._checked_extra(meta)

    def _checked_extra(self, meta: Mapping[str, Any]) -> dict:
        found = meta.get("config_fingerprint", "")
        if found != self.config_fingerprint:
            raise _mismatch(self.workdir, found, self.config_fingerprint)
        return meta.get("extra", {})

    # -- lifecycle ------------------------------------------------------------------------------

    def wait(self) -> None:
        """Blocks until every started save is fully written (:class:`DiskFullError` if one ran
        out of space)."""
        with self._disk_full_check():
            self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager's threads.

        A full disk already reported by :meth:`save` or :meth:`wait` is not raised again (a run
        that stops on it closes its checkpointer on the way out). Closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        try:
            self.wait()
        except Exception:
            if not self._disk_full_reported:
                raise
        finally:
            try:
                self._manager.close()
            except Exception:
                if not self._disk_full_reported:
                    raise

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
