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

import argparse
import pathlib
import shutil
import statistics
import subprocess
import sys
import time

from experiments.tools import worktrees


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command's flags; ``--revisions`` becomes a list. A bad value exits with status 2."""
    p = argparse.ArgumentParser(
        prog="python -m experiments.benchmarks.bench_install", description=__doc__
    )
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--revisions", default="HEAD~1,HEAD", help="git revisions to compare")
    p.add_argument("--repeats", type=int, default=3, help="installs of each revision")
    p.add_argument("--python", default="python3.11", help="the interpreter the venv is made from")
    args = p.parse_args(argv)
    args.revisions = [r for r in args.revisions.split(",") if r]
    if not args.revisions:
        p.error("--revisions: expected at least one git revision")
    if args.repeats < 1:
        p.error(f"--repeats: expected >= 1, got {args.repeats}")
    if shutil.which(args.python) is None:
        p.error(f"--python: {args.python!r} is not on PATH")
    try:
        args.commits = worktrees.resolve(args.revisions)
    except ValueError as e:
        p.error(f"--revisions: {e}")
    return args


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    commits = args.commits
    times: dict[str, list[float]] = {rev: [] for rev in args.revisions}
    pycs: dict[str, int] = {}
    with worktrees.checkouts(commits) as checkouts:
        for repeat in range(args.repeats):
            for rev in args.revisions:
                commit, path = checkouts[rev]
                seconds, pycs[rev] = make_install(path, args.python)
                times[rev].append(seconds)
                print(f"repeat {repeat} {rev} ({commit}): {seconds:.1f} s", flush=True)
    first = statistics.median(times[args.revisions[0]])
    print("\n| revision | commit | seconds | median | ratio | .pyc files |")
    print("|---|---|---|---:|---:|---:|")
    for rev in args.revisions:
        median = statistics.median(times[rev])
        each = ", ".join(f"{t:.1f}" for t in times[rev])
        print(
            f"| {rev} | {commits[rev]} | {each} | {median:.1f} | {median / first:.2f} "
            f"| {pycs[rev]} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
