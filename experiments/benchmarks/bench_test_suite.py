r"""Times the whole test suite of several git revisions side by side (interleaved, one venv).

    python -m experiments.benchmarks.bench_test_suite --revisions=6b47daa,HEAD --repeats=1
    python -m experiments.benchmarks.bench_test_suite --revisions=HEAD --workers=0,2  # xdist -n
    python -m experiments.benchmarks.bench_test_suite --revisions=HEAD --workers=2 \
        --marker="not integration"  # make test-fast

Each revision is checked out in a temporary ``git worktree`` and its suite run with this
interpreter (``python -m pytest -q``), ``PYTHONPATH`` set to that checkout, and the shared test
data of this checkout (``$DRD_SHARED_DATA``, else ``../shared/data``), so only the code differs.
Repeats are interleaved (A B A B ...) to spread the machine's noise over both. Prints one
markdown row per revision: wall seconds of each repeat, their median, the ratio to the first
revision's median, and pytest's summary line. ``--workers`` runs each revision once per worker
count (``pytest -n W --dist loadfile``, as ``make test``; 0 = in one process), each count a row of
its own. ``--marker`` selects tests by marker (``pytest -m``) in every row: ``"not integration"``
is ``make test-fast``; a revision older than the marker runs its whole suite.
"""

from __future__ import annotations

import os
import pathlib
import re
import statistics
import subprocess
import sys
import time

from absl import app, flags

from experiments.tools import worktrees

FLAGS = flags.FLAGS

ROOT = worktrees.REPO_ROOT


def run_suite(
    checkout: pathlib.Path, shared_data: str, workers: int = 0, marker: str = ""
) -> tuple[float, str]:
    """``(wall seconds, pytest's summary line)`` of the suite in ``checkout``, run by ``workers``
    pytest-xdist processes (0: in one process, as before xdist), only the tests that ``marker``
    (a ``pytest -m`` expression; '' = all) selects."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "DRD_SHARED_DATA": shared_data}
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-n",
            str(workers),
            "--dist",
            "loadfile",
            *(["-m", marker] if marker else []),
        ],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    summary = [line for line in proc.stdout.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    return seconds, (summary[-1].strip("= ") if summary else f"exit status {proc.returncode}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.repeats < 1:
        raise app.UsageError(f"--repeats must be >= 1, got {FLAGS.repeats}")
    shared = os.environ.get("DRD_SHARED_DATA", str(ROOT.parent / "shared" / "data"))
    try:
        commits = worktrees.resolve(FLAGS.revisions)
    except ValueError as e:
        raise app.UsageError(f"--revisions: {e}") from None
    try:
        workers = [int(w) for w in FLAGS.workers]
    except ValueError:
        raise app.UsageError(f"--workers: integers >= 0, got {FLAGS.workers}") from None
    if not workers or min(workers) < 0:
        raise app.UsageError(f"--workers: integers >= 0, got {FLAGS.workers}")
    rows = [(rev, w) for rev in FLAGS.revisions for w in workers]
    times: dict[tuple[str, int], list[float]] = {row: [] for row in rows}
    summaries: dict[tuple[str, int], str] = {}
    with worktrees.checkouts(commits) as checkouts:
        for repeat in range(FLAGS.repeats):
            for rev, w in rows:
                commit, path = checkouts[rev]
                seconds, summaries[rev, w] = run_suite(path, shared, w, FLAGS.marker)
                times[rev, w].append(seconds)
                result = f"{seconds:.0f} s, {summaries[rev, w]}"
                print(f"repeat {repeat} {rev} ({commit}) -n {w}: {result}", flush=True)
    first = statistics.median(times[rows[0]])
    marker = f"`-m {FLAGS.marker}`" if FLAGS.marker else "all"
    print("\n| revision | commit | workers | tests | seconds | median | ratio | pytest |")
    print("|---|---|---:|---|---|---:|---:|---|")
    for rev, w in rows:
        median = statistics.median(times[rev, w])
        each = ", ".join(f"{t:.0f}" for t in times[rev, w])
        ratio = median / first
        print(
            f"| {rev} | {commits[rev]} | {w} | {marker} | {each} | {median:.0f} | {ratio:.2f} | "
            f"{summaries[rev, w]} |"
        )


def define_flags() -> None:
    """The command line (defined only when run as a script, so importing this module is free)."""
    flags.DEFINE_list("revisions", ["HEAD~1", "HEAD"], "git revisions to compare.")
    flags.DEFINE_integer("repeats", 1, "Runs of each revision's suite.")
    flags.DEFINE_list(
        "workers", ["0"], "pytest-xdist worker counts (pytest -n W; 0 = one process), each a row."
    )
    flags.DEFINE_string(
        "marker", "", "pytest -m expression for every row ('not integration': make test-fast)."
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
