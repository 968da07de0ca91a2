"""``--multihost`` and the coordinates of a multi-process job, for the entry points that train.

    python -m experiments.train ... --multihost                       # coordinates auto-detected
    python -m experiments.train ... --multihost --coordinator_address=host0:1234 \\
        --num_processes=2 --process_id=0                              # given by hand

With ``--multihost`` the entry point calls ``jax.distributed.initialize()`` before anything else
touches JAX. Without the three coordinates, JAX detects them from the cluster (SLURM, Open MPI,
Cloud TPU); given, they must be given together (every process gets the same
``--coordinator_address`` and ``--num_processes`` and its own ``--process_id``). When there is
nothing to detect, the error names the three flags.

Each process logs one line, ``waiting for the coordinator at HOST:PORT (timeout N s)``, then waits
for the job to form: process 0 runs the coordinator there and every process connects to it. If
that has not happened after ``--coordinator_timeout`` seconds (default
:data:`DEFAULT_TIMEOUT_S`; a coordinator that never starts, a wrong address, a process that was
not started), the process stops with one line, ``error: ...`` naming the coordinator's address,
and exit status 2, instead of waiting silently.

The entry points make these flags key flags of their module (``flags.adopt_module_key_flags``),
so their ``--help`` lists them.
"""

from __future__ import annotations

import inspect
import os
import sys
import threading

from absl import flags, logging

from drd_jax.errors import ConfigError

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "define_flags",
    "initialize",
    "initialize_arguments",
    "start_job",
]

_COORDINATES = ("coordinator_address", "num_processes", "process_id")
DEFAULT_TIMEOUT_S = 300  # as jax.distributed.initialize's own default
# JAX's own deadline comes this much later than ours, so the one-line error below is what stops a
# process (JAX's deadline aborts the process with a native stack trace).
_JAX_GRACE_S = 30
_EXIT_STATUS = 2  # as experiments/cli.py's user errors
_NEED_COORDINATES = (
    "give --coordinator_address=HOST:PORT (process 0's coordinator), --num_processes=N and "
    "--process_id=I (this process, 0-based) with --multihost"
)


def define_flags() -> None:
    """Defines ``--multihost``, ``--coordinator_address``, ``--num_processes``, ``--process_id``
    and ``--coordinator_timeout`` (once per process)."""
    if "multihost" in flags.FLAGS:
        return
    flags.DEFINE_bool(
        "multihost",
        False,
        "Call jax.distributed.initialize() first (one process per host), with "
        "--coordinator_address, --num_processes and --process_id or auto-detected coordinates "
        "(SLURM, Open MPI, Cloud TPU).",
    )
    flags.DEFINE_string(
        "coordinator_address",
        None,
        "With --multihost: HOST:PORT of process 0's coordinator (default: auto-detected).",
    )
    flags.DEFINE_integer(
        "num_processes", None, "With --multihost: processes in the job (default: auto-detected)."
    )
    flags.DEFINE_integer(
        "process_id", None, "With --multihost: this process's index, 0-based (default: auto)."
    )
    flags.DEFINE_integer(
        "coordinator_timeout",
        DEFAULT_TIMEOUT_S,
        "With --multihost: seconds to wait for the coordinator and every process of the job "
        "before stopping with an error naming the coordinator's address.",
        lower_bound=1,
    )


def initialize_arguments(
    multihost: bool,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> dict | None:
    """The keyword arguments of ``jax.distributed.initialize`` for these flags (``{}``:
    auto-detect), or None without ``--multihost``. ``ValueError`` names a bad flag."""
    values = (coordinator_address, num_processes, process_id)
    given = {k: v for k, v in zip(_COORDINATES, values, strict=True) if v is not None}
    if not multihost:
        if given:
            raise ConfigError(f"--{next(iter(given))} needs --multihost")
        return None
    if not given:
        return {}
    missing = [f"--{name}" for name in _COORDINATES if name not in given]
    if missing:
        raise ConfigError(
            f"give --coordinator_address, --num_processes and --process_id together (or none, "
            f"to auto-detect); missing {', '.join(missing)}"
        )
    host, sep, port = coordinator_address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--coordinator_address must be HOST:PORT, got {coordinator_address!r}")
    if num_processes < 1:
        raise ConfigError(f"--num_processes must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise ConfigError(f"--process_id must be in [0, {num_processes}), got {process_id}")
    return dict(given)


def _timed_out(message: str) -> None:
    """The watchdog's end: JAX's wait cannot be interrupted, so the process stops here."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    os._exit(_EXIT_STATUS)


def start_job(kwargs: dict, timeout_s: int) -> None:
    """``jax.distributed.initialize(**kwargs)``, stopping the process after ``timeout_s`` seconds.

    Logs ``waiting for the coordinator at ADDRESS (timeout N s)`` first. When the job has not
    formed after ``timeout_s`` (JAX's wait cannot be interrupted), prints one line
    ``error: ...`` naming the coordinator's address and ends the process (exit status 2).

    Raises:
      ValueError: no coordinates given and none detected (naming the three flags), or a
        ``timeout_s`` below 1.
    """
    import jax

    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int) or timeout_s < 1:
        raise ConfigError(f"--coordinator_timeout must be an int >= 1 (seconds), got {timeout_s!r}")
    address = kwargs.get("coordinator_address")
    where = f"the coordinator at {address}" if address else "the auto-detected coordinator"
    logging.info("waiting for %s (timeout %d s)", where, timeout_s)
    call = dict(kwargs)
    if "initialization_timeout" in inspect.signature(jax.distributed.initialize).parameters:
        call["initialization_timeout"] = timeout_s + _JAX_GRACE_S
    processes = kwargs.get("num_processes")
    message = (
        f"--multihost: the job did not start within {timeout_s} s (--coordinator_timeout): "
        f"waited for {where}"
        + (f" and all {processes} processes" if processes else "")
        + "; check that process 0 is running and reachable at that address and that every "
        "process was started with the same --coordinator_address and --num_processes"
    )
    watchdog = threading.Timer(timeout_s, _timed_out, args=(message,))
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(**call)
    except ValueError as e:
        if address:
            raise
        raise ConfigError(
            f"--multihost: found no cluster to auto-detect the job's coordinates from (SLURM, "
            f"Open MPI, Cloud TPU; JAX: {str(e).strip()}); {_NEED_COORDINATES}"
        ) from e
    finally:
        watchdog.cancel()


def initialize() -> None:
    """``jax.distributed.initialize`` as the flags say (nothing without ``--multihost``), with
    :func:`start_job`'s log line and timeout."""
    f = flags.FLAGS
    kwargs = initialize_arguments(f.multihost, f.coordinator_address, f.num_processes, f.process_id)
    if kwargs is not None:
        start_job(kwargs, f.coordinator_timeout)
