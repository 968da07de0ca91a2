r"""Soak test of resume: real training processes killed with SIGKILL at random moments and their
checkpoints damaged (bytes flipped) between starts, each run restarted until it finishes, and
whether every run ends at the uninterrupted run's params or refuses cleanly.

    python -m experiments.tools.soak_resume --runs=20 --seed=0 --workdir=/tmp/soak --max_kills=3 \
        --flips=2

For each mode of ``--modes`` (default ``teacher,student``):

1. **Reference**: the training command (``python -m experiments.train --config=<--config>
   --config.mode=<mode> --config.num_train_steps=<--steps> ...``) runs once, uninterrupted, in
   ``<workdir>/<mode>/reference``; its ``final_metrics.json`` gives the ``params_fingerprint``
   every soak run must end at, and its wall time ``T``. The teacher's reference is also the
   students' teacher (``--config.teacher_workdir``), so ``teacher`` must come first. References
   are never damaged.
2. **Soak runs** (``--runs`` per mode): the same command in ``<workdir>/<mode>/run_<i>``, with two
   faults.

   * **Kills.** Run ``i`` draws ``k`` kills in ``1..--max_kills``, each at a *kill point*, and its
     starts are killed with SIGKILL (``kill -9``) at them in turn, then it is started again until
     it exits. A kill point is, with probability 3/4, a step ``s`` in ``1..--steps`` (distinct,
     ascending): ``U(0, 1)`` seconds after that start has committed a checkpoint at step ``s`` or
     later, which lands anywhere in the steps, the asynchronous checkpoint writes (the table
     counts the kills with one in flight), the final evaluation and the writing of the results;
     otherwise ``U(0.02, 1) * T`` seconds after the start, mostly in start-up and compilation. A
     start that ends before its kill point is not killed.
   * **Bit flips.** Run ``i`` also draws ``f`` flips in ``0..--flips``, each placed in one of the
     ``k + 1`` gaps between its starts: after kill ``j``, or after the run has finished (flips
     of kills not reached move there). In its gap (no process running), a flip
     (:func:`flip_bytes`) picks a committed checkpoint (the newest with probability 1/2, else
     any of them), one of its data files (under ``checkpoints/<step>/state/``, in a ``d/``
     directory, with probability proportional to size) and XORs ``--flip_bytes`` distinct bytes
     of it with random non-zero values; a gap without a committed checkpoint skips its flips.
     The flips after the finish are followed by one more start of the finished run (a *rerun*).
     A resuming start moves a damaged checkpoint it meets into ``<run>/damaged_checkpoints/``;
     the tables count those entries ("moved aside": flips that landed in the checkpoint the next
     start was to resume from, caught by its checksum or by orbax).

3. **Result** of a run, from its starts' exit status and stderr (:func:`classify_run`):

   * **reference**: its ``final_metrics.json`` has the reference's ``params_fingerprint`` (the
     tables also say whether the whole file, mIoU, confusion matrix..., is identical);
   * **refused**: it has no results, and a start *refused*: exit status 2, the last line of its
     stderr starts with ``error:``, no traceback (:func:`start_outcome`), while none of its
     committed checkpoints was left without a flip (all of them damaged);
   * **FAILED** otherwise: another exit status or a traceback, other params, a refusal while a
     checkpoint without a flip was there to resume from, or a start that changed an existing
     ``final_metrics.json``.

   A start of a finished run (the rerun, or a restart after a kill during the writing of the
   results) must leave ``final_metrics.json`` byte for byte as it was, and either exit 0 or
   refuse (its latest checkpoint damaged); the tables count those starts and their refusals.
   The soak passes (exit status 0) when no run FAILED.

Randomness: the kills of run ``i`` come from ``numpy.random.default_rng([--seed, i, mode
index])`` (so they are those of soaks before the flips existed), its flips from
``default_rng([--seed, i, mode index, 1])``: a run's faults do not depend on the other runs (when
a timed kill lands, and so which checkpoints are there to flip, depends on the machine). Each
start's output (stdout and stderr) goes to ``<run dir>.log``. Prints two Markdown tables (per
mode, per run) and one JSON line.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import pathlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = "experiments/configs/synthetic.py:tiny"
MODES = ("teacher", "student")
FINAL = "final_metrics.json"
DAMAGED = "damaged_checkpoints"
USAGE_EXIT = 2  # what experiments/cli.py exits with on a one-line user error


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


@dataclasses.dataclass(frozen=True)
class Flip:
    """Bytes flipped in one file of a committed checkpoint: ``file`` (relative to the run's
    workdir) of checkpoint ``step``, the byte ``offsets`` (ascending) XORed with ``masks``
    (non-zero), and ``gap``: after which kill (1-based), or 0 after the run had finished."""

    step: int
    file: str
    offsets: list[int]
    masks: list[int]
    gap: int = 0

    def describe(self) -> str:
        name = pathlib.PurePosixPath(self.file)
        short = f"{name.parent.parent.name}/{name.parent.name}/{name.name[:8]}"
        when = "after the finish" if self.gap == 0 else f"after kill {self.gap}"
        return f"{self.step}:{short} ({when})"


@dataclasses.dataclass
class Start:
    """One start of a training process: exit status (negative: killed by that signal), wall
    seconds, its kill point if it was killed there, whether a checkpoint write was in flight
    then, the committed checkpoint steps right after it ended, the last non-empty line of its
    stderr, whether its stderr holds a traceback, whether the run had finished when it began (a
    ``final_metrics.json`` was there) and whether it changed that file."""

    returncode: int
    seconds: float
    killed_at: KillPoint | None
    saving: bool
    steps_after: list[int]
    last_line: str = ""
    traceback: bool = False
    finished: bool = False
    final_changed: bool = False

    @property
    def killed(self) -> bool:
        return self.killed_at is not None


def start_outcome(s: Start) -> str:
    """``killed``, ``ok`` (exit 0), ``refused`` (exit 2 with a one-line ``error:`` message last
    on stderr and no traceback) or ``failed`` (anything else, e.g. a traceback, a crash, or a
    start past ``--timeout``)."""
    if s.killed:
        return "killed"
    if s.returncode == 0:
        return "ok"
    if s.returncode == USAGE_EXIT and s.last_line.startswith("error:") and not s.traceback:
        return "refused"
    return "failed"


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
    outcome: str = "FAILED"  # reference, refused or FAILED (see the module docstring)
    flips: list[Flip] = dataclasses.field(default_factory=list)
    planned_flips: int = 0
    moved_aside: int = 0
    rerun: Start | None = None  # the start of the finished run after the flips past its end

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


def flip_bytes(
    workdir: pathlib.Path, rng: np.random.Generator, *, n_bytes: int = 16, gap: int = 0
) -> Flip | None:
    """Damages one committed checkpoint of ``workdir`` in place; None (nothing drawn or changed)
    when there is none.

    The checkpoint is the newest with probability 1/2, else one of all the committed ones
    (uniformly); the file is one of its data files (under ``state/``, in a directory named ``d``;
    any non-empty file under ``state/`` if there is none), with probability proportional to its
    size; ``min(n_bytes, size)`` distinct byte offsets of it, uniformly, are XORed with values in
    ``1..255``. Deterministic given ``rng``'s state and the directory's contents.
    """
    steps = committed_steps(workdir)
    if not steps:
        return None
    step = steps[-1] if rng.random() < 0.5 else int(rng.choice(steps))
    state = workdir / "checkpoints" / str(step) / "state"
    files = sorted(p for p in state.rglob("*") if p.is_file() and p.stat().st_size > 0)
    data = [p for p in files if p.parent.name == "d"]
    files = data or files
    if not files:
        return None
    sizes = np.array([p.stat().st_size for p in files], dtype=np.float64)
    path = files[int(rng.choice(len(files), p=sizes / sizes.sum()))]
    size = path.stat().st_size
    offsets = sorted(int(o) for o in rng.choice(size, size=min(n_bytes, size), replace=False))
    masks = [int(m) for m in rng.integers(1, 256, size=len(offsets))]
    with open(path, "r+b") as f:
        for offset, mask in zip(offsets, masks, strict=True):
            f.seek(offset)
            byte = f.read(1)[0]
            f.seek(offset)
            f.write(bytes([byte ^ mask]))
    return Flip(step, path.relative_to(workdir).as_posix(), offsets, masks, gap)


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


def _copy_stderr(pipe, out, tail: collections.deque, seen: list[bool]) -> None:
    """Appends ``pipe``'s lines to ``out`` as they come, keeping the last ones in ``tail`` and
    ``seen[0] = True`` once a traceback shows up."""
    for raw in pipe:
        line = raw.decode("utf-8", errors="replace")
        try:
            out.write(line)
            out.flush()
        except ValueError:  # the log was closed: a grandchild outlived the start
            return
        if line.strip():
            tail.append(line.rstrip("\n"))
        if line.startswith("Traceback (most recent call last)"):
            seen[0] = True


def start(
    command: list[str], workdir: pathlib.Path, log: pathlib.Path, kill: KillPoint | None, timeout
) -> Start:
    """Runs ``command`` (stdout and stderr appended to ``log``) and SIGKILLs it at ``kill`` if it
    is still running then (polling ``workdir``'s checkpoints every 20 ms)."""
    began = time.monotonic()
    newest_before = max(committed_steps(workdir), default=-1)
    kill_at = None if kill is None or kill.after_step is not None else began + kill.delay
    tail, seen = collections.deque(maxlen=20), [False]
    with open(log, "a") as out:
        out.write(f"\n=== start, kill point {kill}: {' '.join(command)}\n")
        out.flush()
        proc = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.PIPE, bufsize=0
        )
        reader = threading.Thread(
            target=_copy_stderr, args=(proc.stderr, out, tail, seen), daemon=True
        )
        reader.start()
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
            reader.join(timeout=10)  # a grandchild may hold the pipe: do not wait for it
    seconds = round(time.monotonic() - began, 1)
    last = tail[-1] if tail else ""
    return Start(
        proc.returncode, seconds, killed_at, in_flight, committed_steps(workdir), last, seen[0]
    )


