r"""Training-loop throughput (steps/s) on forced host devices, jit and pmap, across revisions.

    python -m experiments.benchmarks.bench_loop --revisions=51e5add,HEAD --repeats=3

Each measurement trains ``synthetic.py:tiny`` (baseline, the tiny data, 1/16 width, 32×32
crops, batch 4) for ``--short`` and for ``--long`` steps in fresh workdirs and divides the extra
steps by the extra wall time (after an untimed warm-up run), so compiling, the evaluation and the
final save cancel out. What is left is the loop: dispatch, host reads, logging every
``--log_every_steps`` and a checkpoint every ``--checkpoint_every_steps``. ``--devices`` host
(CPU) devices are forced with ``XLA_FLAGS``. With ``--revisions`` every revision runs in its own
``git worktree`` (with this interpreter; only the code differs) and repeats are interleaved
across revisions; without it, the code of this checkout. Prints a markdown table and one JSON line.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from experiments.tools import worktrees

FLAGS = flags.FLAGS


def _train_seconds(parallel: str, steps: int, workdir: pathlib.Path, data_dir: str) -> float:
    from drd_jax.train import train_and_evaluate
    from experiments.configs import synthetic

    c = synthetic.get_config("tiny")
    c.data_dir, c.mode, c.parallel = data_dir, "baseline", parallel
    c.num_train_steps, c.log_every_steps = steps, FLAGS.log_every_steps
    c.checkpoint_every_steps, c.eval_every_steps = FLAGS.checkpoint_every_steps, 0
    start = time.perf_counter()
    train_and_evaluate(c, workdir)
    return time.perf_counter() - start


def measure(data_dir: str) -> dict[str, float]:
    """``{parallel: steps/s}`` of this process's code (one measurement each)."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="bench_loop_") as tmp:
        for kind in FLAGS.parallel:
            _train_seconds(kind, FLAGS.short, pathlib.Path(tmp) / f"{kind}_warmup", data_dir)
            short = _train_seconds(kind, FLAGS.short, pathlib.Path(tmp) / f"{kind}_s", data_dir)
            long = _train_seconds(kind, FLAGS.long, pathlib.Path(tmp) / f"{kind}_l", data_dir)
            out[kind] = (FLAGS.long - FLAGS.short) / (long - short)
    return out


def _measure_in(checkout: pathlib.Path, data_dir: str) -> dict[str, float]:
    """One :func:`measure` of the code in ``checkout``, in a subprocess."""
    flags_ = [
        f"--parallel={','.join(FLAGS.parallel)}",
        f"--devices={FLAGS.devices}",
        f"--short={FLAGS.short}",
        f"--long={FLAGS.long}",
        f"--log_every_steps={FLAGS.log_every_steps}",
        f"--checkpoint_every_steps={FLAGS.checkpoint_every_steps}",
        f"--data_dir={data_dir}",
        "--repeats=1",
    ]
    proc = subprocess.run(
        [sys.executable, str(pathlib.Path(__file__).resolve()), *flags_],
        cwd=checkout,
        env={**os.environ, "PYTHONPATH": str(checkout)},
        capture_output=True,
        text=True,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        raise RuntimeError(f"measuring {checkout} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])["steps_per_sec"][""][0]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.long <= FLAGS.short:
        raise app.UsageError(f"--long ({FLAGS.long}) must exceed --short ({FLAGS.short})")
    data_dir = FLAGS.data_dir or tempfile.mkdtemp(prefix="bench_loop_data_")
    results: dict[str, list[dict[str, float]]] = {}
    if not FLAGS.revisions:
        results[""] = [measure(data_dir) for _ in range(FLAGS.repeats)]
    else:
        try:
            commits = worktrees.resolve(FLAGS.revisions)
        except ValueError as e:
            raise app.UsageError(f"--revisions: {e}") from None
        with worktrees.checkouts(commits) as checkouts:
            for repeat in range(FLAGS.repeats):
                for rev, (commit, path) in checkouts.items():
                    m = _measure_in(path, data_dir)
                    results.setdefault(f"{rev} ({commit})", []).append(m)
                    print(f"repeat {repeat} {rev}: {m}", flush=True)
    print(f"\n{FLAGS.devices} forced CPU devices, steps {FLAGS.short} -> {FLAGS.long}")
    print("| code | parallel | steps/s (each) | median |")
    print("|---|---|---|---:|")
    for code, runs in results.items():
        for kind in FLAGS.parallel:
            each = [r[kind] for r in runs]
            shown = ", ".join(f"{v:.1f}" for v in each)
            print(
                f"| {code or 'this checkout'} | {kind} | {shown} | {statistics.median(each):.1f} |"
            )
    print(json.dumps({"steps_per_sec": results}))


def define_flags() -> None:
    """The command line (defined only when run as a script, so importing this module is free)."""
    flags.DEFINE_list("revisions", [], "git revisions to compare ([] = this code).")
    flags.DEFINE_integer("repeats", 3, "Measurements per revision and parallel kind.")
    flags.DEFINE_list("parallel", ["jit", "pmap"], "config.parallel values.")
    flags.DEFINE_integer("devices", 2, "Forced host devices.")
    flags.DEFINE_integer("short", 20, "Steps of the short run.")
    flags.DEFINE_integer("long", 220, "Steps of the long run.")
    flags.DEFINE_integer("log_every_steps", 50, "config.log_every_steps.")
    flags.DEFINE_integer("checkpoint_every_steps", 100, "config.checkpoint_every_steps.")
    flags.DEFINE_string("data_dir", "", "Where synthetic_rgbd/tiny is (built if absent).")


if __name__ == "__main__":
    define_flags()
    # Forced host devices must be set before jax is imported (by the measurement).
    count = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--devices=")), "2")
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={count}"
    )
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    app.run(main)
