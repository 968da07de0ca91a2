r"""The GPU benchmark: one command, a time budget, Markdown and JSON reports.

    python -m experiments.benchmarks.bench_gpu          # on one GPU: the defaults, ~7 minutes
    make bench-gpu BENCH_GPU_FLAGS=--output_dir=$OUT    # on a GPU machine (see Makefile)
    python -m experiments.benchmarks.bench_gpu --batch=2 --height=32 --width_px=32 \
        --network_width=0.0625 --repeats=1 --synthetic_config=tiny --synthetic_steps=5  # CPU smoke

Sections (``--sections``; each catches its own exception and records it, type and message, and
the command goes on with the next):

D-Conv implementations (``--implementations``, default ``fast,fast_patches,pallas``): each must
be in ``drd_jax.ops.depth_conv.IMPLEMENTATIONS``; one that is not (``pallas`` in a checkout
without the Pallas D-Conv) is skipped with a note in sections 1 and 2. On a CPU ``pallas`` runs in
Pallas interpret mode (slow and meaningless as a time: a CPU run needs tiny shapes).
``--dtypes`` default to bfloat16 first, where the targets that matter most are.

1. ``dconv``: our ``depth_aware_conv``, every implementation, against XLA's conv, fwd+bwd, at
   every distinct depth-aware layer shape of DeepLab-VGG16 (``--network_width``, 1 = full) on
   ``--batch`` images of ``--height``×``--width_px`` (``bench_dconv.model_layer_shapes``), for
   each of ``--dtypes``: ``bench_dconv.bench_shape`` (compiled, median of ``--repeats`` after a
   warm-up, round-robin). Target per shape: fwd+bwd time ≤ 1.3× XLA's conv, per implementation
   and by the best one. A shape where ``pallas`` fails (e.g. a Triton compile error) records the
   error and is timed again without it.
2. ``train_step``: the student (``mode='baseline'``, plain convs: one program whatever the
   implementation), the teacher (D-Conv everywhere) once per implementation, and the student with
   VTCE (the frozen teacher's ``fast`` forward pass inside the step: Table 1's SN) training steps
   of ``bench_train_step`` on a random batch of the same size, for each dtype, timed round-robin:
   compile seconds, median step seconds, images/s and peak memory: the device's
   ``memory_stats()['peak_bytes_in_use']`` after the program's first step where the backend
   reports it (a process-wide high-water mark: it includes everything run before, so a program
   that needs less than an earlier one shows the earlier one's peak), and always XLA's compiled
   ``memory_analysis`` (``bench_dconv.peak_bytes``). A teacher or SN program that fails is left
   out with its error. Targets: teacher step ≤ 1.3× the student's (bfloat16); the bfloat16
   student step's model FLOP/s (:func:`conv_flops`: 3 × 2 × the convs' multiply-adds) ≥ 40% of
   the device's dense bfloat16 peak (``--peak_bf16_tflops``, else :data:`PEAK_BF16_TFLOPS` by
   device kind; n/a when unknown); NYUv2 Table 1 (BL, TN, SN with ``experiments/configs/
   nyuv2.py``'s steps and batch) projected from the measured seconds per image ≤ 2 h, per dtype
   and teacher implementation (:func:`table1_projection`; a verdict only at nyuv2.py's width and
   crop, i.e. the default flags).
3. ``peer``: the PyTorch ``unfold`` peer (``bench_peer_torch``) against ours (``fast``),
   fwd+bwd, float32, at the same layer shapes, on ``cuda`` when torch sees a GPU (else the CPU),
   after a check that both compute the same numbers there at full float32 precision. For the
   timing, torch's float32 matmuls may use TF32 on a GPU
   (``torch.set_float32_matmul_precision('high')``), as JAX's float32 contractions do there by
   default. The peer's time is also divided by each implementation's float32 time from section 1.
   Target: ours ≥ 5× faster. Recorded as skipped when torch is not installed.
4. ``synthetic``: the real trainer, ``drd_jax.train.train_and_evaluate``, on the embedded
   ``synthetic_rgbd`` data (built on first use into ``--data_dir``) with the
   ``synthetic.py:<--synthetic_config>`` config for ``--synthetic_steps`` steps: data build
   seconds, train + evaluation wall seconds, steps/s (the median of the logged intervals after the
   first, which holds the compilation) and the final mIoU.

The Markdown report opens with a "Targets" table (:func:`targets`, also in the JSON): each target
with what was measured and PASS / **FAIL** / n/a (not measured).

Time budget (``--budget_s``): each selected section has a nominal share of the budget (by
:data:`WEIGHTS`). A section starts only if at least :data:`MIN_START` of its nominal share is
left; otherwise it is recorded as "skipped: time budget" (so a budget of 0 skips them all). A
section may then use its share of what is left (among the sections still to run; time it leaves
over goes to the later ones): within it, each unit (a shape and dtype, a dtype's steps, a peer
shape) starts only if the previous unit's duration still fits, and the units left are
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
import functools
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

from drd_jax import state as state_lib
from drd_jax.files import atomic_write_text
from experiments.benchmarks import bench_dconv, bench_peer_torch, bench_train_step

SECTIONS = ("dconv", "train_step", "peer", "synthetic")
TITLES = {
    "dconv": "1. D-Conv implementations vs XLA conv, fwd+bwd",
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
STUDENT_MIN_PEAK_FRACTION = 0.4  # student bfloat16 step: model FLOP/s over the dense bf16 peak
TABLE1_MAX_HOURS = 2.0  # projected NYUv2 Table 1 (BL, TN, SN) on one device
# D-Conv implementations timed by default; PALLAS is skipped (with a note) when depth_conv does not
# register it, and runs in Pallas interpret mode on a CPU.
IMPLEMENTATIONS = ("fast", "fast_patches", "pallas")
PALLAS = "pallas"
# Dense (no sparsity) bfloat16 matrix peak, TFLOP/s, by a substring of jax's device_kind; the first
# match wins (so "H200 NVL" before "H200"). NVIDIA's datasheets quote twice these "with sparsity".
PEAK_BF16_TFLOPS = (
    ("GH200", 989.0),
    ("H200 NVL", 835.5),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.5),
    ("H100", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("TPU v4", 275.0),
    ("TPU v5 lite", 197.0),
    ("TPU v5e", 197.0),
    ("TPU v5p", 459.0),
    ("TPU v6 lite", 918.0),
)
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
    p = argparse.ArgumentParser(
        prog="python -m experiments.benchmarks.bench_gpu", description=__doc__
    )
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--batch", type=int, default=8, help="images per batch")
    p.add_argument("--height", type=int, default=480, help="image height (pixels)")
    p.add_argument("--width_px", type=int, default=640, help="image width (pixels)")
    p.add_argument(
        "--network_width", type=float, default=1.0, help="DeepLab-VGG16 width multiplier"
    )
    p.add_argument("--repeats", type=int, default=10, help="timed runs per program (median)")
    p.add_argument(
        "--dtypes",
        default="bfloat16,float32",
        help="compute dtypes, in order (bfloat16 first: its targets matter most)",
    )
    p.add_argument(
        "--implementations",
        default=",".join(IMPLEMENTATIONS),
        help="D-Conv implementations timed in sections 1 and 2 (one missing from "
        "drd_jax.ops.depth_conv.IMPLEMENTATIONS is skipped with a note)",
    )
    p.add_argument(
        "--peak_bf16_tflops",
        type=float,
        default=0.0,
        help="the device's dense bfloat16 peak, TFLOP/s (0: from PEAK_BF16_TFLOPS by device kind)",
    )
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
    args.implementations = [i for i in args.implementations.split(",") if i]
    from drd_jax.ops.depth_conv import IMPLEMENTATIONS as known

    for impl in args.implementations:
        if impl not in (*known, *IMPLEMENTATIONS):
            p.error(
                f"--implementations: unknown implementation {impl!r}, expected some of "
                f"{tuple(dict.fromkeys((*known, *IMPLEMENTATIONS)))}"
            )
    if not args.implementations:
        p.error("--implementations: expected at least one implementation")
    if not (args.peak_bf16_tflops >= 0 and math.isfinite(args.peak_bf16_tflops)):
        p.error(f"--peak_bf16_tflops: expected a number >= 0, got {args.peak_bf16_tflops}")
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
        self.report["targets"] = targets(self.report)
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
        "command": shlex.join([sys.executable, "-m", "experiments.benchmarks.bench_gpu", *argv]),
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


def available_implementations(requested: list[str]) -> tuple[list[str], list[str]]:
    """The ``requested`` D-Conv implementations this checkout has, and notes on the others
    (skipped) and on Pallas's interpret mode on a CPU."""
    from drd_jax.ops.depth_conv import IMPLEMENTATIONS as known

    impls = [impl for impl in requested if impl in known]
    notes = [
        f"`{impl}`: skipped: not in drd_jax.ops.depth_conv.IMPLEMENTATIONS {tuple(known)} "
        "of this checkout"
        for impl in requested
        if impl not in known
    ]
    if PALLAS in impls and jax.default_backend() == "cpu":
        notes.append(
            f"`{PALLAS}` runs in Pallas interpret mode on a CPU: its times say nothing about a GPU"
        )
    return impls, notes


