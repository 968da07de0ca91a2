r"""Do two revisions train to the same params and metrics, bit for bit? For refactors.

    python -m experiments.tools.same_results --revisions=cac2046,working-tree
    python -m experiments.tools.same_results --revisions=cac2046,HEAD --demo   # + make demo's runs

Each revision is a ``git worktree`` checkout (``working-tree``: this checkout as it is, edits
included). In each, ``python -m experiments.train`` trains the same three runs of the
``synthetic.py:tiny`` config on its own copy of the tiny data: the teacher (TN), the PS+VTCE
student of that teacher (SN), and a student with every distillation term on (pixel, pair,
holistic, adaptation with its auto-encoder stage, affinity). ``--demo`` adds ``make demo``'s
command (``experiments.reproduce``, Tables 1 and 3, seed 0) and compares each of its runs.

A run is the same when its ``final_metrics.json`` has the same ``params_fingerprint``,
confusion matrix and mean IoU, and its ``metrics.jsonl`` the same rows (every scalar but
``images_per_sec``, a wall-clock rate). Prints one Markdown row per run and exits 1 if any
differs.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile

from absl import app, flags

from experiments.tools import worktrees

FLAGS = flags.FLAGS

WORKING_TREE = "working-tree"
TINY = "experiments/configs/synthetic.py:tiny"
ALL_TERMS = (
    "--config.pixel_kd_weight=1.0",
    "--config.pair_kd_weight=1.0",
    "--config.holistic_kd_weight=0.1",
    "--config.adaptation_weight=1.0",
    "--config.affinity_weight=1.0",
    "--config.ka_autoencoder_steps=3",
)
# (name, mode, extra flags); students train against the teacher's workdir.
TINY_RUNS = (
    ("tn", "teacher", ()),
    ("sn_ps_vtce", "student", ("--config.init=teacher",)),
    ("sn_all_terms", "student", ("--config.init=teacher", *ALL_TERMS)),
)
IGNORED_SCALARS = ("images_per_sec",)


def _env(checkout: pathlib.Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(checkout), JAX_PLATFORMS="cpu")
    if FLAGS.fast_compile:
        env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
    return env


def _run(command: list[str], checkout: pathlib.Path) -> None:
    proc = subprocess.run(
        command, cwd=checkout, env=_env(checkout), capture_output=True, text=True, check=False
    )
    if proc.returncode:
        raise RuntimeError(f"{' '.join(command)} failed in {checkout}:\n{proc.stderr[-3000:]}")


def train_tiny_runs(checkout: pathlib.Path, out: pathlib.Path) -> dict[str, pathlib.Path]:
    """Trains :data:`TINY_RUNS` with ``checkout``'s code into ``out``; ``{name: workdir}``."""
    data_dir = out / "data"
    workdirs = {}
    for name, mode, extra in TINY_RUNS:
        workdir = out / name
        command = [
            sys.executable,
            "-m",
            "experiments.train",
            f"--config={checkout / TINY}",
            f"--workdir={workdir}",
            f"--config.mode={mode}",
            f"--config.data_dir={data_dir}",
            *extra,
        ]
        if mode == "student":
            command.append(f"--config.teacher_workdir={workdirs['tn']}")
        _run(command, checkout)
        workdirs[name] = workdir
    return workdirs


def train_demo(checkout: pathlib.Path, out: pathlib.Path) -> dict[str, pathlib.Path]:
    """``make demo``'s command with ``checkout``'s code into ``out``; ``{run: workdir}``."""
    demo = out / "demo"
    command = [
        sys.executable,
        "-m",
        "experiments.reproduce",
        f"--config={checkout / 'experiments/configs/synthetic.py:demo'}",
        f"--workdir={demo}",
        "--table=1,3",
        f"--config.data_dir={demo / 'data'}",
    ]
    _run(command, checkout)
    return {
        f"demo/{p.parent.relative_to(demo)}": p.parent
        for p in sorted(demo.rglob("final_metrics.json"))
    }


def fingerprint_of_run(workdir: pathlib.Path) -> dict:
    """What must match: the final metrics' params, confusion matrix and mIoU, and the log."""
    final = json.loads((workdir / "final_metrics.json").read_text())
    rows = []
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        scalars = {k: v for k, v in row["scalars"].items() if k not in IGNORED_SCALARS}
        rows.append((row["step"], row["split"], scalars))
    return {
        "params_fingerprint": final["params_fingerprint"],
        "confusion_matrix": final["confusion_matrix"],
        "mean_iou": final["mean_iou"],
        "log": rows,
    }


def compare(a: dict[str, pathlib.Path], b: dict[str, pathlib.Path]) -> list[tuple[str, str, str]]:
    """``(run, params fingerprint of a, verdict)`` per run of either side."""
    rows = []
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            rows.append((name, "-", f"only in {'a' if name in a else 'b'}"))
            continue
        fa, fb = fingerprint_of_run(a[name]), fingerprint_of_run(b[name])
        differ = [k for k in fa if fa[k] != fb[k]]
        verdict = "same" if not differ else "DIFFERENT: " + ", ".join(differ)
        rows.append((name, fa["params_fingerprint"][:12], verdict))
    return rows


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    revisions = FLAGS.revisions
    if len(revisions) != 2:
        raise app.UsageError(f"--revisions: expected two, got {revisions}")
    commits = worktrees.resolve([r for r in revisions if r != WORKING_TREE])
    with worktrees.checkouts(commits) as checkouts, tempfile.TemporaryDirectory() as tmp:
        checkout_of = {r: (WORKING_TREE, worktrees.REPO_ROOT) for r in revisions}
        checkout_of.update(checkouts)
        runs = []
        for i, rev in enumerate(revisions):
            _, checkout = checkout_of[rev]
            out = pathlib.Path(tmp) / str(i)
            found = train_tiny_runs(checkout, out)
            if FLAGS.demo:
                found.update(train_demo(checkout, out))
            runs.append(found)
        rows = compare(*runs)
    a, b = (f"{r} ({checkout_of[r][0]})" for r in revisions)
    print(f"| run | params fingerprint of {a} | against {b} |")
    print("|---|---|---|")
    for name, fp, verdict in rows:
        print(f"| {name} | {fp} | {verdict} |")
    return 0 if all(v == "same" for *_, v in rows) else 1


def define_flags() -> None:
    """The command line (defined only when run as a script, so importing this module is free)."""
    flags.DEFINE_list(
        "revisions", ["HEAD", "working-tree"], "Two git revisions ('working-tree': this checkout)."
    )
    flags.DEFINE_boolean("demo", False, "Also compare make demo's runs (minutes per side).")
    flags.DEFINE_boolean(
        "fast_compile", True, "JAX_DISABLE_MOST_OPTIMIZATIONS=1 on both sides (compiles faster)."
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
