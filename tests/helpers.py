"""Helpers shared by test modules (importable as ``helpers``: pytest puts tests/ on sys.path)."""

import os
import pathlib
import subprocess
import sys

from experiments.configs import synthetic

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY_CONFIG = f"--config={REPO_ROOT / 'experiments' / 'configs' / 'synthetic.py'}:tiny"
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