def _short_error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:500]


def _bench_shape(label, shape, dtype, repeats, impls, errors: list[str]) -> list[dict]:
    """``bench_dconv.bench_shape``; if it fails with :data:`PALLAS` among ``impls``, the error is
    appended to ``errors`` and the shape is timed again without it."""
    try:
        return bench_dconv.bench_shape(label, shape, jnp.dtype(dtype), repeats, impls)
    except Exception as e:
        if PALLAS not in impls:
            raise
        errors.append(f"{dtype} {label}: `{PALLAS}` failed: {_short_error(e)}")
        _progress(errors[-1])
        rest = [impl for impl in impls if impl != PALLAS]
        return bench_dconv.bench_shape(label, shape, jnp.dtype(dtype), repeats, rest)


def dconv_row(dtype: str, label: str, shape: tuple, count: int, ops: list[dict]) -> dict:
    """A section-1 row from ``bench_dconv.bench_shape``'s ``ops`` (plain conv first):
    ``ratios`` (implementation → fwd+bwd time over the plain conv's), ``passed_by``
    (implementation → ratio ≤ :data:`DCONV_MAX_RATIO`), the ``best`` implementation, its
    ``ratio`` and ``passed``."""
    base = ops[0]["bwd_s"]
    ratios = {op["op"].removeprefix("D-Conv "): op["bwd_s"] / base for op in ops[1:]}
    best = min(ratios, key=ratios.get) if ratios else None
    ratio = ratios[best] if ratios else math.nan
    return dict(
        dtype=dtype,
        layers=label,
        shape=shape,
        count=count,
        ops=ops,
        ratios=ratios,
        passed_by={impl: r <= DCONV_MAX_RATIO for impl, r in ratios.items()},
        best=best,
        ratio=ratio,
        passed=bool(ratio <= DCONV_MAX_RATIO),
    )