def read_final(workdir: pathlib.Path) -> dict | None:
    try:
        return json.loads((workdir / FINAL).read_text())
    except (OSError, ValueError):
        return None


def _final_bytes(workdir: pathlib.Path) -> bytes | None:
    try:
        return (workdir / FINAL).read_bytes()
    except OSError:
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


def flip_rng(seed: int, mode_index: int, index: int) -> np.random.Generator:
    """The generator of run ``index``'s flips: first :func:`flip_schedule`, then each
    :func:`flip_bytes` in turn."""
    return np.random.default_rng([seed, index, mode_index, 1])


def flip_schedule(rng: np.random.Generator, *, max_flips: int, kills: int) -> list[int]:
    """The gaps of a run's flips (``0..max_flips`` of them, ascending): ``j`` in ``1..kills``
    after kill ``j``, 0 after the finish (see the module docstring)."""
    n = int(rng.integers(0, max_flips + 1))
    gaps = [int(g) for g in rng.integers(0, kills + 1, size=n)]
    return sorted(gaps, key=lambda g: g if g else kills + 1)


def classify_run(
    starts: list[Start], *, fingerprint: str | None, reference: str, untouched: list[int]
) -> tuple[str, str | None]:
    """``(outcome, why)`` of a run from its ``starts`` (the rerun after the finish included), the
    ``params_fingerprint`` of its ``final_metrics.json`` (None without one) and ``untouched``, the
    committed checkpoints without a flip when it stopped: ``reference``, ``refused`` or
    ``FAILED`` (see the module docstring); ``why`` says what refused or failed (None for
    ``reference``). A start of a finished run that refuses leaves the run at ``reference``."""
    refused = None
    for n, s in enumerate(starts, 1):
        what = start_outcome(s)
        if s.final_changed:
            return "FAILED", f"start {n} changed the finished run's {FINAL} (exit {s.returncode})"
        if what == "failed":
            how = "a traceback" if s.traceback else repr(s.last_line[:120])
            return "FAILED", f"start {n} exited with status {s.returncode}, {how}"
        if what == "refused":
            if not s.finished and untouched:
                return "FAILED", (
                    f"start {n} refused although checkpoint {untouched[-1]} had no flip: "
                    f"{s.last_line[:160]}"
                )
            refused = refused or f"start {n}: {s.last_line[:160]}"
    if fingerprint == reference:
        return "reference", None
    if refused is not None and not any(s.finished for s in starts):
        return "refused", refused
    return "FAILED", f"params {fingerprint}"


