"""One live training run per workdir: an OS lock on ``<workdir>/.lock``.

A run takes the lock before it writes anything into its workdir and holds it for its life
(``fcntl.flock``, exclusive, non-blocking). A second run on the same workdir is refused at once
with :class:`WorkdirLockedError`, naming the workdir and the holder's pid and host (which the
holder writes into the file). The kernel releases the lock when the holding process ends, however
it ends (``kill -9`` included), so a lock file left by a killed run never blocks a resume: the
file stays, the lock does not.

Readers (``runs.load_run``, a student reading its teacher) never take it. On a multi-host run only
process 0 takes it (the others share the workdir by design). ``flock`` locks are advisory and
local to one machine on some network file systems (NFS before v4 may not propagate them); two
hosts started on one shared workdir as two separate jobs are not caught there.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import pathlib
import socket
import sys

from drd_jax.errors import UserError
from drd_jax.files import UnusableDirectoryError, check_writable_dir

__all__ = ["LOCK_NAME", "WorkdirLock", "WorkdirLockedError"]

LOCK_NAME = ".lock"


class WorkdirLockedError(UserError, RuntimeError):
    """Another live process holds the workdir (the message names it, its pid and host)."""


def _holder_text(path: pathlib.Path) -> str:
    """``'pid 123 on host h, started 2025-01-01 12:00:00'`` from the lock file, as far as known."""
    try:
        holder = json.loads(path.read_text())
        text = f"pid {holder['pid']} on host {holder['host']}"
        if holder.get("started"):
            text += f", started {holder['started']}"
        return text
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not yet written its pid"


class WorkdirLock:
    """The lock of ``workdir`` (created, with its parents, on :meth:`acquire`).

    Use as ``with WorkdirLock(workdir): ...`` or ``lock = WorkdirLock(workdir).acquire()`` ...
    ``lock.release()``.
    """

    def __init__(self, workdir: str | os.PathLike):
        self.workdir = pathlib.Path(workdir).expanduser().absolute()
        self.path = self.workdir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> WorkdirLock:
        """Takes the lock or raises :class:`WorkdirLockedError` at once; returns ``self``.

        A workdir that is a file, sits under one or cannot be written raises
        ``files.UnusableDirectoryError`` (one line naming it)."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this WorkdirLock")
        check_writable_dir(self.workdir, what="workdir")
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UnusableDirectoryError(
                f"workdir {self.workdir}: cannot create its lock file {self.path} "
                f"({e.strerror or e}); choose a directory you can write"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise WorkdirLockedError(
                f"workdir {self.workdir} is in use by another run ({_holder_text(self.path)}). "
                "Wait for it to finish or stop it, or use another workdir; two runs in one "
                "workdir would destroy each other's checkpoints. (The lock is released when "
                f"that process ends, even by kill -9: {self.path}.)"
            ) from None
        self._fd = fd
        self._write_holder()
        return self

    def _write_holder(self) -> None:
        started = datetime.datetime.now().isoformat(sep=" ", timespec="seconds")
        body = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": started,
            "argv": sys.argv,
        }
        data = (json.dumps(body) + "\n").encode("utf-8")
        with contextlib.suppress(OSError):  # e.g. a full disk: the lock holds all the same
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        """Releases the lock (the file stays: deleting it would race with a new holder)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()