def section_dconv(run: Run, record: dict, gate: Gate) -> None:
    """Fills ``record['rows']``: per dtype and distinct shape, :func:`dconv_row` of
    ``bench_dconv.bench_shape`` (plain conv and every available implementation: seconds and
    compiled bytes); ``record['notes']`` on skipped implementations, ``record['errors']`` on
    Pallas failures (the shape's other implementations are still timed)."""
    impls, notes = available_implementations(run.args.implementations)
    record.update(max_ratio=DCONV_MAX_RATIO, implementations=impls, notes=notes, errors=[], rows=[])
    record["skipped"] = []
    shapes = bench_dconv.distinct_shapes(_layer_shapes(run.args))
    for dtype in run.args.dtypes:
        for label, shape, count in shapes:
            if not gate.fits():
                record["skipped"].append(f"{dtype} {label}")
                continue
            gate.start()
            ops = _bench_shape(label, shape, dtype, run.args.repeats, impls, record["errors"])
            row = {**dconv_row(dtype, label, shape, count, ops), "unit_s": gate.lap()}
            record["rows"].append(row)
            ratios = ", ".join(f"{impl} {r:.2f}x" for impl, r in row["ratios"].items())
            _progress(f"dconv {dtype} {label}: {ratios}, {row['unit_s']:.0f} s")
            run.save()


def _notes(record: dict) -> list[str]:
    return [f"- {note}" for note in (*record.get("notes", []), *record.get("errors", []))]


def format_dconv(record: dict, a: dict) -> str:
    """Per dtype: the implementations side by side (fwd+bwd ratio to XLA's conv, best, verdict),
    then ``bench_dconv.format_preset_tables`` per implementation (fwd+bwd with verdicts, then
    forward); ``a``: the run's settings."""
    out = ["\n".join(_notes(record))] if _notes(record) else []
    for dtype in dict.fromkeys(r["dtype"] for r in record["rows"]):
        rows = [r for r in record["rows"] if r["dtype"] == dtype]
        impls = list(dict.fromkeys(i for r in rows for i in r["ratios"]))
        lines = [
            f"### {dtype}: fwd+bwd time / XLA conv's (target ≤ {record['max_ratio']}×)",
            "",
            "| layer(s) | shape (H×W, Cin→Cout) | plain ms | "
            + " | ".join(f"{impl} ms | {impl} ratio" for impl in impls)
            + " | best | verdict |",
            "|---|---|---:|" + "---:|---:|" * len(impls) + "---|---|",
        ]
        for r in rows:
            ms = {op["op"].removeprefix("D-Conv "): op["bwd_s"] * 1e3 for op in r["ops"]}
            cells = [
                f"{ms[i]:.1f} | {r['ratios'][i]:.2f}×" if i in r["ratios"] else "n/a | n/a"
                for i in impls
            ]
            lines.append(
                f"| {r['layers']} | {bench_dconv._shape_text(r['shape'])} "
                f"| {ms['plain conv']:.1f} | " + " | ".join(cells) + f" | {r['best']} "
                f"| {bench_dconv._verdict(r['passed'])} |"
            )
        out.append("\n".join(lines))
        title = f"{dtype}, {a['height']}×{a['width_px']} input"
        for impl in impls:
            results = [
                (r["layers"], r["shape"], r["count"], r["ops"]) for r in rows if impl in r["ratios"]
            ]
            out.append(
                bench_dconv.format_preset_tables(
                    title, results, impl, max_time_ratio=record["max_ratio"]
                )
            )
        counts = "; ".join(
            f"{impl} {sum(r['passed_by'].get(impl, False) for r in rows)}" for impl in impls
        )
        out.append(
            f"{dtype}: {sum(r['passed'] for r in rows)} of {len(rows)} shapes PASS with their "
            f"best implementation (fwd+bwd ≤ {DCONV_MAX_RATIO}×); per implementation: {counts}."
        )
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


