r"""Fault probes: bad input, damaged files and unusable directories given to the command-line
tools, each checked for a clean refusal that destroys nothing.

    python -m experiments.tools.fault_probes --workdir=/tmp/probes            # every probe
    python -m experiments.tools.fault_probes --workdir=/tmp/probes --quick    # the make-test subset

First the probes' common files are made in ``--workdir``: the ``synthetic_rgbd/tiny`` data (or
``--data_dir``, read only), a finished tiny baseline run (``run/``) and an export of it
(``export/``). Each probe then copies what it damages into its own folder, runs one command as a
subprocess (``python -m experiments.<tool> ...`` from the checkout root, CPU) and checks:

* **exit status**: the one it expects (2 for a refused input, as ``experiments/cli.py``; 1 where
  a tool documents it, e.g. ``segment``'s input faults);
* **one line**: stderr ends with an ``error: ...`` line (``segment: error: ...`` for segment)
  that matches the probe's pattern (it names the path or the flag), and holds no traceback;
* **nothing destroyed**: the files the probe names (a finished run, a folder beside an export,
  a workdir that must not be created) are byte for byte as before.

Prints one Markdown table (probe, exit status, verdict, the error line) and a JSON line with the
counts; exit status 1 when a probe fails. ``--quick`` runs the probes marked quick (one of each
kind of fault: about 30 s on two idle cores with ``--jobs=2``, after about 15 s to prepare); the
test suite runs them (``tests/test_fault_probes.py``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = f"--config={REPO_ROOT / 'experiments' / 'configs' / 'synthetic.py'}:tiny"
ENV = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1")
TIMEOUT_S = 300


@dataclasses.dataclass(frozen=True)
class Shared:
    """The probes' common, read-only inputs."""

    data_dir: pathlib.Path  # synthetic_rgbd/tiny
    run: pathlib.Path  # a finished tiny baseline run
    export: pathlib.Path  # an export of it


@dataclasses.dataclass(frozen=True)
class Case:
    """One probe as prepared: its command, expectations and the paths that must not change."""

    command: list[str]
    status: int
    pattern: str
    unchanged: tuple[pathlib.Path, ...] = ()
    absent: tuple[pathlib.Path, ...] = ()  # paths the refused command must not create


@dataclasses.dataclass(frozen=True)
class Probe:
    name: str
    prepare: Callable[[Shared, pathlib.Path], Case]  # (shared, its own empty folder) -> Case
    quick: bool = False


@dataclasses.dataclass
class Outcome:
    name: str
    status: int
    passed: bool
    line: str
    problems: list[str]
    seconds: float


# -- commands and damage --------------------------------------------------------------------------


def tool(name: str, *args: object) -> list[str]:
    return [sys.executable, "-m", name, *(str(a) for a in args)]


def train(workdir: pathlib.Path, data_dir: pathlib.Path, *overrides: str) -> list[str]:
    return tool(
        "experiments.train",
        CONFIG,
        f"--workdir={workdir}",
        f"--config.data_dir={data_dir}",
        "--config.mode=baseline",
        *overrides,
    )


def export(checkpoint: pathlib.Path, output: pathlib.Path, *flags: str) -> list[str]:
    """``experiments.export`` of ``checkpoint`` into ``output`` at 32x32, for the CPU."""
    return tool(
        "experiments.export",
        f"--checkpoint={checkpoint}",
        f"--output={output}",
        "--input_size=32,32",
        "--platforms=cpu",
        *flags,
    )


def copy_of(path: pathlib.Path, folder: pathlib.Path) -> pathlib.Path:
    dest = folder / path.name
    shutil.copytree(path, dest, symlinks=True)
    return dest


def flip_bytes(path: pathlib.Path, count: int = 16) -> None:
    """Inverts ``count`` bytes, 4 apart, from the middle of ``path``."""
    body = bytearray(path.read_bytes())
    start = len(body) // 2
    for i in range(start, min(len(body), start + 4 * count), 4):
        body[i] ^= 0xFF
    path.write_bytes(bytes(body))


def largest_file(folder: pathlib.Path, parent_name: str | None = None) -> pathlib.Path:
    files = [
        p
        for p in folder.rglob("*")
        if p.is_file() and (parent_name is None or p.parent.name == parent_name)
    ]
    return max(files, key=lambda p: p.stat().st_size)


def a_file(folder: pathlib.Path) -> pathlib.Path:
    path = folder / "a_file"
    path.write_text("not a directory\n")
    return path


