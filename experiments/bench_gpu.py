r"""The GPU benchmark of issue 15 (part 3): one command, a time budget, Markdown and JSON reports.

    python -m experiments.bench_gpu                     # on one GPU: the defaults, ~7 minutes
    make bench-gpu BENCH_GPU_FLAGS=--output_dir=$OUT    # on the lent GPU machine (see Makefile)
    python -m experiments.bench_gpu --batch=2 --height=32 --width_px=32 --network_width=0.0625 \
        --repeats=1 --synthetic_config=tiny --synthetic_steps=5     # a CPU smoke run

Sections (``--sections``; each catches its own exception and records it, type and message, and
the command goes on with the next):

1. ``dconv``: our ``depth_aware_conv`` (implementation ``fast``) against XLA's conv, fwd+bwd, at
   every distinct depth-aware layer shape of DeepLab-VGG16 (``--network_width``, 1 = full) on
   ``--batch`` images of ``--height``×``--width_px`` (``bench_dconv.model_layer_shapes``), for
   each of ``--dtypes``: ``bench_dconv.bench_shape`` (compiled, median of ``--repeats`` after a
   warm-up, round-robin). Target per shape: fwd+bwd time ≤ 1.3× XLA's conv.
2. ``train_step``: the student (``mode='baseline'``, plain convs) and teacher (D-Conv everywhere)
   training steps of ``bench_train_step`` on a random batch of the same size, for each dtype:
   compile seconds, median step seconds, images/s and peak memory: the device's
   ``memory_stats()['peak_bytes_in_use']`` after the program's first step where the backend
   reports it (a process-wide high-water mark: it includes everything run before, so a program
   that needs less than an earlier one shows the earlier one's peak), and always XLA's compiled
   ``memory_analysis`` (``bench_dconv.peak_bytes``). Target: teacher step ≤ 1.3× the student's.
3. ``peer``: the PyTorch ``unfold`` peer (``bench_peer_torch``) against ours, fwd+bwd, float32,
   at the same layer shapes, on ``cuda`` when torch sees a GPU (else the CPU), after a check that
   both compute the same numbers there at full float32 precision. For the timing, torch's
   float32 matmuls may use TF32 on a GPU (``torch.set_float32_matmul_precision('high')``), as
   JAX's float32 contractions do there by default.
   Target: ours ≥ 5× faster. Recorded as skipped when torch is not installed.
4. ``synthetic``: the real trainer, ``drd_jax.train.train_and_evaluate``, on the embedded
   ``synthetic_rgbd`` data (built on first use into ``--data_dir``) with the
   ``synthetic.py:<--synthetic_config>`` config for ``--synthetic_steps`` steps: data build
   seconds, train + evaluation wall seconds, steps/s (the median of the logged intervals after the
   first, which holds the compilation) and the final mIoU.

Time budget (``--budget_s``): each selected section has a nominal share of the budget (by
:data:`WEIGHTS`). A section starts only if at least :data:`MIN_START` of its nominal share is
left; otherwise it is recorded as "skipped: time budget" (so a budget of 0 skips them all). A
section may then use its share of what is left (among the sections still to run; time it leaves
over goes to the later ones): within it, each unit (a shape and dtype, a dtype's pair of steps, a
peer shape) starts only if the previous unit's duration still fits, and the units left are
listed as skipped. A unit that runs over its section's share is not stopped, so the run can end
somewhat past the budget (the last section, one unit, by up to its own length).

Outputs: ``<--output_dir>/bench_gpu.md`` and ``bench_gpu.json``, each rewritten atomically
after every unit and section, so a killed run leaves its partial results. Exit status 1 if a
section failed, else 0. JAX's GPU memory preallocation is off (``XLA_PYTHON_CLIENT_PREALLOCATE``,
unless set) so that torch can share the GPU.
Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.metadata
import json
import math
import os
import pathlib
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from drd_jax.files import atomic_write_text
from experiments import bench_dconv, bench_peer_torch, bench_train_step

SECTIONS = ("dconv", "train_step", "peer", "synthetic")
TITLES = {
    "dconv": "1. D-Conv (fast) vs XLA conv, fwd+bwd",
    "train_step": "2. Training step: teacher vs student",
    "peer": "3. PyTorch unfold peer vs ours, fwd+bwd, float32",
    "synthetic": "4. Synthetic run: train_and_evaluate",
}
# Share of the time left that a section may use, relative to the sections still to run.
WEIGHTS = {"dconv": 0.3, "train_step": 0.4, "peer": 0.1, "synthetic": 0.2}
MIN_START = 0.5  # a section starts only if this fraction of its nominal share is left
DCONV_MAX_RATIO = 1.3  # D-Conv fwd+bwd time / XLA conv's
TEACHER_MAX_RATIO = 1.3  # teacher step time / student's
PEER_MIN_SPEEDUP = 5.0  # torch peer time / ours
CLASSES = 40
MARKDOWN_NAME, JSON_NAME = "bench_gpu.md", "bench_gpu.json"
# Versions recorded in the report's header.
PACKAGES = (
    "numpy",
    "optax",
    "orbax-checkpoint",
    "chex",
    "etils",
    "protobuf",
    "tensorflow-datasets",
    "grain",
    "array_record",
    "ml_collections",
    "tensorboardX",
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command's flags (see the module docstring); ``--sections``/``--dtypes`` become lists."""
    p = argparse.ArgumentParser(prog="python -m experiments.bench_gpu", description=__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--batch", type=int, default=8, help="images per batch")
    p.add_argument("--height", type=int, default=480, help="image height (pixels)")
    p.add_argument("--width_px", type=int, default=640, help="image width (pixels)")
    p.add_argument(
        "--network_width", type=float, default=1.0, help="DeepLab-VGG16 width multiplier"
    )
    p.add_argument("--repeats", type=int, default=10, help="timed runs per program (median)")
    p.add_argument("--dtypes", default="float32,bfloat16", help="compute dtypes, in order")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"some of {SECTIONS}, in order")
    p.add_argument(
        "--synthetic_config", default="demo", help="synthetic.py variant: demo, tiny, ''"
    )
    p.add_argument("--synthetic_steps", type=int, default=300, help="training steps of section 4")
    p.add_argument("--data_dir", default="", help="TFDS data dir (default: <work_dir>/data)")
    p.add_argument("--work_dir", default="", help="run dir of section 4 (default: a temp dir)")
    p.add_argument("--output_dir", default="results/bench_gpu", help="where the reports go")
    p.add_argument("--budget_s", type=float, default=420.0, help="time budget (seconds)")
    args = p.parse_args(argv)
    args.sections = [s for s in args.sections.split(",") if s]
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    for name in args.sections:
        if name not in SECTIONS:
            p.error(f"--sections: unknown section {name!r}, expected some of {SECTIONS}")
    for dtype in args.dtypes:
        if dtype not in ("float32", "bfloat16"):
            p.error(f"--dtypes: {dtype!r} is neither float32 nor bfloat16")
    return args