def teacher_step_name(impl: str) -> str:
    """The step row of the teacher whose D-Convs run ``impl``."""
    return f"teacher {impl}"


STUDENT, STUDENT_VTCE = "student", "student+vtce"


def conv_flops(batch: int, height: int, width_px: int, network_width: float) -> float:
    """Model FLOPs of one student training step: 3 × (2 × multiply-adds) of every conv of
    DeepLab-VGG16 (plain convs, ``network_width``) on ``batch`` images of ``height``×``width_px``
    (forward, input gradient and weight gradient; pooling, losses and the optimiser left out).

    Traces the student's ``init`` with ``jax.eval_shape`` (nothing is computed) and reads every
    ``DepthAwareConv``'s output shape and kernel size."""
    from flax import linen as nn

    from drd_jax.layers import DepthAwareConv
    from drd_jax.models.deeplab_vgg16 import DeepLabVGG16

    total = 0

    def record(next_fun, args, kwargs, context):
        nonlocal total
        y = next_fun(*args, **kwargs)
        module = context.module
        if isinstance(module, DepthAwareConv) and context.method_name == "__call__":
            kh, kw = module.kernel_size
            total += 2 * math.prod(y.shape) * kh * kw * args[0].shape[-1]
        return y

    model = DeepLabVGG16(num_classes=CLASSES, width=network_width, depth_aware=False)
    image = jax.ShapeDtypeStruct((batch, height, width_px, 3), jnp.float32)
    with nn.intercept_methods(record):
        jax.eval_shape(model.init, jax.random.key(0), image)
    return 3.0 * total


def peak_tflops(device_kind: str, override: float = 0.0) -> float | None:
    """``override`` if > 0, else the :data:`PEAK_BF16_TFLOPS` entry matching ``device_kind``
    (None: unknown)."""
    if override > 0:
        return override
    return next((v for key, v in PEAK_BF16_TFLOPS if key.lower() in device_kind.lower()), None)


def train_steps(args, dtype: str, impls: list[str], errors: list[str]) -> list[dict]:
    """Step rows (``bench_train_step.step_rows`` plus memory) for ``dtype``: the student (plain
    convs: the same program whatever the implementation), the teacher once per implementation of
    ``impls``, and the student with VTCE (the frozen teacher's forward pass, ``fast`` unless
    ``impls`` lacks it, then the first of ``impls``, inside the step: Table 1's SN).

    Each program is compiled, then run once alone, after which the device's peak is read; then
    they are timed round-robin. A program that fails to compile or run (e.g. a Pallas teacher)
    is left out, its error appended to ``errors``; the student's failure is raised."""
    shape = dict(batch=args.batch, height=args.height, width_px=args.width_px)
    first = bench_train_step.random_batch(np.random.default_rng(0), **shape, classes=CLASSES)

    def config(mode):
        return bench_train_step.make_config(mode, width=args.network_width, dtype=dtype, **shape)

    vtce_impl = impls[0] if impls and "fast" not in impls else "fast"
    teacher_model = state_lib.make_model(config("teacher"), CLASSES)
    specs = {
        STUDENT: lambda: bench_train_step.compile_step(config("baseline"), first, classes=CLASSES)
    }
    for impl in impls:
        specs[teacher_step_name(impl)] = functools.partial(
            bench_train_step.compile_step,
            config("teacher"),
            first,
            classes=CLASSES,
            implementation=impl,
        )
    specs[STUDENT_VTCE] = lambda: bench_train_step.compile_step(
        config("baseline"),
        first,
        classes=CLASSES,
        teacher_params=jax.tree.map(jnp.copy, states[STUDENT].params),
        teacher_model=teacher_model.clone(conv_implementation=vtce_impl),
    )
    programs, states, memory = {}, {}, {}
    for name, compile_fn in specs.items():
        try:
            program = compile_fn()
            states[name] = bench_train_step.run_step(program, program.state, first)
        except Exception as e:
            if name == STUDENT:
                raise
            errors.append(f"{dtype} {name}: {_short_error(e)}")
            _progress(errors[-1])
            continue
        programs[name], memory[name] = program, _memory(program.compiled)
    batch = bench_train_step.random_batch(np.random.default_rng(1), **shape, classes=CLASSES)
    times = bench_train_step.time_steps(
        programs, states, batch, warmup=1, repeats=max(args.repeats, 1)
    )
    rows = bench_train_step.step_rows(programs, times, args.batch)
    return [
        {
            "dtype": dtype,
            **r,
            **memory[r["step"]],
            **({"teacher_forward": vtce_impl} if r["step"] == STUDENT_VTCE else {}),
        }
        for r in rows
    ]


