"""Temporary ``git worktree`` checkouts of revisions, for benchmarks that compare code."""

from __future__ import annotations

import contextlib
import pathlib
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence

from drd_jax.errors import ConfigError

__all__ = ["REPO_ROOT", "checkouts", "resolve"]

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO_ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()


def resolve(revisions: Sequence[str]) -> dict[str, str]:
    """``{revision: short commit}``; ``ValueError`` names a revision this repository lacks."""
    commits = {}
    for rev in revisions:
        try:
            commits[rev] = _git("rev-parse", "--short", rev)
        except subprocess.CalledProcessError:
            raise ConfigError(f"{rev!r} is not a git revision of {REPO_ROOT}") from None
    return commits


@contextlib.contextmanager
def checkouts(commits: Mapping[str, str]) -> Iterator[dict[str, tuple[str, pathlib.Path]]]:
    """``{revision: (commit, checkout directory)}`` of :func:`resolve`'s output, removed on exit."""
    with tempfile.TemporaryDirectory(prefix="worktrees_") as tmp:
        out = {}
        try:
            for i, (rev, commit) in enumerate(commits.items()):
                path = pathlib.Path(tmp) / f"{i}_{commit}"
                _git("worktree", "add", "--detach", str(path), commit)
                out[rev] = (commit, path)
            yield out
        finally:
            for _, path in out.values():
                _git("worktree", "remove", "--force", str(path))
