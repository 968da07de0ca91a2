"""Checkpoints of a training run, behind one small class.

Everything orbax-specific lives in this module, so a move to orbax's v1 API touches only this file.
A run's ``workdir`` holds::

    <workdir>/config.json          {"config_fingerprint": ..., "config": ...}, by the first run
    <workdir>/checkpoints/<step>/  state/ (the train-state pytree, StandardSave)
                                   meta/  (JSON: config fingerprint and the caller's ``extra`` dict)
                                   metrics/ (JSON, only when eval metrics were passed to ``save``)

Typical use in a training loop::

    fp = config_fingerprint(config.to_dict(), ignore=("workdir",))
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
* **Restore without a checkpoint raises** ``FileNotFoundError`` (check :meth:`latest_step` first).
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
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging

from drd_jax.files import atomic_write_text

__all__ = ["Checkpointer", "config_fingerprint"]

_CONFIG_FILE = "config.json"
_CHECKPOINT_DIR = "checkpoints"
_STATE = "state"
_META = "meta"


def _plain(value: Any) -> Any:
    """Converts config/extra values (ConfigDicts, tuples, numpy and JAX scalars/arrays) to JSON."""
    if hasattr(value, "to_dict") and callable(value.to_dict):  # ml_collections.ConfigDict
        value = value.to_dict()
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"JSON object keys must be strings, got {k!r}")
            out[k] = _plain(v)
        return out
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, jax.Array) and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
        value = jax.random.key_data(value)
    if isinstance(value, np.ndarray | np.generic | jax.Array):
        return _plain(np.asarray(value).tolist())
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"value of type {type(value).__name__} is not JSON-serialisable: {value!r}")


def _drop(tree: dict, dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for name in parents:
        tree = tree.get(name)
        if not isinstance(tree, dict):
            return
    tree.pop(leaf, None)


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


def config_fingerprint(config: Mapping[str, Any], *, ignore: Iterable[str] = ()) -> str:
    """SHA-256 hex digest of the canonical JSON of ``config``.

    Canonical: keys sorted, no whitespace, tuples as lists, numpy/JAX scalars as Python numbers, so
    the same config gives the same fingerprint in every process and Python version.

    Args:
      config: a mapping (or ``ml_collections.ConfigDict``) of JSON-able values.
      ignore: keys left out of the fingerprint, e.g. ``("workdir",)``; dotted names
        (``"data.data_dir"``) reach into nested mappings. Missing keys are fine.

    Raises:
      TypeError: if a value cannot be written as JSON.
    """
    tree = _plain(config)
    if not isinstance(tree, dict):
        raise TypeError(f"config must be a mapping, got {type(config).__name__}")
    for name in ignore:
        _drop(tree, name)
    text = json.dumps(tree, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _mismatch(workdir: pathlib.Path, found: str, expected: str) -> ValueError:
    return ValueError(
        f"workdir {workdir} belongs to a run with a different config (fingerprint {found[:12]}..., "
        f"this config {expected[:12]}...). Use a new workdir for a new config, or pass the same "
        "config to resume that run."
    )


class Checkpointer:
    """Saves and restores a train-state pytree plus a JSON dict of extras under ``workdir``.

    Args:
      workdir: the run's directory (created if missing).
      config_fingerprint: see :func:`config_fingerprint`; a workdir holding another one is refused.
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
        self._check_or_write_config(config)

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
            self._manager = ocp.CheckpointManager(
                self.checkpoint_dir, item_names=(_STATE, _META), options=options
            )

    # -- config check ---------------------------------------------------------------------------

    def _check_or_write_config(self, config: Mapping[str, Any] | None) -> None:
        path = self.workdir / _CONFIG_FILE
        if path.exists():
            try:
                found = json.loads(path.read_text())["config_fingerprint"]
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(
                    f"workdir {self.workdir}: cannot read the config fingerprint from {path} "
                    f"({e}). Use a new workdir."
                ) from e
            if found != self.config_fingerprint:
                raise _mismatch(self.workdir, found, self.config_fingerprint)
            return
        if self.checkpoint_dir.is_dir() and any(
            p.name.isdigit() for p in self.checkpoint_dir.iterdir()
        ):
            raise ValueError(
                f"workdir {self.workdir} holds checkpoints but no {_CONFIG_FILE}, so its config is "
                "unknown. Use a new workdir."
            )
        if jax.process_index() != 0 or self.read_only:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        body = {
            "config_fingerprint": self.config_fingerprint,
            "config": None if config is None else _plain(config),
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
        """
        if self.read_only:
            raise RuntimeError(f"Checkpointer of {self.workdir} is read-only")
        step = int(step)
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}")
        meta = {
            "config_fingerprint": self.config_fingerprint,
            "extra": _plain(dict(extra or {})),
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
                raise FileNotFoundError(f"no checkpoint in {self.checkpoint_dir}")
        elif int(step) not in self._manager.all_steps():
            raise FileNotFoundError(
                f"no checkpoint for step {step} in {self.checkpoint_dir}; "
                f"available steps: {self.all_steps()}"
            )
        return int(step)

    def restore(self, step: int | None = None, *, target: Any) -> tuple[Any, dict]:
        """Restores the checkpoint at ``step`` (default: the latest) into ``target``'s structure.

        Args:
          step: which step; ``None`` means :meth:`latest_step`.
          target: a pytree like the saved one (e.g. a freshly initialised ``TrainState``, or its
            ``jax.ShapeDtypeStruct`` tree); the result has its tree structure, shapes, dtypes and
            shardings, including typed PRNG key arrays.

        Returns:
          ``(state, extra)``; ``extra`` is the JSON dict given to ``save`` (lists stay lists).

        Raises:
          FileNotFoundError: no checkpoint at all, or none at ``step``.
          ValueError: the checkpoint was written under a different config fingerprint.
        """
        self.wait()
        step = self._existing_step(step)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                **{_STATE: ocp.args.StandardRestore(abstract), _META: ocp.args.JsonRestore()}
            ),
        )
        return restored[_STATE], self._checked_extra(restored[_META])

    def read_extra(self, step: int | None = None) -> dict:
        """The ``extra`` dict saved with ``step`` (default: the latest), without reading the state.

        Raises ``FileNotFoundError`` when there is no such checkpoint and ``ValueError`` when it was
        written under another config fingerprint.
        """
        self.wait()
        step = self._existing_step(step)
        meta = self._manager.restore(
            step, args=ocp.args.Composite(**{_META: ocp.args.JsonRestore()})
        )[_META]
        return self._checked_extra(meta)

    def _checked_extra(self, meta: Mapping[str, Any]) -> dict:
        found = meta.get("config_fingerprint", "")
        if found != self.config_fingerprint:
            raise _mismatch(self.workdir, found, self.config_fingerprint)
        return meta.get("extra", {})

    # -- lifecycle ------------------------------------------------------------------------------

    def wait(self) -> None:
        """Blocks until every started save is fully written."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager's threads."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