def soak_run(
    args,
    mode: str,
    index: int,
    kills: list[KillPoint],
    reference: dict,
    rng: np.random.Generator | None = None,
) -> RunResult:
    """Run ``index`` of ``mode``: killed at each of ``kills``, its checkpoints damaged between
    starts as drawn from ``rng`` (:func:`flip_rng`; None: no flips), then started until it
    exits, and once more after the flips past its finish."""
    workdir = pathlib.Path(args.workdir) / mode / f"run_{index}"
    log = workdir.with_suffix(".log")
    command = train_command(args, mode, workdir)
    gaps = [] if rng is None else flip_schedule(rng, max_flips=args.flips, kills=len(kills))
    flips: list[Flip] = []
    starts, pending = [], list(kills)

    def run_start(kill: KillPoint | None) -> Start:
        before = _final_bytes(workdir)
        s = start(command, workdir, log, kill, args.timeout)
        s.finished = before is not None
        s.final_changed = s.finished and _final_bytes(workdir) != before
        starts.append(s)
        return s

    def flip_in_gap(gap: int, label: int) -> None:
        for _ in range(sum(g == gap for g in gaps)):
            f = flip_bytes(workdir, rng, n_bytes=args.flip_bytes, gap=label)
            if f is not None:
                flips.append(f)
                with open(log, "a") as out:
                    out.write(f"\n=== flipped {len(f.offsets)} bytes of {f.file}\n")

    while True:
        s = run_start(pending[0] if pending else None)
        if pending:
            pending.pop(0)  # used, whether the start reached it or not
        if not s.killed:
            break
        flip_in_gap(len(kills) - len(pending), len(kills) - len(pending))
    rerun = None
    if start_outcome(s) == "ok":
        # Flips of the finish gap, and of kills not reached (the run ended before them).
        killed = sum(x.killed for x in starts)
        for gap in sorted({g for g in gaps if g == 0 or g > killed}):
            flip_in_gap(gap, 0)
        if any(f.gap == 0 for f in flips):
            rerun = run_start(None)
    final = read_final(workdir)
    fingerprint = None if final is None else final.get("params_fingerprint")
    damaged = {f.step for f in flips if (workdir / f.file).exists()}
    untouched = [step for step in committed_steps(workdir) if step not in damaged]
    outcome, why = classify_run(
        starts,
        fingerprint=fingerprint,
        reference=reference["params_fingerprint"],
        untouched=untouched,
    )
    try:
        moved = len(list((workdir / DAMAGED).iterdir()))
    except FileNotFoundError:
        moved = 0
    matches, error = outcome == "reference", why
    training = starts[:-1] if rerun is not None else starts
    return RunResult(
        mode,
        index,
        kills,
        training,
        fingerprint,
        matches,
        final == reference,
        error,
        outcome,
        flips,
        len(gaps),
        moved,
        rerun,
    )


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