# -- the probes -----------------------------------------------------------------------------------


def _workdir_is_a_file(s: Shared, d: pathlib.Path) -> Case:
    f = a_file(d)
    return Case(train(f, s.data_dir), 2, r"is a file", unchanged=(f,))


def _workdir_under_a_file(s: Shared, d: pathlib.Path) -> Case:
    f = a_file(d)
    return Case(train(f / "run", s.data_dir), 2, re.escape(str(f)), unchanged=(f,))


def _workdir_holds_an_export(s: Shared, d: pathlib.Path) -> Case:
    export = copy_of(s.export, d)
    return Case(train(export, s.data_dir), 2, r"holds an export", unchanged=(export,))


def _bad_scale_range(s: Shared, d: pathlib.Path) -> Case:
    w = d / "run"
    return Case(
        train(w, s.data_dir, "--config.scale_range=2,1"), 2, r"config\.scale_range", (), (w,)
    )


def _small_eval_pad_to(s: Shared, d: pathlib.Path) -> Case:
    w = d / "run"
    return Case(
        train(w, s.data_dir, "--config.eval_pad_to=8,8"), 2, r"config\.eval_pad_to", (), (w,)
    )


def _baseline_with_a_teacher(s: Shared, d: pathlib.Path) -> Case:
    w = d / "run"
    command = train(w, s.data_dir, f"--config.teacher_workdir={s.run}")
    return Case(command, 2, r"config\.teacher_workdir", (s.run,), (w,))


def _imagenet_init_with_a_non_weights_file(s: Shared, d: pathlib.Path) -> Case:
    weights = d / "weights.npz"
    weights.write_text("not weights\n")
    w = d / "run"
    command = train(w, s.data_dir, "--config.init=imagenet", f"--config.pretrained_path={weights}")
    return Case(command, 2, r"config\.pretrained_path", (weights,), (w,))


