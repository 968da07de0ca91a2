"""Small file helpers shared by the training outputs (configs, logs, results) and segment."""

import contextlib
import os
import pathlib


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
