"""``--multihost`` and the coordinates of a multi-process job, for the entry points that train.

    python -m experiments.train ... --multihost                       # coordinates auto-detected
    python -m experiments.train ... --multihost --coordinator_address=host0:1234 \\
        --num_processes=2 --process_id=0                              # given by hand

With ``--multihost`` the entry point calls ``jax.distributed.initialize()`` before anything else
touches JAX. Without the three coordinates, JAX detects them from the cluster (SLURM, Open MPI,
Cloud TPU); given, they must be given together (every process gets the same
``--coordinator_address`` and ``--num_processes`` and its own ``--process_id``).
"""

from __future__ import annotations

from absl import flags

__all__ = ["define_flags", "initialize", "initialize_arguments"]

_COORDINATES = ("coordinator_address", "num_processes", "process_id")


def define_flags() -> None:
    """Defines ``--multihost``, ``--coordinator_address``, ``--num_processes``, ``--process_id``
    (once per process)."""
    if "multihost" in flags.FLAGS:
        return
    flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first.")
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
            raise ValueError(f"--{next(iter(given))} needs --multihost")
        return None
    if not given:
        return {}
    missing = [f"--{name}" for name in _COORDINATES if name not in given]
    if missing:
        raise ValueError(
            f"give --coordinator_address, --num_processes and --process_id together (or none, "
            f"to auto-detect); missing {', '.join(missing)}"
        )
    host, sep, port = coordinator_address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--coordinator_address must be HOST:PORT, got {coordinator_address!r}")
    if num_processes < 1:
        raise ValueError(f"--num_processes must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"--process_id must be in [0, {num_processes}), got {process_id}")
    return dict(given)


def initialize() -> None:
    """``jax.distributed.initialize`` as the flags say (nothing without ``--multihost``)."""
    f = flags.FLAGS
    kwargs = initialize_arguments(f.multihost, f.coordinator_address, f.num_processes, f.process_id)
    if kwargs is not None:
        import jax

        jax.distributed.initialize(**kwargs)
