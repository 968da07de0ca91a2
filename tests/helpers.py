"""Helpers shared by test modules (importable as ``helpers``: pytest puts tests/ on sys.path)."""

import os
import pathlib
import subprocess
import sys

from experiments.configs import synthetic
from experiments.tools import fault_probes

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY_CONFIG = f"--config={REPO_ROOT / 'experiments' / 'configs' / 'synthetic.py'}:tiny"
# ``{relative path: content}`` of everything under a folder, a folder's content being ``b"<dir>"``
# (a new empty folder counts as a change): the fault probes' own check that nothing changed.
folder_contents = fault_probes.snapshot
# Subprocesses of the tests: CPU, XLA optimisations off (as in test_train.py: compiles faster).
SUBPROCESS_ENV = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1", JAX_PLATFORMS="cpu")


def tiny(data_dir, **overrides):
    """The ``synthetic.py:tiny`` config in baseline mode on ``data_dir``, with ``overrides``."""
    c = synthetic.get_config("tiny")
    c.data_dir = data_dir
    c.mode = "baseline"
    for k, v in overrides.items():
        c[k] = v
    return c


def train_command(workdir, data_dir, *overrides: str, mode: str = "baseline") -> list[str]:
    """``python -m experiments.train`` of the tiny config in ``workdir`` on ``data_dir``, in
    ``mode``, with ``overrides`` (``--config.<field>=<value>`` strings)."""
    return [
        sys.executable,
        "-m",
        "experiments.train",
        TINY_CONFIG,
        f"--workdir={workdir}",
        f"--config.data_dir={data_dir}",
        f"--config.mode={mode}",
        *overrides,
    ]


def run_command(command, timeout: int = 300) -> subprocess.CompletedProcess:
    """Runs ``command`` from the repository root with :data:`SUBPROCESS_ENV` (output captured,
    no exception on a non-zero status)."""
    return subprocess.run(
        [str(a) for a in command],
        cwd=REPO_ROOT,
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def folder_stats(directory: pathlib.Path) -> dict[str, tuple[int, int, int]]:
    """``{relative path: (size in bytes, mtime in ns, inode)}`` of ``directory`` itself (as
    ``"."``) and everything under it: equal snapshots mean nothing was written, replaced or
    touched, not only that the bytes are the same."""
    stats = {p: p.stat() for p in sorted([directory, *directory.rglob("*")])}
    return {
        p.relative_to(directory).as_posix(): (s.st_size, s.st_mtime_ns, s.st_ino)
        for p, s in stats.items()
    }