class Budget:
    """``total_s`` seconds from construction, shared out among the sections."""

    def __init__(self, total_s: float):
        self.total_s = float(total_s)
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds since construction."""
        return time.perf_counter() - self.start

    def left(self) -> float:
        """Seconds of the budget left (negative once overrun)."""
        return self.total_s - self.elapsed()

    def gate(self, weight: float, weights_left: float) -> Gate:
        """A :class:`Gate` for a section that may use ``weight / weights_left`` of what is left."""
        return Gate(self, self.elapsed() + max(self.left(), 0.0) * weight / weights_left)


class Gate:
    """Decides whether a section's next unit starts: only if the last unit's duration (0 before
    the first) still fits before ``deadline`` (seconds of the budget's clock)."""

    def __init__(self, budget: Budget, deadline: float):
        self.budget, self.deadline = budget, deadline
        self.last_s = 0.0
        self._mark = time.perf_counter()

    def fits(self) -> bool:
        """Whether a unit as long as the last one ends before the deadline."""
        return self.budget.elapsed() + self.last_s <= self.deadline

    def lap(self) -> float:
        """Ends a unit that began at the previous ``lap`` (or ``start``); returns its seconds."""
        now = time.perf_counter()
        self.last_s, self._mark = now - self._mark, now
        return self.last_s

    def start(self) -> None:
        """Marks the start of a unit."""
        self._mark = time.perf_counter()


@dataclasses.dataclass
class Run:
    """One invocation: its flags, budget, report (the JSON document) and where it is written."""

    args: argparse.Namespace
    budget: Budget
    report: dict
    output_dir: pathlib.Path
    work_dir: pathlib.Path

    def save(self) -> None:
        """Writes the JSON and Markdown reports atomically (temporary file, then ``os.replace``)."""
        self.report["elapsed_s"] = self.budget.elapsed()
        text = json.dumps(_jsonable(self.report), indent=2, allow_nan=False) + "\n"
        atomic_write_text(self.output_dir / JSON_NAME, text)
        atomic_write_text(self.output_dir / MARKDOWN_NAME, format_markdown(self.report) + "\n")


def _jsonable(value):
    """``value`` with tuples as lists, numpy scalars as Python numbers, non-finite floats None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def header(argv: list[str], args: argparse.Namespace) -> dict:
    """Versions, backend, device and the exact command line of this run."""
    device = jax.devices()[0]
    return {
        "command": shlex.join([sys.executable, "-m", "experiments.bench_gpu", *argv]),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": _package_version("jaxlib"),
        "flax": _package_version("flax"),
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "torch": _package_version("torch"),
        "packages": {name: _package_version(name) for name in PACKAGES},
        "xla_python_client_preallocate": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"),
        "settings": {k: v for k, v in vars(args).items() if k not in ("output_dir", "work_dir")},
    }


# Section 1: D-Conv against XLA's conv.


def _layer_shapes(args) -> dict[str, tuple]:
    return bench_dconv.model_layer_shapes(
        args.batch, args.height, args.width_px, args.network_width
    )


def section_dconv(run: Run, record: dict, gate: Gate) -> None:
    """Fills ``record['rows']``: per dtype and distinct shape, ``bench_dconv.bench_shape``'s
    ``ops`` (plain conv, D-Conv fast: seconds and compiled bytes), the fwd+bwd ``ratio`` and
    ``passed`` (ratio ≤ :data:`DCONV_MAX_RATIO`)."""
    record.update(max_ratio=DCONV_MAX_RATIO, rows=[], skipped=[])
    shapes = bench_dconv.distinct_shapes(_layer_shapes(run.args))
    for dtype in run.args.dtypes:
        for label, shape, count in shapes:
            if not gate.fits():
                record["skipped"].append(f"{dtype} {label}")
                continue
            gate.start()
            ops = bench_dconv.bench_shape(
                label, shape, jnp.dtype(dtype), run.args.repeats, ["fast"]
            )
            seconds = gate.lap()
            ratio = ops[1]["bwd_s"] / ops[0]["bwd_s"]
            row = dict(dtype=dtype, layers=label, shape=shape, count=count, ops=ops, ratio=ratio)
            record["rows"].append({**row, "passed": ratio <= DCONV_MAX_RATIO, "unit_s": seconds})
            _progress(f"dconv {dtype} {label}: {ratio:.2f}x, {seconds:.0f} s")
            run.save()


def format_dconv(record: dict, a: dict) -> str:
    """``bench_dconv.format_preset_tables`` per dtype (fwd+bwd with verdicts, then forward);
    ``a``: the run's settings."""
    out = []
    for dtype in dict.fromkeys(r["dtype"] for r in record["rows"]):
        rows = [r for r in record["rows"] if r["dtype"] == dtype]
        results = [(r["layers"], r["shape"], r["count"], r["ops"]) for r in rows]
        title = f"{dtype}, {a['height']}×{a['width_px']} input"
        out.append(
            bench_dconv.format_preset_tables(
                title, results, "fast", max_time_ratio=record["max_ratio"]
            )
        )
        passed = sum(r["passed"] for r in rows)
        out.append(f"{dtype}: {passed} of {len(rows)} shapes PASS (fwd+bwd ≤ {DCONV_MAX_RATIO}×).")
    return "\n\n".join(out)


# Section 2: training steps.


def _memory(compiled) -> dict:
    """Peak MiB of a compiled step: the device's high-water mark (None if not reported) and
    XLA's compiled estimate."""
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return {
        "device_peak_mib": None if peak is None else peak / 2**20,
        "compiled_peak_mib": bench_dconv.peak_bytes(compiled) / 2**20,
    }


def train_steps(args, dtype: str) -> list[dict]:
    """Student then teacher step rows (``bench_train_step.step_rows`` plus memory) for ``dtype``.

    Each program is compiled, then run once alone, after which the device's peak is read."""
    shape = dict(batch=args.batch, height=args.height, width_px=args.width_px)
    first = bench_train_step.random_batch(np.random.default_rng(0), **shape, classes=CLASSES)
    programs, states, memory = {}, {}, {}
    for name, mode in (("student", "baseline"), ("teacher", "teacher")):
        config = bench_train_step.make_config(mode, width=args.network_width, dtype=dtype, **shape)
        program = bench_train_step.compile_step(config, first, classes=CLASSES)
        states[name] = bench_train_step.run_step(program, program.state, first)
        programs[name], memory[name] = program, _memory(program.compiled)
    batch = bench_train_step.random_batch(np.random.default_rng(1), **shape, classes=CLASSES)
    times = bench_train_step.time_steps(
        programs, states, batch, warmup=1, repeats=max(args.repeats, 1)
    )
    rows = bench_train_step.step_rows(programs, times, args.batch)
    return [{"dtype": dtype, **r, **memory[r["step"]]} for r in rows]


def section_train_step(run: Run, record: dict, gate: Gate) -> None:
    """Fills ``record['rows']`` (:func:`train_steps` per dtype) and ``record['verdicts']``
    (teacher / student step time ≤ :data:`TEACHER_MAX_RATIO`)."""
    device_stats = jax.devices()[0].memory_stats() is not None
    record.update(
        max_ratio=TEACHER_MAX_RATIO,
        memory_source="device memory_stats peak_bytes_in_use"
        if device_stats
        else "XLA compiled memory_analysis (the device reports no memory_stats)",
        rows=[],
        verdicts=[],
        skipped=[],
    )
    for dtype in run.args.dtypes:
        if not gate.fits():
            record["skipped"].append(dtype)
            continue
        gate.start()
        rows = train_steps(run.args, dtype)
        seconds = gate.lap()
        ratio = next(r["ratio_to_student"] for r in rows if r["step"] == "teacher")
        record["rows"] += rows
        record["verdicts"].append(
            dict(dtype=dtype, ratio=ratio, passed=ratio <= TEACHER_MAX_RATIO, unit_s=seconds)
        )
        _progress(f"train_step {dtype}: teacher/student {ratio:.2f}x, {seconds:.0f} s")
        run.save()


def _mib(value) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def format_train_step(record: dict, a: dict) -> str:
    """``bench_train_step.format_step_table`` per dtype, with the memory columns and verdict
    (``a``: the run's settings)."""
    out = [
        f"DeepLab-VGG16 width {a['network_width']:g}, {a['height']}×{a['width_px']}, batch "
        f"{a['batch']}, {CLASSES} classes, SGD; peak memory: {record['memory_source']}."
    ]
    for verdict in record["verdicts"]:
        rows = [
            {**r, "device": _mib(r["device_peak_mib"]), "compiled": _mib(r["compiled_peak_mib"])}
            for r in record["rows"]
            if r["dtype"] == verdict["dtype"]
        ]
        extra = [("device peak MiB (high-water mark)", "device"), ("XLA peak MiB", "compiled")]
        out.append(f"#### {verdict['dtype']}\n\n" + bench_train_step.format_step_table(rows, extra))
        out.append(
            f"teacher / student step time: {verdict['ratio']:.2f}× "
            f"(target ≤ {record['max_ratio']}×): {bench_dconv._verdict(verdict['passed'])}"
        )
    return "\n\n".join(out)


# Section 3: the PyTorch peer.


def _import_torch():
    """The torch module (ImportError when it is not installed); tests replace this."""
    import torch

    return torch


def section_peer(run: Run, record: dict, gate: Gate) -> None:
    """Fills ``record['rows']`` (``bench_peer_torch.bench_layers``) on cuda when available; marks
    the section skipped when torch cannot be imported."""
    try:
        torch = _import_torch()
    except ImportError as e:
        record.update(status="skipped", reason=f"torch not installed ({type(e).__name__}: {e})")
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    record.update(torch=torch.__version__, device=device, min_speedup=PEER_MIN_SPEEDUP)
    record.update(rows=[], skipped=[])
    try:
        bench_peer_torch.check_same_numbers(torch, device=device)
        record["check"] = "PASS: same loss, dx, dW as ours (rtol 1e-4, full float32)"
    except AssertionError as e:
        record["check"] = f"FAIL: {str(e).strip()[:500]}"
    if device == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32, like JAX's default on the GPU
    record["torch_matmul_precision"] = torch.get_float32_matmul_precision()
    layers = _layer_shapes(run.args)

    def each(row):
        row = {**row, "speedup": row["peer_s"] / row["ours_s"], "unit_s": gate.lap()}
        record["rows"].append({**row, "passed": row["speedup"] >= PEER_MIN_SPEEDUP})
        _progress(f"peer {row['layers']}: {row['speedup']:.1f}x, {row['unit_s']:.0f} s")
        run.save()
        return gate.fits()

    gate.start()
    bench_peer_torch.bench_layers(torch, layers, run.args.repeats, device, each=each)
    done = {r["layers"] for r in record["rows"]}
    shapes = bench_dconv.distinct_shapes(layers)
    record["skipped"] = [label for label, _, _ in shapes if label not in done]


def format_peer(record: dict, a: dict) -> str:
    """The peer table with verdicts, the device and the numbers check."""
    precision = record["torch_matmul_precision"]
    return (
        f"torch {record['torch']} on `{record['device']}` (float32 matmul precision "
        f"'{precision}'{', i.e. TF32' if precision == 'high' else ''}); JAX on its default "
        "device, default precision. "
        f"Numbers check: {record['check']}\n\n"
        + bench_peer_torch.format_peer_table(record["rows"], record["min_speedup"])
    )


# Section 4: the synthetic run.


def _train_logs(workdir: pathlib.Path) -> list[dict]:
    """The run's logged train records (``metrics.jsonl``), in step order."""
    from drd_jax.metric_writers import read_jsonl

    return [r for r in read_jsonl(workdir / "metrics.jsonl") if r["split"] == "train"]


def section_synthetic(run: Run, record: dict, gate: Gate) -> None:
    """Builds the data (if needed) and runs ``train_and_evaluate``; fills the record's timings,
    steps/s and final metrics."""
    from drd_jax import input_pipeline
    from drd_jax.train import train_and_evaluate
    from experiments.configs import synthetic

    a = run.args
    c = synthetic.get_config(a.synthetic_config)
    c.num_train_steps = a.synthetic_steps
    c.data_dir = a.data_dir or str(run.work_dir / "data")
    c.progress_bar, c.write_curves = False, False
    workdir = run.work_dir / "synthetic_run"
    shutil.rmtree(workdir, ignore_errors=True)  # a fresh run, not a resumed one
    record.update(config=f"synthetic.py:{a.synthetic_config}", dataset=c.dataset, mode=c.mode)
    record.update(
        width=c.width, crop=list(c.crop_size), batch=c.batch_size, steps=a.synthetic_steps
    )
    gate.start()
    input_pipeline.load_data_source(c.dataset, "train", data_dir=c.data_dir, prepare=True)
    record["data_build_s"] = gate.lap()
    result = train_and_evaluate(c, workdir)
    record["train_eval_s"] = gate.lap()
    ips = [r["scalars"]["images_per_sec"] for r in _train_logs(workdir)[1:]]
    steady = statistics.median(ips) / c.batch_size if ips else None
    record.update(
        steps_per_s=steady,
        overall_steps_per_s=c.num_train_steps / record["train_eval_s"],
        mean_iou=result["mean_iou"],
        pixel_accuracy=result["pixel_accuracy"],
    )


def format_synthetic(record: dict, a: dict) -> str:
    """One-row table of the synthetic run."""
    steady = record["steps_per_s"]
    return "\n".join(
        [
            "| config | dataset | mode | width | crop | batch | steps | data build s "
            "| train + eval s | steps/s (steady) | steps/s (overall) | final mIoU |",
            "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
            f"| {record['config']} | {record['dataset']} | {record['mode']} "
            f"| {record['width']:g} | {record['crop'][0]}×{record['crop'][1]} | {record['batch']} "
            f"| {record['steps']} | {record['data_build_s']:.1f} | {record['train_eval_s']:.1f} "
            f"| {'n/a' if steady is None else f'{steady:.2f}'} "
            f"| {record['overall_steps_per_s']:.2f} | {record['mean_iou']:.4f} |",
        ]
    )


SECTION_FUNCS: dict[str, Callable[[Run, dict, Gate], None]] = {
    "dconv": section_dconv,
    "train_step": section_train_step,
    "peer": section_peer,
    "synthetic": section_synthetic,
}
FORMATTERS: dict[str, Callable[[dict, dict], str]] = {
    "dconv": format_dconv,
    "train_step": format_train_step,
    "peer": format_peer,
    "synthetic": format_synthetic,
}


def _progress(message: str) -> None:
    print(f"[bench_gpu] {message}", file=sys.stderr, flush=True)


def run_section(run: Run, name: str, weights_left: float, weights_total: float) -> None:
    """Runs section ``name`` unless too little of the budget is left (see the module docstring);
    records its status, seconds and any exception (type, message, traceback); saves the reports.
    ``weights_left``/``weights_total``: the :data:`WEIGHTS` of the sections still to run (this
    one included) and of all selected sections."""
    record = run.report["sections"][name]
    needed = MIN_START * run.budget.total_s * WEIGHTS[name] / weights_total
    left = run.budget.left()
    if left <= 0 or left < needed:
        record.update(status="skipped", reason="time budget", left_s=left, needed_s=needed)
        run.save()
        return
    record["status"] = "running"
    run.save()
    gate = run.budget.gate(WEIGHTS[name], weights_left)
    start = time.perf_counter()
    try:
        SECTION_FUNCS[name](run, record, gate)
    except Exception as e:  # recorded; the next section runs
        error = f"{type(e).__name__}: {e}"
        record.update(status="failed", error=error, traceback=traceback.format_exc()[-5000:])
        _progress(f"{name} failed: {error}")
    else:
        if record["status"] == "running":
            record["status"] = "partial" if record.get("skipped") else "ok"
    record["seconds"] = time.perf_counter() - start
    _progress(f"{name}: {record['status']}, {record['seconds']:.0f} s")
    run.save()


def _summary(name: str, record: dict) -> str:
    """One line on a finished section's results."""
    if name in ("dconv", "peer"):
        rows = record.get("rows", [])
        return f"{sum(r['passed'] for r in rows)} of {len(rows)} shapes PASS"
    if name == "train_step":
        return "; ".join(
            f"{v['dtype']} {v['ratio']:.2f}× {bench_dconv._verdict(v['passed'])}"
            for v in record.get("verdicts", [])
        )
    steps_per_s = record["steps_per_s"] or record["overall_steps_per_s"]
    return f"final mIoU {record['mean_iou']:.4f}, {steps_per_s:.1f} steps/s"


def _status_text(name: str, record: dict) -> str:
    status = record["status"]
    if status == "skipped":
        return f"skipped: {record['reason']}"
    if status == "failed":
        return f"**failed**: {record['error']}"
    if status == "partial":
        return f"partial: skipped (time budget): {', '.join(map(str, record['skipped']))}"
    return status


def _format_section(name: str, record: dict, settings: dict) -> list[str]:
    lines = ["", f"## {TITLES[name]}", "", _status_text(name, record)]
    if record["status"] in ("ok", "partial") or record.get("rows"):
        try:
            lines += ["", FORMATTERS[name](record, settings)]
        except (KeyError, TypeError, IndexError, ValueError) as e:
            lines += ["", f"(no table: {type(e).__name__}: {e})"]
    return lines


def format_markdown(report: dict) -> str:
    """The Markdown report: header, a status table of the sections, then each section."""
    h, a = report["header"], report["header"]["settings"]
    lines = [
        "# GPU benchmark (issue 15, part 3)",
        "",
        f"- command: `{h['command']}`",
        f"- started {h['started']}; Python {h['python']}, jax {h['jax']} (jaxlib {h['jaxlib']}), "
        f"flax {h['flax']}, torch {h['torch']}",
        "- packages: " + ", ".join(f"{k} {v}" for k, v in h["packages"].items()),
        f"- backend `{h['backend']}`, device {h['device_kind']} × {h['device_count']}; "
        f"XLA_PYTHON_CLIENT_PREALLOCATE={h['xla_python_client_preallocate']}",
        f"- batch {a['batch']}, {a['height']}×{a['width_px']}, network width "
        f"{a['network_width']:g}, repeats {a['repeats']}, dtypes {', '.join(a['dtypes'])}; "
        f"synthetic: `{a['synthetic_config']}`, {a['synthetic_steps']} steps; "
        f"budget {a['budget_s']:g} s",
        f"- elapsed {report['elapsed_s']:.0f} s; "
        + (
            f"finished, exit status {report['exit_status']}"
            if "exit_status" in report
            else "running"
        ),
        "",
        "| section | status | seconds | result |",
        "|---|---|---:|---|",
    ]
    for name, record in report["sections"].items():
        seconds = record.get("seconds")
        ok = record["status"] in ("ok", "partial")
        lines.append(
            f"| {TITLES[name]} | {record['status']} "
            f"| {'' if seconds is None else f'{seconds:.0f}'} "
            f"| {_summary(name, record) if ok else _status_text(name, record)} |"
        )
    for name, record in report["sections"].items():
        lines += _format_section(name, record, a)
    return "\n".join(lines)


@contextlib.contextmanager
def _work_dir(path: str):
    """``path`` (created), or a temporary directory removed at the end."""
    if path:
        pathlib.Path(path).mkdir(parents=True, exist_ok=True)
        yield pathlib.Path(path).absolute()
        return
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        yield pathlib.Path(tmp)


def main(argv: list[str] | None = None) -> int:
    """Runs the selected sections within the budget; returns the exit status (1 if one failed)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    # Before JAX starts its backend: torch shares the GPU, and memory_stats() shows real use.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    budget = Budget(args.budget_s)
    output_dir = pathlib.Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    sections = {
        name: {"status": "pending"}
        if name in args.sections
        else {"status": "skipped", "reason": "not selected (--sections)"}
        for name in SECTIONS
    }
    with _work_dir(args.work_dir) as work_dir:
        report = {"header": header(argv, args), "sections": sections}
        run = Run(args, budget, report, output_dir, work_dir)
        run.save()
        for i, name in enumerate(args.sections):
            weights = [WEIGHTS[s] for s in args.sections]
            run_section(run, name, sum(weights[i:]), sum(weights))
    failed = [n for n, r in sections.items() if r["status"] == "failed"]
    report["exit_status"] = 1 if failed else 0
    run.save()
    _progress(f"reports: {output_dir / MARKDOWN_NAME}, {output_dir / JSON_NAME}")
    return report["exit_status"]


if __name__ == "__main__":
    sys.exit(main())
