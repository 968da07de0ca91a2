r"""Soak test of resume: real training processes killed with SIGKILL at random moments, each run
restarted until it finishes, and the share of runs that end at the uninterrupted run's params.

    python -m experiments.soak_resume --runs=20 --seed=0 --workdir=/tmp/soak --max_kills=3

For each mode of ``--modes`` (default ``teacher,student``):

1. **Reference**: the training command (``python -m experiments.train --config=<--config>
   --config.mode=<mode> --config.num_train_steps=<--steps> ...``) runs once, uninterrupted, in
   ``<workdir>/<mode>/reference``; its ``final_metrics.json`` gives the ``params_fingerprint``
   every soak run must end at, and its wall time ``T``. The teacher's reference is also the
   students' teacher (``--config.teacher_workdir``), so ``teacher`` must come first.
2. **Soak runs** (``--runs`` per mode): the same command in ``<workdir>/<mode>/run_<i>``. Run ``i``
   draws ``k`` kills in ``1..--max_kills``, each at a *kill point*, and its starts are killed
   with SIGKILL (``kill -9``) at them in turn, then it is started again until it exits; a start
   that exits non-zero by itself fails the run. A kill point is, with probability 3/4, a step
   ``s`` in ``1..--steps`` (distinct, ascending): ``U(0, 1)`` seconds after that start has
   committed a checkpoint at step ``s`` or later, which lands anywhere in the steps, the
   asynchronous checkpoint writes (the table counts the kills with one in flight), the final
   evaluation and the writing of the results; otherwise ``U(0.02, 1) * T`` seconds after the
   start, mostly in start-up and compilation. A start that ends before its kill point is not
   killed.
3. **Result**: a run passes when its ``final_metrics.json`` has the reference's
   ``params_fingerprint``; the tables also say whether the whole ``final_metrics.json`` (mIoU,
   confusion matrix, ...) is identical.

Randomness: ``numpy.random.default_rng([--seed, run index, mode index])``, so a run's kill
points do not depend on the other runs (when a timed kill lands depends on the machine). Each
start's output goes to ``<run dir>.log``. Prints two Markdown tables (per mode, per run) and one
JSON line; exit status 1 when a run does not end at the reference.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = "experiments/configs/synthetic.py:tiny"
MODES = ("teacher", "student")


@dataclasses.dataclass(frozen=True)
class KillPoint:
    """When a start is killed: ``delay`` seconds after it has committed a checkpoint at step
    ``after_step`` or later, or, when ``after_step`` is None, ``delay`` seconds after it began."""

    after_step: int | None
    delay: float

    def describe(self) -> str:
        if self.after_step is None:
            return f"at {self.delay:.1f} s"
        return f"step {self.after_step} +{self.delay:.2f} s"


@dataclasses.dataclass
class Start:
    """One start of a training process: exit status (negative: killed by that signal), wall
    seconds, its kill point if it was killed there, whether a checkpoint write was in flight
    then, and the committed checkpoint steps right after it ended."""

    returncode: int
    seconds: float
    killed_at: KillPoint | None
    saving: bool
    steps_after: list[int]

    @property
    def killed(self) -> bool:
        return self.killed_at is not None


@dataclasses.dataclass
class RunResult:
    mode: str
    index: int
    planned: list[KillPoint]
    starts: list[Start]
    fingerprint: str | None
    matches: bool
    identical: bool
    error: str | None = None

    @property
    def kills(self) -> int:
        return sum(s.killed for s in self.starts)


TMP_MARK = ".orbax-checkpoint-tmp"


def committed_steps(workdir: pathlib.Path) -> list[int]:
    """Checkpoint steps fully written in ``workdir`` (orbax renames a step's directory to its
    number only once it is complete)."""
    try:
        return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    except FileNotFoundError:
        return []


def saving(workdir: pathlib.Path) -> bool:
    """Whether a checkpoint is being written (an orbax tmp directory exists)."""
    try:
        return any(TMP_MARK in p.name for p in (workdir / "checkpoints").iterdir())
    except FileNotFoundError:
        return False


def train_command(args: argparse.Namespace, mode: str, workdir: pathlib.Path) -> list[str]:
    """The ``experiments.train`` command of ``mode`` in ``workdir``."""
    command = [
        sys.executable,
        "-m",
        "experiments.train",
        f"--config={args.config}",
        f"--workdir={workdir}",
        f"--config.mode={mode}",
        f"--config.data_dir={args.data_dir}",
        f"--config.num_train_steps={args.steps}",
        f"--config.checkpoint_every_steps={args.checkpoint_every_steps}",
    ]
    if mode == "student":
        teacher = pathlib.Path(args.workdir) / "teacher" / "reference"
        command += [f"--config.teacher_workdir={teacher}", "--config.init=teacher"]
    return command


def start(
    command: list[str], workdir: pathlib.Path, log: pathlib.Path, kill: KillPoint | None, timeout
) -> Start:
    """Runs ``command`` (output appended to ``log``) and SIGKILLs it at ``kill`` if it is still
    running then (polling ``workdir``'s checkpoints every 20 ms)."""
    began = time.monotonic()
    newest_before = max(committed_steps(workdir), default=-1)
    kill_at = None if kill is None or kill.after_step is not None else began + kill.delay
    with open(log, "a") as out:
        out.write(f"\n=== start, kill point {kill}: {' '.join(command)}\n")
        out.flush()
        proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
        killed_at, in_flight = None, False
        try:
            while proc.poll() is None:
                now = time.monotonic()
                if now - began > timeout:
                    break
                if kill_at is None and kill is not None:
                    newest = max(committed_steps(workdir), default=-1)
                    if newest >= kill.after_step and newest > newest_before:
                        kill_at = now + kill.delay
                if kill_at is not None and now >= kill_at:
                    in_flight = saving(workdir)
                    proc.send_signal(signal.SIGKILL)
                    killed_at = kill
                    break
                time.sleep(0.02)
        finally:
            if proc.poll() is None:
                proc.kill()  # killed_at stays None past the timeout: the start failed
            proc.wait()
    seconds = round(time.monotonic() - began, 1)
    return Start(proc.returncode, seconds, killed_at, in_flight, committed_steps(workdir))


def read_final(workdir: pathlib.Path) -> dict | None:
    try:
        return json.loads((workdir / "final_metrics.json").read_text())
    except (OSError, ValueError):
        return None


def kill_schedule(
    seed: int, mode_index: int, index: int, *, max_kills: int, steps: int, ref_seconds: float
) -> list[KillPoint]:
    """The kill points of run ``index`` of a mode (see the module docstring)."""
    rng = np.random.default_rng([seed, index, mode_index])
    n = int(rng.integers(1, min(max_kills, steps) + 1))
    targets = sorted(int(t) for t in rng.choice(np.arange(1, steps + 1), size=n, replace=False))
    points = []
    for target in targets:
        if rng.random() < 0.25:
            points.append(KillPoint(None, round(float(rng.uniform(0.02, 1.0)) * ref_seconds, 2)))
        else:
            points.append(KillPoint(target, round(float(rng.uniform(0.0, 1.0)), 2)))
    return points


def soak_run(args, mode: str, index: int, kills: list[KillPoint], reference: dict) -> RunResult:
    """Run ``index`` of ``mode``: killed at each of ``kills``, then started until it exits."""
    workdir = pathlib.Path(args.workdir) / mode / f"run_{index}"
    log = workdir.with_suffix(".log")
    command = train_command(args, mode, workdir)
    starts, error, pending = [], None, list(kills)
    while True:
        s = start(command, workdir, log, pending[0] if pending else None, args.timeout)
        starts.append(s)
        if pending:
            pending.pop(0)  # used, whether the start reached it or not
        if s.killed:
            continue
        if s.returncode != 0:
            error = f"start {len(starts)} exited with status {s.returncode} (see {log})"
        break
    final = read_final(workdir)
    fingerprint = None if final is None else final.get("params_fingerprint")
    matches = error is None and fingerprint == reference["params_fingerprint"]
    return RunResult(mode, index, kills, starts, fingerprint, matches, final == reference, error)


def run_reference(args, mode: str) -> tuple[dict, float]:
    """The uninterrupted run of ``mode``: ``(final_metrics, wall seconds)``."""
    workdir = pathlib.Path(args.workdir) / mode / "reference"
    workdir.parent.mkdir(parents=True, exist_ok=True)
    log = workdir.with_suffix(".log")
    s = start(train_command(args, mode, workdir), workdir, log, None, args.timeout)
    final = read_final(workdir)
    if s.returncode != 0 or final is None:
        raise RuntimeError(f"the reference {mode} run failed (status {s.returncode}); see {log}")
    return final, s.seconds


def markdown(results: list[RunResult], references: dict[str, float], wall: float) -> str:
    """The per-mode and per-run tables."""
    out = [
        "| mode | runs | kills | of them with a checkpoint to resume from "
        "| with a save in flight | starts | ended at the reference params_fingerprint "
        "| final_metrics.json identical | reference run (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, ref_seconds in references.items():
        rows = [r for r in results if r.mode == mode]
        killed = [s for r in rows for s in r.starts if s.killed]
        out.append(
            f"| {mode} | {len(rows)} | {len(killed)} | {sum(bool(s.steps_after) for s in killed)} "
            f"| {sum(s.saving for s in killed)} | {sum(len(r.starts) for r in rows)} "
            f"| {sum(r.matches for r in rows)}/{len(rows)} "
            f"| {sum(r.identical for r in rows)}/{len(rows)} | {ref_seconds:.0f} |"
        )
    total = sum(r.matches for r in results)
    out += ["", f"All: {total}/{len(results)} runs at the reference; wall time {wall:.0f} s.", ""]
    out += [
        "| run | killed at | newest checkpoint after each kill | not reached (ended first) "
        "| starts | result |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        killed = [s for s in r.starts if s.killed]
        at = ", ".join(s.killed_at.describe() + (" (saving)" if s.saving else "") for s in killed)
        steps = ", ".join(str(max(s.steps_after)) if s.steps_after else "none" for s in killed)
        missed = ", ".join(
            p.describe() for p in r.planned if p not in {s.killed_at for s in killed}
        )
        result = "same params" if r.matches else (r.error or f"params {r.fingerprint}")
        out.append(
            f"| {r.mode} {r.index} | {at or '-'} | {steps or '-'} | {missed or '-'} "
            f"| {len(r.starts)} | {result} |"
        )
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m experiments.soak_resume",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--runs", type=int, default=20, help="soak runs per mode")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill schedules")
    p.add_argument("--workdir", required=True, help="where the runs go (a fresh directory)")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="experiments.train --config")
    p.add_argument("--max_kills", type=int, default=3, help="kills per run: 1..max_kills")
    p.add_argument("--modes", default=",".join(MODES), help="teacher, student (needs teacher)")
    p.add_argument("--steps", type=int, default=60, help="config.num_train_steps")
    p.add_argument("--checkpoint_every_steps", type=int, default=2)
    p.add_argument("--data_dir", default="", help="default: <workdir>/data (built if absent)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds a start may take")
    args = p.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or any(m not in (*MODES, "baseline") for m in args.modes):
        p.error(f"--modes: expected teacher, student or baseline, got {args.modes}")
    if "student" in args.modes and "teacher" not in args.modes[: args.modes.index("student")]:
        p.error("--modes: student needs teacher before it (the teacher reference is its teacher)")
    if args.runs < 1 or args.max_kills < 1 or args.steps < 1:
        p.error("--runs, --max_kills and --steps must be >= 1")
    workdir = pathlib.Path(args.workdir).expanduser().absolute()
    if workdir.exists() and any(workdir.iterdir()):
        p.error(f"--workdir {workdir} is not empty: give a fresh directory")
    args.workdir = str(workdir)
    args.data_dir = args.data_dir or str(workdir / "data")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    results, ref_seconds = [], {}
    for mode_index, mode in enumerate(args.modes):
        reference, seconds = run_reference(args, mode)
        ref_seconds[mode] = seconds
        print(
            f"{mode}: reference {seconds:.0f} s, {reference['params_fingerprint'][:12]}",
            flush=True,
        )
        for index in range(args.runs):
            kills = kill_schedule(
                args.seed,
                mode_index,
                index,
                max_kills=args.max_kills,
                steps=args.steps,
                ref_seconds=seconds,
            )
            r = soak_run(args, mode, index, kills, reference)
            results.append(r)
            status = "same params" if r.matches else r.error or "OTHER PARAMS"
            print(
                f"{mode} run {index}: {r.kills} kills, {len(r.starts)} starts: {status}",
                flush=True,
            )
    wall = time.monotonic() - began
    print()
    print(markdown(results, ref_seconds, wall))
    summary = {
        "runs": len(results),
        "at_reference": sum(r.matches for r in results),
        "identical_final_metrics": sum(r.identical for r in results),
        "kills": sum(r.kills for r in results),
        "kills_with_a_save_in_flight": sum(s.saving for r in results for s in r.starts),
        "wall_seconds": round(wall, 1),
        "results": [dataclasses.asdict(r) for r in results],
    }
    print(json.dumps(summary))
    return 0 if all(r.matches for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
