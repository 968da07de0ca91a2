r"""Times the whole test suite of several git revisions side by side (interleaved, one venv).

    python -m experiments.bench_test_suite --revisions=6b47daa,HEAD --repeats=1

Each revision is checked out in a temporary ``git worktree`` and its suite run with this
interpreter (``python -m pytest -q``), ``PYTHONPATH`` set to that checkout, and the shared test
data of this checkout (``$DRD_SHARED_DATA``, else ``../shared/data``), so only the code differs.
Repeats are interleaved (A B A B ...) to spread the machine's noise over both. Prints one
markdown row per revision: wall seconds of each repeat, their median, the ratio to the first
revision's median, and pytest's summary line.
"""

from __future__ import annotations

import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_REVISIONS = flags.DEFINE_list("revisions", ["HEAD~1", "HEAD"], "git revisions to compare.")
_REPEATS = flags.DEFINE_integer("repeats", 1, "Runs of each revision's suite.")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()


def run_suite(checkout: pathlib.Path, shared_data: str) -> tuple[float, str]:
    """``(wall seconds, pytest's summary line)`` of the suite in ``checkout``."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "DRD_SHARED_DATA": shared_data}
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
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
    if _REPEATS.value < 1:
        raise app.UsageError(f"--repeats must be >= 1, got {_REPEATS.value}")
    shared = os.environ.get("DRD_SHARED_DATA", str(ROOT.parent / "shared" / "data"))
    commits = {}
    for rev in _REVISIONS.value:
        try:
            commits[rev] = _git("rev-parse", "--short", rev)
        except subprocess.CalledProcessError:
            raise app.UsageError(f"--revisions: {rev!r} is not a git revision of {ROOT}") from None
    times: dict[str, list[float]] = {rev: [] for rev in commits}
    summaries: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench_test_suite_") as tmp:
        checkouts = {}
        for i, (rev, commit) in enumerate(commits.items()):
            checkouts[rev] = pathlib.Path(tmp) / f"{i}_{commit}"
            _git("worktree", "add", "--detach", str(checkouts[rev]), commit)
        try:
            for repeat in range(_REPEATS.value):
                for rev in commits:
                    seconds, summaries[rev] = run_suite(checkouts[rev], shared)
                    times[rev].append(seconds)
                    result = f"{seconds:.0f} s, {summaries[rev]}"
                    print(f"repeat {repeat} {rev} ({commits[rev]}): {result}", flush=True)
        finally:
            for checkout in checkouts.values():
                _git("worktree", "remove", "--force", str(checkout))
    first = statistics.median(times[_REVISIONS.value[0]])
    print("\n| revision | commit | seconds | median | ratio | pytest |")
    print("|---|---|---|---:|---:|---|")
    for rev, commit in commits.items():
        median = statistics.median(times[rev])
        each = ", ".join(f"{t:.0f}" for t in times[rev])
        ratio = median / first
        print(f"| {rev} | {commit} | {each} | {median:.0f} | {ratio:.2f} | {summaries[rev]} |")


if __name__ == "__main__":
    app.run(main)
