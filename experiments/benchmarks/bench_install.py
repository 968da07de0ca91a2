r"""Times ``make install`` (a new ``.venv`` from requirements.txt) of several git revisions side
by side, interleaved.

    python -m experiments.benchmarks.bench_install --revisions=HEAD~1,HEAD --repeats=3

Each revision is checked out in a temporary ``git worktree``; every repeat deletes its ``.venv``
and runs its Makefile's ``install`` target with ``PYTHON`` (default ``python3.11``), so only the
Makefile and requirements differ. pip's cache is shared, as on a machine that installed once
before. Repeats are interleaved (A B A B ...) to spread the machine's noise over both. Prints one
markdown row per revision: the seconds of each repeat, their median, the ratio to the first
revision's median, and how many ``.pyc`` files the venv holds (the byte-compiled modules every
later process reads instead of compiling the source again).
"""

from __future__ import annotations

import pathlib
import shutil
import statistics
import subprocess
import time

from absl import app, flags

from experiments.tools import worktrees

_REVISIONS = flags.DEFINE_list("revisions", ["HEAD~1", "HEAD"], "git revisions to compare.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Installs of each revision.")
_PYTHON = flags.DEFINE_string("python", "python3.11", "The interpreter the venv is made from.")


def make_install(checkout: pathlib.Path, python: str) -> tuple[float, int]:
    """``(wall seconds, .pyc files in the venv)`` of ``make install`` in ``checkout``, from no
    ``.venv``. Raises ``RuntimeError`` with make's output if it fails."""
    shutil.rmtree(checkout / ".venv", ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.run(
        ["make", "install", f"PYTHON={python}"], cwd=checkout, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"make install failed in {checkout}:\n{proc.stdout}\n{proc.stderr}")
    return seconds, sum(1 for _ in (checkout / ".venv").rglob("*.pyc"))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _REPEATS.value < 1:
        raise app.UsageError(f"--repeats must be >= 1, got {_REPEATS.value}")
    if shutil.which(_PYTHON.value) is None:
        raise app.UsageError(f"--python: {_PYTHON.value!r} is not on PATH")
    try:
        commits = worktrees.resolve(_REVISIONS.value)
    except ValueError as e:
        raise app.UsageError(f"--revisions: {e}") from None
    times: dict[str, list[float]] = {rev: [] for rev in _REVISIONS.value}
    pycs: dict[str, int] = {}
    with worktrees.checkouts(commits) as checkouts:
        for repeat in range(_REPEATS.value):
            for rev in _REVISIONS.value:
                commit, path = checkouts[rev]
                seconds, pycs[rev] = make_install(path, _PYTHON.value)
                times[rev].append(seconds)
                print(f"repeat {repeat} {rev} ({commit}): {seconds:.1f} s", flush=True)
    first = statistics.median(times[_REVISIONS.value[0]])
    print("\n| revision | commit | seconds | median | ratio | .pyc files |")
    print("|---|---|---|---:|---:|---:|")
    for rev in _REVISIONS.value:
        median = statistics.median(times[rev])
        each = ", ".join(f"{t:.1f}" for t in times[rev])
        print(
            f"| {rev} | {commits[rev]} | {each} | {median:.1f} | {median / first:.2f} "
            f"| {pycs[rev]} |"
        )


if __name__ == "__main__":
    app.run(main)