def step_verdict(dtype: str, rows: list[dict], unit_s: float) -> dict:
    """Teacher / student step time per implementation (``ratios``), the ``best`` implementation,
    its ``ratio`` and ``passed`` (≤ :data:`TEACHER_MAX_RATIO`)."""
    ratios = {
        r["step"].removeprefix("teacher "): r["ratio_to_student"]
        for r in rows
        if r["step"].startswith("teacher ")
    }
    best = min(ratios, key=ratios.get) if ratios else None
    ratio = ratios[best] if ratios else math.nan
    return dict(
        dtype=dtype,
        ratios=ratios,
        best=best,
        ratio=ratio,
        passed=bool(ratio <= TEACHER_MAX_RATIO),
        unit_s=unit_s,
    )


def student_utilisation(rows: list[dict], flops: float, peak: float | None) -> dict | None:
    """The bfloat16 student step's model FLOP/s (``flops`` per step) against ``peak`` TFLOP/s:
    ``{'tflops', 'peak_tflops', 'fraction', 'passed'}`` (fraction and verdict None when the peak
    is unknown), or None without a bfloat16 student row."""
    row = next((r for r in rows if r["dtype"] == "bfloat16" and r["step"] == STUDENT), None)
    if row is None:
        return None
    tflops = flops / row["step_s"] / 1e12
    fraction = None if peak is None else tflops / peak
    passed = None if fraction is None else bool(fraction >= STUDENT_MIN_PEAK_FRACTION)
    return dict(tflops=tflops, peak_tflops=peak, fraction=fraction, passed=passed)


def table1_projection(rows: list[dict], args, dtype: str) -> list[dict]:
    """Projected wall hours of NYUv2 Table 1 (runs BL, TN, SN, one after another, on one device,
    ``experiments/configs/nyuv2.py``'s schedule) from the ``dtype`` step rows, per teacher
    implementation: each run's ``num_train_steps × batch_size`` images at the measured seconds per
    image (step time / ``args.batch``, the benchmark's batch) of its step (BL: the student, TN:
    the teacher, SN: the student with VTCE), plus the three compile times. Evaluation is left
    out. ``table1_shapes``: whether the benchmark ran that config's network width and crop
    (otherwise the hours are not Table 1's, and :func:`targets` gives no verdict)."""
    from experiments.configs import nyuv2

    c = nyuv2.get_config()
    batch = args.batch
    shapes = (args.network_width, args.height, args.width_px) == (c.width, *c.crop_size)
    images = c.num_train_steps * c.batch_size
    by_step = {r["step"]: r for r in rows if r["dtype"] == dtype}
    if STUDENT not in by_step or STUDENT_VTCE not in by_step:
        return []
    out = []
    for name, teacher in by_step.items():
        if not name.startswith("teacher "):
            continue
        parts = {"BL": by_step[STUDENT], "TN": teacher, "SN": by_step[STUDENT_VTCE]}
        seconds = sum(images * r["step_s"] / batch + r["compile_s"] for r in parts.values())
        out.append(
            dict(
                dtype=dtype,
                implementation=name.removeprefix("teacher "),
                steps_per_run=c.num_train_steps,
                config_batch=c.batch_size,
                bench_batch=batch,
                run_hours={k: images * r["step_s"] / batch / 3600 for k, r in parts.items()},
                hours=seconds / 3600,
                passed=bool(seconds / 3600 <= TABLE1_MAX_HOURS),
                table1_shapes=shapes,
                config_shapes=f"width {c.width:g}, {c.crop_size[0]}×{c.crop_size[1]}",
            )
        )
    return out


