r"""Benchmark: one jitted training step of the teacher (D-Conv everywhere) against the student.

    python -m experiments.benchmarks.bench_train_step             # full width, 240×320, batch 2
    python -m experiments.benchmarks.bench_train_step --width=0.25 --height=96 --width_px=128 \
        --batch=8

Both steps are ``drd_jax.steps.train_step`` (SGD, momentum, weight decay: the paper's optimiser)
on the same random batch, jitted with the state donated, as ``train_and_evaluate`` runs them:

* ``teacher``: ``mode='teacher'``, depth-aware convs everywhere (``--depth_aware_layers``), CE;
* ``student``: ``mode='baseline'``: the same network with plain convs, CE (the step a
  parameter-sharing student runs when ``vtce_weight=0``);
* ``student+vtce`` (``--with_vtce``): the student step with the frozen teacher's forward pass and
  the VTCE loss, i.e. what BL+PS+VTCE costs per step.

Reports the compile time of each step (``lower`` + ``compile``, wall) and the median step time
over ``--repeats`` runs after ``--warmup`` runs, timed round-robin (one step of each program per
round) so that load from other processes affects them alike. Ratios are to the student.
The building blocks (:func:`make_config`, :func:`compile_step`, :func:`time_steps`,
:func:`step_rows`, :func:`format_step_table`) take explicit arguments;
``experiments.benchmarks.bench_gpu`` uses them too.
Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from drd_jax import distillation as distillation_lib
from drd_jax import state as state_lib
from drd_jax import steps
from experiments.configs import base

FLAGS = flags.FLAGS


class Program(NamedTuple):
    """A compiled train step, its first state, the teacher params it takes and its compile time
    (seconds, ``lower`` + ``compile``)."""

    compiled: Any
    state: Any
    teacher_params: Any
    compile_s: float


def make_config(
    mode: str,
    *,
    width: float,
    batch: int,
    height: int,
    width_px: int,
    depth_aware_layers: str = "all",
    dtype: str = "float32",
):
    """The base config for ``mode`` at a ``width`` multiplier, ``batch`` images of
    ``height``×``width_px`` pixels, computing in ``dtype`` ('float32' or 'bfloat16')."""
    c = base.get_base_config()
    c.dataset = "synthetic_rgbd/default"  # only read by validate_config, never loaded here
    c.mode = mode
    c.width = width
    c.batch_size = batch
    c.crop_size = (height, width_px)
    c.depth_aware_layers = depth_aware_layers
    c.dtype = dtype
    c.num_train_steps = 1000
    return c


def random_batch(rng: np.random.Generator, *, batch: int, height: int, width_px: int, classes: int):
    """``{'image': (N, H, W, 3) float32, 'depth': (N, H, W) float32 metres in [0.5, 8),
    'label': (N, H, W) int32 in [0, classes)}``."""
    n, h, w = batch, height, width_px
    return {
        "image": jnp.asarray(rng.normal(size=(n, h, w, 3)), jnp.float32),
        "depth": jnp.asarray(rng.uniform(0.5, 8.0, size=(n, h, w)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, classes, size=(n, h, w)), jnp.int32),
    }


def compile_step(
    config,
    batch: dict,
    *,
    classes: int,
    implementation: str = "fast",
    teacher_params=None,
    teacher_model=None,
) -> Program:
    """The jitted (state donated) ``train_step`` of ``config`` compiled for ``batch``'s shapes,
    with a fresh state; with ``teacher_model``, the student step with VTCE from it."""
    state = state_lib.create_train_state(config, jax.random.PRNGKey(0), num_classes=classes)
    if implementation != "fast":
        model = state_lib.make_model(config, classes).clone(conv_implementation=implementation)
        state = state.replace(apply_fn=model.apply)
    distillation = (
        None if teacher_model is None else distillation_lib.make_distillation(config, teacher_model)
    )
    step = steps.make_train_step(
        config, num_classes=classes, num_train_images=1000, distillation=distillation
    )
    jitted = jax.jit(step, donate_argnums=(0,))
    start = time.perf_counter()
    compiled = jitted.lower(state, batch, teacher_params).compile()
    return Program(compiled, state, teacher_params, time.perf_counter() - start)


def run_step(program: Program, state, batch: dict):
    """One step of ``program`` (``state`` is donated); returns the new state once it is ready."""
    state, metrics = program.compiled(state, batch, program.teacher_params)
    jax.block_until_ready((state, metrics))
    return state


def time_steps(
    programs: dict[str, Program], states: dict, batch: dict, *, warmup: int, repeats: int
) -> dict[str, list[float]]:
    """Seconds of each of ``repeats`` steps per program after ``warmup`` untimed ones, one step of
    each program per round. ``states`` (name → state) is updated in place."""
    times: dict[str, list[float]] = {name: [] for name in programs}
    for i in range(warmup + repeats):
        for name, program in programs.items():
            start = time.perf_counter()
            states[name] = run_step(program, states[name], batch)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def step_rows(programs: dict[str, Program], times: dict, batch: int) -> list[dict]:
    """Per program: ``step``, ``compile_s``, median ``step_s``, ``images_per_s`` and
    ``ratio_to_student`` (step time over the ``student`` program's)."""
    base_time = statistics.median(times["student"])
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append(
            dict(
                step=name,
                compile_s=programs[name].compile_s,
                step_s=med,
                images_per_s=batch / med,
                ratio_to_student=med / base_time,
            )
        )
    return rows


def format_step_table(rows: list[dict], extra: Sequence[tuple[str, str]] = ()) -> str:
    """Markdown table of :func:`step_rows`, plus ``extra`` columns ``(header, row key)`` whose
    values are preformatted text."""
    head = "| step | compile (s) | step time (s, median) | images/s | ratio to student |"
    lines = [
        head + "".join(f" {h} |" for h, _ in extra),
        "|---|---:|---:|---:|---:|" + "---:|" * len(extra),
    ]
    for r in rows:
        lines.append(
            f"| {r['step']} | {r['compile_s']:.1f} | {r['step_s']:.3f} | {r['images_per_s']:.2f} "
            f"| {r['ratio_to_student']:.2f}× |" + "".join(f" {r[k]} |" for _, k in extra)
        )
    return "\n".join(lines)


def _flag_config(mode: str):
    return make_config(
        mode,
        width=FLAGS.width,
        batch=FLAGS.batch,
        height=FLAGS.height,
        width_px=FLAGS.width_px,
        depth_aware_layers=FLAGS.depth_aware_layers,
        dtype=FLAGS.dtype,
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    shape = dict(batch=FLAGS.batch, height=FLAGS.height, width_px=FLAGS.width_px)
    k, impl = FLAGS.num_classes, FLAGS.conv_implementation
    first = random_batch(np.random.default_rng(0), **shape, classes=k)
    programs = {
        "student": compile_step(_flag_config("baseline"), first, classes=k, implementation=impl),
        "teacher": compile_step(_flag_config("teacher"), first, classes=k, implementation=impl),
    }
    if FLAGS.with_vtce:
        programs["student+vtce"] = compile_step(
            _flag_config("baseline"),
            first,
            classes=k,
            implementation=impl,
            teacher_params=jax.tree.map(jnp.copy, programs["teacher"].state.params),
            teacher_model=state_lib.make_model(_flag_config("teacher"), k),
        )
    batch = random_batch(np.random.default_rng(1), **shape, classes=k)
    states = {name: p.state for name, p in programs.items()}
    times = time_steps(programs, states, batch, warmup=FLAGS.warmup, repeats=FLAGS.repeats)
    print(
        f"DeepLab-VGG16 width {FLAGS.width:g}, {FLAGS.height}x{FLAGS.width_px}, batch "
        f"{FLAGS.batch}, {k} classes, {FLAGS.dtype}, depth-aware layers "
        f"'{FLAGS.depth_aware_layers}', D-Conv '{impl}', {jax.devices()[0].device_kind}"
    )
    print(format_step_table(step_rows(programs, times, FLAGS.batch)))


def define_flags() -> None:
    """The command line (defined only when run as a script, so importing this module is free)."""
    flags.DEFINE_float("width", 1.0, "Width multiplier of DeepLab-VGG16 (1 = full).")
    flags.DEFINE_integer("height", 240, "Image height (pixels).")
    flags.DEFINE_integer("width_px", 320, "Image width (pixels).")
    flags.DEFINE_integer("batch", 2, "Batch size.")
    flags.DEFINE_integer("num_classes", 40, "Number of classes.")
    flags.DEFINE_integer("repeats", 5, "Timed steps per program (median reported).")
    flags.DEFINE_integer("warmup", 1, "Untimed steps per program after compiling.")
    flags.DEFINE_enum(
        "depth_aware_layers", "all", ["all", "block_first"], "Teacher's depth-aware layers."
    )
    flags.DEFINE_string("conv_implementation", "fast", "D-Conv implementation.")
    flags.DEFINE_bool("with_vtce", False, "Also time the student step with VTCE.")
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")


if __name__ == "__main__":
    define_flags()
    app.run(main)
