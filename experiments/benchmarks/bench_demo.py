r"""Time ``make demo`` from a fresh clone, phase by phase (install, data, each run, figures).

    python -m experiments.benchmarks.bench_demo                  # clones HEAD into a temporary
    directory python -m experiments.benchmarks.bench_demo --keep=/tmp/demo_clone

Runs ``make install`` then ``make demo`` in a clean ``git clone`` of this repository's HEAD (so
nothing installed here is reused: a new ``.venv`` from ``requirements.txt``), and prints a Markdown
table of the wall time of each phase, read from the clock and from ``results/demo/results.json``.
Uncommitted changes are not part of the clone.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

FLAGS = flags.FLAGS

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _timed(cmd: list[str], cwd: pathlib.Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True)
    return time.perf_counter() - start


def bench(clone: pathlib.Path, python: str) -> dict:
    """Clones, runs the demo, returns ``{"install", "demo", "data", "runs": {...}, "figures"}``."""
    subprocess.run(["git", "clone", "--quiet", str(REPO_ROOT), str(clone)], check=True)
    install = _timed(["make", "install", f"PYTHON={python}"], clone)
    demo = _timed(["make", "demo"], clone)
    results = json.loads((clone / "results" / "demo" / "results.json").read_text())
    seconds = results["seconds"]
    return {
        "install": install,
        "demo": demo,
        "data": seconds["data"],
        "runs": {k: v["seconds"] for k, v in results["runs"].items()},
        "figures": seconds["figures"],
        "startup_and_rest": demo - seconds["total"],
    }


def table(t: dict) -> str:
    rows = [("make install (fresh .venv)", t["install"]), ("data build", t["data"])]
    rows += [(f"run `{k}`", v) for k, v in t["runs"].items()]
    rows += [("figures", t["figures"]), ("python start-up, imports", t["startup_and_rest"])]
    rows += [("**total** (install + demo)", t["install"] + t["demo"])]
    lines = ["| phase | seconds |", "|---|---|"]
    lines += [f"| {name} | {sec:.0f} |" for name, sec in rows]
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.keep:
        clone = pathlib.Path(FLAGS.keep).absolute()
        if clone.exists():
            raise app.UsageError(f"--keep={clone} exists; give a new directory")
        print(table(bench(clone, FLAGS.python)))
        return
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="drd_demo_bench_"))
    try:
        print(table(bench(tmp / "clone", FLAGS.python)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def define_flags() -> None:
    """The command line (defined only when run as a script, so importing this module is free)."""
    flags.DEFINE_string("keep", None, "Clone here and keep it (default: a temporary dir).")
    flags.DEFINE_string("python", "python3.11", "Interpreter that creates the .venv.")


if __name__ == "__main__":
    define_flags()
    sys.exit(app.run(main))