def section_train_step(run: Run, record: dict, gate: Gate) -> None:
    """Fills ``record['rows']`` (:func:`train_steps` per dtype), ``record['verdicts']``
    (:func:`step_verdict`), ``record['utilisation']`` (:func:`student_utilisation`) and
    ``record['table1']`` (:func:`table1_projection` per dtype)."""
    device = jax.devices()[0]
    device_stats = device.memory_stats() is not None
    impls, notes = available_implementations(run.args.implementations)
    flops = conv_flops(run.args.batch, run.args.height, run.args.width_px, run.args.network_width)
    peak = peak_tflops(device.device_kind, run.args.peak_bf16_tflops)
    record.update(
        max_ratio=TEACHER_MAX_RATIO,
        memory_source="device memory_stats peak_bytes_in_use"
        if device_stats
        else "XLA compiled memory_analysis (the device reports no memory_stats)",
        implementations=impls,
        notes=notes,
        errors=[],
        student_step_flops=flops,
        device_kind=device.device_kind,
        rows=[],
        verdicts=[],
        utilisation=None,
        table1=[],
        skipped=[],
    )
    for dtype in run.args.dtypes:
        if not gate.fits():
            record["skipped"].append(dtype)
            continue
        gate.start()
        rows = train_steps(run.args, dtype, impls, record["errors"])
        verdict = step_verdict(dtype, rows, gate.lap())
        record["rows"] += rows
        record["verdicts"].append(verdict)
        record["table1"] += table1_projection(rows, run.args, dtype)
        record["utilisation"] = student_utilisation(record["rows"], flops, peak)
        ratios = ", ".join(f"{impl} {r:.2f}x" for impl, r in verdict["ratios"].items())
        _progress(f"train_step {dtype}: teacher/student {ratios}, {verdict['unit_s']:.0f} s")
        run.save()


def _mib(value) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def _hours(value: float) -> str:
    return f"{value:.2f} h"


def format_train_step(record: dict, a: dict) -> str:
    """``bench_train_step.format_step_table`` per dtype, with the memory columns and verdicts,
    the student's FLOP utilisation and the projected Table 1 (``a``: the run's settings)."""
    out = [
        f"DeepLab-VGG16 width {a['network_width']:g}, {a['height']}×{a['width_px']}, batch "
        f"{a['batch']}, {CLASSES} classes, SGD; the student has plain convs (one program for "
        "every implementation), the teacher runs each D-Conv implementation, student+vtce runs "
        "the frozen teacher's forward pass inside the step (SN); peak memory: "
        f"{record['memory_source']}."
    ]
    out += ["\n".join(_notes(record))] if _notes(record) else []
    for verdict in record["verdicts"]:
        rows = [
            {**r, "device": _mib(r["device_peak_mib"]), "compiled": _mib(r["compiled_peak_mib"])}
            for r in record["rows"]
            if r["dtype"] == verdict["dtype"]
        ]
        extra = [("device peak MiB (high-water mark)", "device"), ("XLA peak MiB", "compiled")]
        out.append(f"#### {verdict['dtype']}\n\n" + bench_train_step.format_step_table(rows, extra))
        per_impl = ", ".join(
            f"{impl} {r:.2f}× {bench_dconv._verdict(r <= record['max_ratio'])}"
            for impl, r in verdict["ratios"].items()
        )
        out.append(
            f"teacher / student step time: {per_impl} (target ≤ {record['max_ratio']}×); best "
            f"{verdict['best']} {verdict['ratio']:.2f}×: {bench_dconv._verdict(verdict['passed'])}"
        )
    u = record.get("utilisation")
    if u is not None:
        if u["fraction"] is None:
            share = (
                f"peak unknown for device '{record['device_kind']}' (pass --peak_bf16_tflops): n/a"
            )
        else:
            share = (
                f"{u['fraction']:.1%} of the dense bfloat16 peak {u['peak_tflops']:g} TFLOP/s "
                f"(target ≥ {STUDENT_MIN_PEAK_FRACTION:.0%}): {bench_dconv._verdict(u['passed'])}"
            )
        out.append(
            f"student bfloat16 step: {record['student_step_flops'] / 1e9:.4g} model GFLOP "
            f"(3 × 2 × the convs' multiply-adds) per step = {u['tflops']:.4g} TFLOP/s; {share}"
        )
    if record.get("table1"):
        t0 = record["table1"][0]
        caveat = (
            ""
            if t0["table1_shapes"]
            else f" **Not Table 1's shapes** (nyuv2.py trains {t0['config_shapes']}): no verdict."
        )
        lines = [
            f"Projected NYUv2 Table 1 on this device (experiments/configs/nyuv2.py: "
            f"{t0['steps_per_run']} steps × batch {t0['config_batch']} per run; seconds per "
            f"image measured at batch {t0['bench_batch']}; BL + TN + SN one after another, plus "
            f"their compile times; evaluation left out; target ≤ {TABLE1_MAX_HOURS:g} h):" + caveat,
            "",
            "| dtype | teacher implementation | BL | TN | SN | total | verdict |",
            "|---|---|---:|---:|---:|---:|---|",
        ]
        for t in record["table1"]:
            h = t["run_hours"]
            lines.append(
                f"| {t['dtype']} | {t['implementation']} | {_hours(h['BL'])} "
                f"| {_hours(h['TN'])} | {_hours(h['SN'])} | {_hours(t['hours'])} "
                f"| {bench_dconv._verdict(t['passed']) if t['table1_shapes'] else 'n/a'} |"
            )
        out.append("\n".join(lines))
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

    dconv = {
        r["layers"]: r
        for r in run.report["sections"]["dconv"].get("rows", [])
        if r["dtype"] == "float32"
    }

    def each(row):
        row = {**row, "speedup": row["peer_s"] / row["ours_s"], "unit_s": gate.lap()}
        row.update(peer_vs_dconv(row, dconv.get(row["layers"])))
        record["rows"].append({**row, "passed": row["speedup"] >= PEER_MIN_SPEEDUP})
        _progress(f"peer {row['layers']}: {row['speedup']:.1f}x, {row['unit_s']:.0f} s")
        run.save()
        return gate.fits()

    gate.start()
    bench_peer_torch.bench_layers(torch, layers, run.args.repeats, device, each=each)
    done = {r["layers"] for r in record["rows"]}
    shapes = bench_dconv.distinct_shapes(layers)
    record["skipped"] = [label for label, _, _ in shapes if label not in done]