def _all_starts(r: RunResult) -> list[Start]:
    return r.starts + ([r.rerun] if r.rerun is not None else [])


def _rerun_result(r: RunResult) -> str:
    if r.rerun is None:
        return "-"
    what = start_outcome(r.rerun)
    return "exit 0" if what == "ok" else what


def markdown(results: list[RunResult], references: dict[str, float], wall: float) -> str:
    """The per-mode and per-run tables."""
    out = [
        "| mode | runs | kills | of them with a checkpoint to resume from "
        "| with a save in flight | flips | moved aside | starts of a finished run (refused) "
        "| starts | ended at the reference params_fingerprint | refused | FAILED "
        "| final_metrics.json identical | reference run (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, ref_seconds in references.items():
        rows = [r for r in results if r.mode == mode]
        killed = [s for r in rows for s in r.starts if s.killed]
        reruns = [s for r in rows for s in _all_starts(r) if s.finished]
        refused_reruns = sum(start_outcome(s) == "refused" for s in reruns)
        starts = sum(len(_all_starts(r)) for r in rows)
        out.append(
            f"| {mode} | {len(rows)} | {len(killed)} | {sum(bool(s.steps_after) for s in killed)} "
            f"| {sum(s.saving for s in killed)} | {sum(len(r.flips) for r in rows)} "
            f"| {sum(r.moved_aside for r in rows)} | {len(reruns)} ({refused_reruns}) | {starts} "
            f"| {sum(r.matches for r in rows)}/{len(rows)} "
            f"| {sum(r.outcome == 'refused' for r in rows)} "
            f"| {sum(r.outcome == 'FAILED' for r in rows)} "
            f"| {sum(r.identical for r in rows)}/{len(rows)} | {ref_seconds:.0f} |"
        )
    failed = sum(r.outcome == "FAILED" for r in results)
    out += [
        "",
        f"All: {sum(r.matches for r in results)}/{len(results)} runs at the reference, "
        f"{sum(r.outcome == 'refused' for r in results)} refused, {failed} FAILED "
        f"({'pass' if not failed else 'FAIL'}); wall time {wall:.0f} s.",
        "",
    ]
    out += [
        "| run | killed at | newest checkpoint after each kill | not reached (ended first) "
        "| flips (step:file) | moved aside | starts | rerun after the finish | result |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        killed = [s for s in r.starts if s.killed]
        at = ", ".join(s.killed_at.describe() + (" (saving)" if s.saving else "") for s in killed)
        steps = ", ".join(str(max(s.steps_after)) if s.steps_after else "none" for s in killed)
        missed = ", ".join(
            p.describe() for p in r.planned if p not in {s.killed_at for s in killed}
        )
        flips = ", ".join(f.describe() for f in r.flips)
        if len(r.flips) < r.planned_flips:
            flips += f"{', ' if flips else ''}{r.planned_flips - len(r.flips)} not done"
        result = {"reference": "same params", "refused": f"refused ({r.error})"}.get(
            r.outcome, f"FAILED: {r.error}"
        )
        result = result.replace("|", "\\|")
        out.append(
            f"| {r.mode} {r.index} | {at or '-'} | {steps or '-'} | {missed or '-'} "
            f"| {flips or '-'} | {r.moved_aside} | {len(r.starts)} | {_rerun_result(r)} "
            f"| {result} |"
        )
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m experiments.tools.soak_resume",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--runs", type=int, default=20, help="soak runs per mode")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill and flip schedules")
    p.add_argument("--workdir", required=True, help="where the runs go (a fresh directory)")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="experiments.train --config")
    p.add_argument("--max_kills", type=int, default=3, help="kills per run: 1..max_kills")
    p.add_argument("--flips", type=int, default=2, help="bit flips per run: 0..flips")
    p.add_argument("--flip_bytes", type=int, default=16, help="bytes damaged by one flip")
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
    if args.runs < 1 or args.max_kills < 1 or args.steps < 1 or args.flip_bytes < 1:
        p.error("--runs, --max_kills, --steps and --flip_bytes must be >= 1")
    if args.flips < 0:
        p.error("--flips must be >= 0")
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
            rng = flip_rng(args.seed, mode_index, index)
            r = soak_run(args, mode, index, kills, reference, rng)
            results.append(r)
            status = {"reference": "same params"}.get(r.outcome, f"{r.outcome}: {r.error}")
            print(
                f"{mode} run {index}: {r.kills} kills, {len(r.flips)} flips "
                f"({r.moved_aside} moved aside), {len(r.starts)} starts, "
                f"rerun after the finish: {_rerun_result(r)}: {status}",
                flush=True,
            )
    wall = time.monotonic() - began
    print()
    print(markdown(results, ref_seconds, wall))
    outcomes = collections.Counter(r.outcome for r in results)
    reruns = [s for r in results for s in _all_starts(r) if s.finished]
    summary = {
        "runs": len(results),
        "at_reference": sum(r.matches for r in results),
        "refused": outcomes["refused"],
        "failed": outcomes["FAILED"],
        "identical_final_metrics": sum(r.identical for r in results),
        "kills": sum(r.kills for r in results),
        "kills_with_a_save_in_flight": sum(s.saving for r in results for s in r.starts),
        "flips": sum(len(r.flips) for r in results),
        "flips_not_done": sum(r.planned_flips - len(r.flips) for r in results),
        "moved_aside": sum(r.moved_aside for r in results),
        "reruns_after_finish": sum(r.rerun is not None for r in results),
        "starts_of_finished_runs": len(reruns),
        "starts_of_finished_runs_refused": sum(start_outcome(s) == "refused" for s in reruns),
        "wall_seconds": round(wall, 1),
        "results": [dataclasses.asdict(r) for r in results],
    }
    print(json.dumps(summary))
    return 0 if not outcomes["FAILED"] else 1


if __name__ == "__main__":
    sys.exit(main())
