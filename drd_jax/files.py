"""Small file helpers shared by the training outputs (configs, logs, results)."""

import os
import pathlib


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` so that readers see either the old file or the whole new one.

    The text goes to a hidden temporary file beside ``path``, which then replaces it
    (``os.replace`` is atomic on POSIX and Windows within one file system).
    """
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