def peer_vs_dconv(row: dict, dconv_row: dict | None) -> dict:
    """Torch peer time over each implementation's fwd+bwd time in section 1 (float32, same
    shape, same device, another timing run): ``dconv_speedups`` and the ``best`` of them with
    ``best_passed`` (≥ :data:`PEER_MIN_SPEEDUP`); empty without a section-1 row."""
    if dconv_row is None:
        return {}
    speedups = {
        op["op"].removeprefix("D-Conv "): row["peer_s"] / op["bwd_s"] for op in dconv_row["ops"][1:]
    }
    if not speedups:
        return {}
    best = max(speedups, key=speedups.get)
    return dict(
        dconv_speedups=speedups,
        best=best,
        best_speedup=speedups[best],
        best_passed=bool(speedups[best] >= PEER_MIN_SPEEDUP),
    )


def format_peer_vs_dconv(rows: list[dict]) -> str:
    """Torch peer / each implementation of section 1 (float32), per shape, with the best."""
    rows = [r for r in rows if "dconv_speedups" in r]
    if not rows:
        return ""
    impls = list(dict.fromkeys(i for r in rows for i in r["dconv_speedups"]))
    lines = [
        f"Torch peer fwd+bwd time / each implementation's in section 1 (float32; target ≥ "
        f"{PEER_MIN_SPEEDUP:g}×):",
        "",
        "| layer(s) | " + " | ".join(f"torch / {i}" for i in impls) + " | best | verdict |",
        "|---|" + "---:|" * len(impls) + "---|---|",
    ]
    for r in rows:
        cells = [
            f"{r['dconv_speedups'][i]:.2f}×" if i in r["dconv_speedups"] else "n/a" for i in impls
        ]
        lines.append(
            f"| {r['layers']} | " + " | ".join(cells) + f" | {r['best']} "
            f"| {bench_dconv._verdict(r['best_passed'])} |"
        )
    return "\n".join(lines)


