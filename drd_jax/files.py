"""Small file helpers shared by the training outputs (configs, logs, results) and segment, the
one error a full disk gives (:class:`DiskFullError`) and the check that a directory can be
written before anything is (:func:`check_writable_dir`)."""

import contextlib
import errno
import os
import pathlib
import shutil

from drd_jax.errors import UserError

__all__ = [
    "DiskFullError",
    "UnusableDirectoryError",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_writable_dir",
    "disk_full_error",
    "format_bytes",
    "is_disk_full",
]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` so that readers see either the old file or the whole new one.

    The bytes go to a hidden temporary file beside ``path``, which then replaces it
    (``os.replace`` is atomic on POSIX and Windows within one file system). If writing fails, the
    temporary file is removed and ``path`` is left as it was.
    """
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8 (no newline translation)."""
    atomic_write_bytes(path, text.encode("utf-8"))


class DiskFullError(UserError, OSError):
    """No space left on the device while writing a run's files (``errno`` is ``ENOSPC``).

    ``str()`` is one line that names the path, the space free there and the space needed, and
    says what to do; ``filename`` is the path. The entry points exit with status 1 (not a usage
    error).
    """

    exit_status = 1

    def __init__(self, message: str, path: str | os.PathLike):
        super().__init__(errno.ENOSPC, message)
        self.filename = str(path)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # picklable (e.g. across processes) with its own arguments
        return type(self), (self.message, self.filename)


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or an error it was raised from) means no space left on a device:
    ``OSError(ENOSPC)``, or the message TensorStore/orbax give for it."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(error)
        if "No space left on device" in text or "os_error_code='28'" in text:
            return True
        error = error.__cause__ or error.__context__
    return False


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KB'`` (powers of 1024, one decimal; bytes as a whole number)."""
    units = ("B", "KB", "MB", "GB", "TB")
    i = 0
    while abs(n) >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{n:.0f} B" if i == 0 else f"{n:.1f} {units[i]}"


def _free_bytes(path: pathlib.Path) -> int | None:
    """Free bytes on the file system of ``path`` (or of its nearest existing parent)."""
    for p in (path, *path.parents):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(p).free
    return None


def disk_full_error(
    path: str | os.PathLike, *, what: str, needed: str | None, then: str
) -> DiskFullError:
    """A :class:`DiskFullError` for writing ``what`` to ``path``: one line naming the path and
    the space free there, then ``needed`` (e.g. ``"the run needs about 3.2 MB for ..."``) and
    ``then`` (what to do once space is freed)."""
    path = pathlib.Path(path)
    free = _free_bytes(path)
    free_text = "" if free is None else f" ({format_bytes(free)} free there)"
    need_text = "" if needed is None else f"; {needed}"
    return DiskFullError(
        f"no space left on device writing {what} to {path}{free_text}{need_text}. "
        f"Free some space, then {then}",
        path,
    )


class UnusableDirectoryError(UserError, OSError):
    """A directory to write into is a file, sits under one, or cannot be written (one line naming
    the path and what was expected)."""


def check_writable_dir(path: str | os.PathLike, *, what: str) -> pathlib.Path:
    """``path`` as an absolute path, if it is a directory this process can write into, or one it
    can create; checks only, creates nothing.

    Args:
      path: the directory.
      what: how messages name it, e.g. ``"workdir"`` or ``"--output"``.

    Raises:
      UnusableDirectoryError: ``path`` is a file, or its nearest existing ancestor is a file, or
        that ancestor (or ``path``) is not writable (permissions, a read-only file system).
    """
    path = pathlib.Path(path).expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing == path and not path.is_dir():
        raise UnusableDirectoryError(f"{what} {path} is a file, not a directory")
    if not existing.is_dir():
        raise UnusableDirectoryError(
            f"{what} {path} cannot be created: {existing} is a file, not a directory"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only_fs(existing) else "no write permission"
        where = "" if existing == path else f" (it would be created in {existing})"
        raise UnusableDirectoryError(
            f"{what} {path} is not writable{where}: {reason}; choose a directory you can write"
        )
    return path


def _read_only_fs(path: pathlib.Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
