"""Data parallelism: one step function, two thin wrappers (`jit` + NamedSharding, `pmap`).

``DataParallel(kind, num_devices)`` owns the device list and a 1-D mesh with axis ``'data'``:

* ``'jit'``: ``jax.jit`` with ``out_shardings`` replicated (``P()``); batches are global arrays
  sharded along their first (batch) dimension (``NamedSharding(mesh, P('data'))``), assembled
  from each process's part with ``jax.make_array_from_process_local_data``; XLA inserts the
  gradient all-reduce. The step function is called with ``axis_name=None``.
* ``'pmap'``: ``jax.pmap`` over the local devices with ``axis_name='batch'``; batches carry a
  leading device axis and the state is replicated along it; the step function reduces with
  ``lax.psum(..., 'batch')``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import jax
import numpy as np
from flax import jax_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from drd_jax.errors import ConfigError

__all__ = [
    "DataParallel",
    "MESH_AXIS",
    "PARALLEL",
    "PMAP_AXIS",
    "main_process_first",
    "sum_over_devices",
    "sync_processes",
]

PARALLEL = ("jit", "pmap")
PMAP_AXIS = "batch"
MESH_AXIS = "data"


def sum_over_devices(tree, axis_name: str | None):
    """``lax.psum(tree, axis_name)`` inside ``pmap``; ``tree`` itself when ``axis_name`` is None
    (``jit``, where the arrays are already global)."""
    return tree if axis_name is None else jax.lax.psum(tree, axis_name)


def sync_processes(name: str) -> None:
    """Waits until every process of a multi-process job reaches ``sync_processes(name)``
    (nothing on a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def main_process_first(fn: Callable, name: str):
    """``fn()`` on process 0, then on the other processes once it has returned there; e.g. a
    dataset build into shared storage, which the others then find done. Returns ``fn()``."""
    if jax.process_index() == 0:
        result = fn()
        sync_processes(name)
        return result
    sync_processes(name)
    return fn()


class DataParallel:
    """The two thin wrappers around one step function: ``'jit'`` (NamedSharding) or ``'pmap'``.

    Args:
      kind: 'jit' or 'pmap'.
      num_devices: 0 = all (``jax.devices()`` for jit, ``jax.local_devices()`` for pmap); else the
        first ``num_devices`` (single process only).
    """

    def __init__(self, kind: str, num_devices: int = 0):
        if kind not in PARALLEL:
            raise ConfigError(f"parallel must be one of {PARALLEL}, got {kind!r}")
        if num_devices and jax.process_count() > 1:
            raise ConfigError("config.num_devices must be 0 (all devices) on multi-host runs")
        self.kind = kind
        devices = jax.local_devices() if kind == "pmap" else jax.devices()
        if num_devices:
            if num_devices > len(devices):
                raise ConfigError(
                    f"config.num_devices={num_devices} but only {len(devices)} devices exist"
                )
            devices = devices[:num_devices]
        self.devices = list(devices)
        self.mesh = Mesh(np.array(self.devices), (MESH_AXIS,))
        self.replicated = NamedSharding(self.mesh, P())
        self.data_sharding = NamedSharding(self.mesh, P(MESH_AXIS))

    @property
    def num_devices(self) -> int:
        """Devices of the whole run (all processes)."""
        n = len(self.devices)
        return n * jax.process_count() if self.kind == "pmap" else n

    @property
    def pipeline_num_devices(self) -> int | None:
        """The input pipeline's ``num_devices``: the leading device axis for pmap, else None."""
        return len(self.devices) if self.kind == "pmap" else None

    def put_state(self, tree):
        """Host (or single-copy) pytree -> replicated on the devices."""
        if self.kind == "pmap":
            return jax_utils.replicate(tree, devices=self.devices)
        return jax.device_put(tree, self.replicated)

    def unreplicate(self, tree):
        """Replicated pytree -> one copy (for saving, fingerprints, host reads)."""
        if self.kind == "pmap":
            return jax.tree.map(lambda x: x[0], tree)
        return tree

    def host(self, tree):
        """Replicated pytree (e.g. metrics) -> numpy, valid on every process."""
        if self.kind == "pmap":  # shard 0 has shape (1, ...)
            return jax.tree.map(lambda x: np.asarray(x.addressable_data(0))[0], tree)
        return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)

    def shard_batch(self, batch: Mapping[str, np.ndarray]):
        """A batch of the input pipeline (this process's part) -> the step's input."""
        if self.kind == "pmap":
            return dict(batch)
        return {
            k: jax.make_array_from_process_local_data(self.data_sharding, np.asarray(v))
            for k, v in batch.items()
        }

    def compile(self, step_fn: Callable, *, donate_state: bool = False) -> Callable:
        """``step_fn(state_like, batch, *rest, axis_name=...)`` -> parallel callable."""
        if self.kind == "pmap":
            return jax.pmap(
                functools.partial(step_fn, axis_name=PMAP_AXIS),
                axis_name=PMAP_AXIS,
                devices=self.devices,
                donate_argnums=(0,) if donate_state else (),
            )
        return jax.jit(
            functools.partial(step_fn, axis_name=None),
            out_shardings=self.replicated,
            donate_argnums=(0,) if donate_state else (),
        )