def format_peer(record: dict, a: dict) -> str:
    """The peer table with verdicts, the device and the numbers check."""
    precision = record["torch_matmul_precision"]
    return (
        f"torch {record['torch']} on `{record['device']}` (float32 matmul precision "
        f"'{precision}'{', i.e. TF32' if precision == 'high' else ''}); JAX on its default "
        "device, default precision. "
        f"Numbers check: {record['check']}\n\n"
        + bench_peer_torch.format_peer_table(record["rows"], record["min_speedup"])
        + (f"\n\n{extra}" if (extra := format_peer_vs_dconv(record["rows"])) else "")
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


def _target(target: str, value: str, passed: bool | None) -> dict:
    return dict(target=target, value=value, passed=passed)


def targets(report: dict) -> list[dict]:
    """The issue's targets computed from the sections' records: per entry ``target`` (text),
    ``value`` (what was measured, text) and ``passed`` (True, False, or None: not measured)."""
    sections = report["sections"]
    out = []
    dconv = sections["dconv"].get("rows", [])
    skipped = sections["dconv"].get("skipped", [])
    dtypes = report["header"]["settings"]["dtypes"] if "header" in report else []
    for dtype in dict.fromkeys([*dtypes, *(r["dtype"] for r in dconv)]):
        rows = [r for r in dconv if r["dtype"] == dtype]
        missing = sum(str(label).startswith(f"{dtype} ") for label in skipped)
        impls = list(dict.fromkeys(i for r in rows for i in r["ratios"]))
        counts = {i: sum(r["passed_by"].get(i, False) for r in rows) for i in impls}
        winners = [i for i in impls if counts[i] == len(rows)]
        value = ", ".join(f"{i} {counts[i]}/{len(rows)} shapes" for i in impls) or "not measured"
        passed = bool(winners) if rows else None
        if rows:
            value += f"; every shape by its best: {sum(r['passed'] for r in rows)}/{len(rows)}"
            value += f"; all shapes: {', '.join(winners) or 'none'}"
        if missing:
            value += f"; {missing} shapes not measured (time budget)"
            passed = None if winners or not rows else False
        out.append(
            _target(
                f"D-Conv fwd+bwd ≤ {DCONV_MAX_RATIO}× XLA's conv at every layer shape ({dtype})",
                value,
                passed,
            )
        )
    verdict = next(
        (v for v in sections["train_step"].get("verdicts", []) if v["dtype"] == "bfloat16"), None
    )
    value = "not measured (no bfloat16 train_step)"
    if verdict is not None:
        value = ", ".join(f"{i} {r:.2f}×" for i, r in verdict["ratios"].items())
    out.append(
        _target(
            f"teacher step ≤ {TEACHER_MAX_RATIO}× student's, bfloat16",
            value,
            None if verdict is None else verdict["passed"],
        )
    )
    peer = sections["peer"].get("rows", [])
    if peer:
        best = [r.get("best_speedup", r["speedup"]) for r in peer]
        passed = sum(s >= PEER_MIN_SPEEDUP for s in best)
        value = (
            f"best implementation per shape: {passed}/{len(peer)} shapes, "
            f"{min(best):.2f}–{max(best):.2f}×"
        )
        ok = passed == len(peer)
        if missing := len(sections["peer"].get("skipped", [])):
            value += f"; {missing} shapes not measured (time budget)"
            ok = None if ok else False
    else:
        value, ok = "not measured", None
    out.append(
        _target(
            f"≥ {PEER_MIN_SPEEDUP:g}× faster than the torch unfold peer (float32, every shape)",
            value,
            ok,
        )
    )
    u = sections["train_step"].get("utilisation")
    if u is None:
        value, ok = "not measured (no bfloat16 student step)", None
    elif u["fraction"] is None:
        value, ok = f"{u['tflops']:.4g} TFLOP/s; device peak unknown (--peak_bf16_tflops)", None
    else:
        value = f"{u['tflops']:.4g} of {u['peak_tflops']:g} TFLOP/s = {u['fraction']:.1%}"
        ok = u["passed"]
    out.append(
        _target(
            f"student bfloat16 step ≥ {STUDENT_MIN_PEAK_FRACTION:.0%} of the dense bf16 peak",
            value,
            ok,
        )
    )
    table1 = sections["train_step"].get("table1", [])
    ok = None
    if table1:
        best = min(table1, key=lambda t: t["hours"])
        value = "; ".join(f"{t['dtype']} {t['implementation']} {t['hours']:.2f} h" for t in table1)
        value += f"; best {best['dtype']} {best['implementation']}"
        if best["table1_shapes"]:
            ok = best["passed"]
        else:
            value += f" (not Table 1's shapes: nyuv2.py trains {best['config_shapes']})"
    else:
        value = "not measured"
    out.append(
        _target(
            f"NYUv2 Table 1 (BL, TN, SN) projected ≤ {TABLE1_MAX_HOURS:g} h on this device",
            value,
            ok,
        )
    )
    return out


def format_targets(items: list[dict]) -> str:
    """The targets as a Markdown table with PASS / **FAIL** / n/a."""
    lines = ["| target | measured | verdict |", "|---|---|---|"]
    for t in items:
        verdict = "n/a" if t["passed"] is None else bench_dconv._verdict(t["passed"])
        lines.append(f"| {t['target']} | {t['value']} | {verdict} |")
    return "\n".join(lines)


def _summary(name: str, record: dict) -> str:
    """One line on a finished section's results."""
    if name in ("dconv", "peer"):
        rows = record.get("rows", [])
        return f"{sum(r['passed'] for r in rows)} of {len(rows)} shapes PASS"
    if name == "train_step":
        return "; ".join(
            f"{v['dtype']} teacher {v['best']} {v['ratio']:.2f}× "
            f"{bench_dconv._verdict(v['passed'])}"
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
        "# GPU benchmark",
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
    lines += ["", "## Targets", "", format_targets(targets(report))]
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