def _finished_run_with_flipped_checkpoint(s: Shared, d: pathlib.Path) -> Case:
    run = copy_of(s.run, d)
    latest = max(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    flip_bytes(largest_file(run / "checkpoints" / str(latest) / "state", "d"))
    return Case(train(run, s.data_dir), 2, r"finished run .* is damaged", unchanged=(run,))


def _finished_run_with_edited_config(s: Shared, d: pathlib.Path) -> Case:
    run = copy_of(s.run, d)
    path = run / "config.json"
    path.write_text(path.read_text().replace('"mode": "baseline"', '"mode": "student"'))
    return Case(train(run, s.data_dir), 2, r"config\.json was edited", unchanged=(run,))


def _data_flipped_mid_shard(s: Shared, d: pathlib.Path) -> Case:
    data = copy_of(s.data_dir, d)
    flip_bytes(largest_file(data))
    w = d / "run"
    return Case(train(w, data), 2, r"tfds_builders\.build", (data,), (w,))


def _dataset_info_not_json(s: Shared, d: pathlib.Path) -> Case:
    data = copy_of(s.data_dir, d)
    (info,) = data.rglob("dataset_info.json")
    info.write_text("{ not json")
    w = d / "run"
    return Case(train(w, data), 2, re.escape(str(info)), (data,), (w,))


def _export_overwrite_of_a_run(s: Shared, d: pathlib.Path) -> Case:
    run = copy_of(s.run, d)
    for f in s.export.iterdir():  # an export beside the run's files, as once accepted
        shutil.copy2(f, run / f.name)
    return Case(export(s.run, run, "--overwrite"), 2, r"not part of it", unchanged=(run,))


def _export_overwrite_beside_notes(s: Shared, d: pathlib.Path) -> Case:
    out = copy_of(s.export, d)
    (out / "notes.txt").write_text("mine\n")
    (out / "sub").mkdir()
    return Case(export(s.run, out, "--overwrite"), 2, r"notes\.txt", unchanged=(out,))


def _export_of_a_damaged_checkpoint(s: Shared, d: pathlib.Path) -> Case:
    run = copy_of(s.run, d)
    for step in (p for p in (run / "checkpoints").iterdir() if p.name.isdigit()):
        flip_bytes(largest_file(step / "state", "d"))
    out = d / "out"
    return Case(export(run, out), 2, r"differs from the checksum", (run,), (out,))


def _segment_with_an_edited_export_card(s: Shared, d: pathlib.Path) -> Case:
    export = copy_of(s.export, d)
    card = export / "card.json"
    card.write_text(card.read_text().replace('"name": "wall"', '"name": "edited"', 1))
    image = _image(d)
    out = d / "seg"
    command = tool("experiments.segment", f"--checkpoint={export}", f"--output_dir={out}", image)
    return Case(command, 1, re.escape(str(card)), (export,), (out,))


def _segment_with_a_damaged_checkpoint(s: Shared, d: pathlib.Path) -> Case:
    run = copy_of(s.run, d)
    for step in (p for p in (run / "checkpoints").iterdir() if p.name.isdigit()):
        flip_bytes(largest_file(step / "state", "d"))
    out = d / "seg"
    command = tool("experiments.segment", f"--checkpoint={run}", f"--output_dir={out}", _image(d))
    return Case(command, 1, r"differs from the checksum", (run,), (out,))


def _image(folder: pathlib.Path) -> pathlib.Path:
    from PIL import Image

    path = folder / "image.png"
    Image.new("RGB", (40, 30), (90, 120, 60)).save(path)
    return path


def _build_negative_examples(s: Shared, d: pathlib.Path) -> Case:
    command = tool(
        "tfds_builders.build",
        "synthetic_rgbd",
        "--config",
        "tiny",
        "--data_dir",
        d / "data",
        "--max_examples_per_split",
        "-3",
    )
    return Case(command, 2, r"--max_examples_per_split", (), (d / "data",))


def _build_data_dir_is_a_file(s: Shared, d: pathlib.Path) -> Case:
    f = a_file(d)
    command = tool("tfds_builders.build", "synthetic_rgbd", "--config", "tiny", "--data_dir", f)
    return Case(command, 2, r"--data_dir", unchanged=(f,))


def reproduce(s: Shared, workdir: pathlib.Path, *flags: str) -> list[str]:
    return tool(
        "experiments.reproduce",
        CONFIG,
        f"--workdir={workdir}",
        f"--config.data_dir={s.data_dir}",
        "--table=1",
        *flags,
    )


def _reproduce_kd_methods_without_the_kd_table(s: Shared, d: pathlib.Path) -> Case:
    w = d / "exp"
    return Case(reproduce(s, w, "--kd_methods=pixel"), 2, r"--kd_methods", (), (w,))


def _reproduce_negative_figure_images(s: Shared, d: pathlib.Path) -> Case:
    w = d / "exp"
    return Case(reproduce(s, w, "--figure_images=-1"), 2, r"--figure_images", (), (w,))


def _multihost_without_coordinates(s: Shared, d: pathlib.Path) -> Case:
    w = d / "run"
    command = train(w, s.data_dir, "--multihost")
    return Case(command, 2, r"--coordinator_address.*--num_processes.*--process_id", (), (w,))


PROBES = (
    Probe("workdir is a file", _workdir_is_a_file, quick=True),
    Probe("workdir under a file", _workdir_under_a_file),
    Probe("workdir holds an export", _workdir_holds_an_export),
    Probe("scale_range 2,1", _bad_scale_range, quick=True),
    Probe("eval_pad_to smaller than the images", _small_eval_pad_to),
    Probe("baseline with a teacher_workdir", _baseline_with_a_teacher),
    Probe("init=imagenet with a non-weights file", _imagenet_init_with_a_non_weights_file),
    Probe("finished run, flipped checkpoint bytes", _finished_run_with_flipped_checkpoint, True),
    Probe("finished run, edited config.json", _finished_run_with_edited_config),
    Probe("data: bytes flipped mid-shard", _data_flipped_mid_shard, quick=True),
    Probe("data: dataset_info.json not JSON", _dataset_info_not_json),
    Probe("export --overwrite into a run", _export_overwrite_of_a_run, quick=True),
    Probe("export --overwrite beside notes.txt", _export_overwrite_beside_notes),
    Probe("export of a damaged checkpoint", _export_of_a_damaged_checkpoint),
    Probe("segment: edited export card", _segment_with_an_edited_export_card, quick=True),
    Probe("segment: damaged checkpoint", _segment_with_a_damaged_checkpoint),
    Probe("build: --max_examples_per_split -3", _build_negative_examples, quick=True),
    Probe("build: --data_dir is a file", _build_data_dir_is_a_file),
    Probe("reproduce: --kd_methods without table kd", _reproduce_kd_methods_without_the_kd_table),
    Probe("reproduce: --figure_images=-1", _reproduce_negative_figure_images, quick=True),
    Probe("--multihost without coordinates", _multihost_without_coordinates),
)


# -- running them ---------------------------------------------------------------------------------


def snapshot(path: pathlib.Path) -> dict[str, bytes]:
    """``{relative path: content}`` of ``path`` (a file, or everything under a folder)."""
    if path.is_file():
        return {"": path.read_bytes()}
    return {
        str(p.relative_to(path)): p.read_bytes() if p.is_file() else b"<dir>"
        for p in sorted(path.rglob("*"))
    }


def run_probe(probe: Probe, shared: Shared, folder: pathlib.Path) -> Outcome:
    start = time.perf_counter()
    folder.mkdir(parents=True)
    case = probe.prepare(shared, folder)
    before = {p: snapshot(p) for p in case.unchanged}
    proc = subprocess.run(
        [str(a) for a in case.command],
        cwd=REPO_ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        check=False,
        timeout=TIMEOUT_S,
    )
    lines = proc.stderr.strip().splitlines()
    line = lines[-1] if lines else ""
    problems = []
    if proc.returncode != case.status:
        problems.append(f"exit status {proc.returncode}, expected {case.status}")
    if "Traceback (most recent call last)" in proc.stderr:
        problems.append("a traceback")
    if not re.match(r"(segment: )?error: ", line):
        problems.append("the last line of stderr is not 'error: ...'")
    if not re.search(case.pattern, line):
        problems.append(f"the error line does not match {case.pattern!r}")
    problems += [f"{p} changed" for p in case.unchanged if snapshot(p) != before[p]]
    problems += [f"{p} was created" for p in case.absent if p.exists()]
    return Outcome(
        probe.name, proc.returncode, not problems, line, problems, time.perf_counter() - start
    )


def prepare_shared(workdir: pathlib.Path, data_dir: pathlib.Path | None) -> Shared:
    """The data (built unless given), a finished tiny baseline run and its export."""
    data_dir = data_dir or workdir / "data"
    run = workdir / "run"
    export_dir = workdir / "export"
    for command in (train(run, data_dir), export(run, export_dir)):
        proc = subprocess.run(
            [str(a) for a in command], cwd=REPO_ROOT, env=ENV, capture_output=True, text=True
        )
        if proc.returncode:
            raise RuntimeError(f"preparing the probes failed: {command}\n{proc.stderr[-3000:]}")
    return Shared(data_dir, run, export_dir)


def markdown(outcomes: Sequence[Outcome]) -> str:
    rows = [
        "| probe | exit | verdict | error line (or what is wrong) | s |",
        "|---|---:|---|---|---:|",
    ]
    for o in outcomes:
        text = o.line if o.passed else "; ".join(o.problems) + f" — {o.line}"
        text = text.replace("|", "\\|")
        if len(text) > 160:
            text = text[:157] + "..."
        verdict = "ok" if o.passed else "**FAILED**"
        rows.append(f"| {o.name} | {o.status} | {verdict} | {text} | {o.seconds:.1f} |")
    return "\n".join(rows)


def run_probes(
    workdir: pathlib.Path,
    *,
    quick: bool = False,
    data_dir: pathlib.Path | None = None,
    shared: Shared | None = None,
    jobs: int = 2,
    names: Sequence[str] = (),
) -> list[Outcome]:
    """Runs the probes (the quick ones, or those ``names``) in ``workdir`` (must be new), on
    ``shared`` inputs (:func:`prepare_shared`; made in ``workdir`` when not given)."""
    workdir.mkdir(parents=True)
    shared = shared or prepare_shared(workdir, data_dir)
    chosen = [p for p in PROBES if (not quick or p.quick) and (not names or p.name in names)]
    with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
        futures = [
            pool.submit(run_probe, p, shared, workdir / "probes" / f"{i:02d}")
            for i, p in enumerate(chosen)
        ]
        return [f.result() for f in futures]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=pathlib.Path, required=True, help="a new directory")
    parser.add_argument("--quick", action="store_true", help="only the probes marked quick")
    parser.add_argument("--data_dir", type=pathlib.Path, help="synthetic_rgbd/tiny, read only")
    parser.add_argument("--jobs", type=int, default=2, help="probes run at once")
    args = parser.parse_args(argv)
    if args.workdir.exists():
        parser.error(f"--workdir {args.workdir} exists: give a new directory")
    start = time.perf_counter()
    outcomes = run_probes(args.workdir, quick=args.quick, data_dir=args.data_dir, jobs=args.jobs)
    print(markdown(outcomes))
    failed = [o.name for o in outcomes if not o.passed]
    summary = {
        "probes": len(outcomes),
        "passed": len(outcomes) - len(failed),
        "failed": failed,
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(summary))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
