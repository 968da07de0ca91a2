r"""Benchmark: one jitted training step of the teacher (D-Conv everywhere) against the student.

    python -m experiments.bench_train_step                        # full width, 240×320, batch 2
    python -m experiments.bench_train_step --width=0.25 --height=96 --width_px=128 --batch=8

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
Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from drd_jax import distillation, steps
from drd_jax import state as state_lib
from experiments.configs import base

_WIDTH = flags.DEFINE_float("width", 1.0, "Width multiplier of DeepLab-VGG16 (1 = full).")
_HEIGHT = flags.DEFINE_integer("height", 240, "Image height (pixels).")
_WIDTH_PX = flags.DEFINE_integer("width_px", 320, "Image width (pixels).")
_BATCH = flags.DEFINE_integer("batch", 2, "Batch size.")
_CLASSES = flags.DEFINE_integer("num_classes", 40, "Number of classes.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed steps per program (median reported).")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed steps per program after compiling.")
_LAYERS = flags.DEFINE_enum(
    "depth_aware_layers", "all", ["all", "block_first"], "Teacher's depth-aware layers."
)
_IMPL = flags.DEFINE_string("conv_implementation", "fast", "D-Conv implementation.")
_VTCE = flags.DEFINE_bool("with_vtce", False, "Also time the student step with VTCE.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")


def _config(mode: str):
    c = base.get_base_config()
    c.dataset = "synthetic_rgbd/default"  # only read by validate_config, never loaded here
    c.mode = mode
    c.width = _WIDTH.value
    c.batch_size = _BATCH.value
    c.crop_size = (_HEIGHT.value, _WIDTH_PX.value)
    c.depth_aware_layers = _LAYERS.value
    c.num_train_steps = 1000
    return c


def _batch(rng: np.random.Generator) -> dict:
    n, h, w = _BATCH.value, _HEIGHT.value, _WIDTH_PX.value
    return {
        "image": jnp.asarray(rng.normal(size=(n, h, w, 3)), jnp.float32),
        "depth": jnp.asarray(rng.uniform(0.5, 8.0, size=(n, h, w)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, _CLASSES.value, size=(n, h, w)), jnp.int32),
    }


def _program(mode: str, *, teacher_params=None, teacher_model=None):
    """(compiled step, state, teacher params, compile seconds) for ``mode``."""
    config = _config(mode)
    k = _CLASSES.value
    state = state_lib.create_train_state(config, jax.random.PRNGKey(0), num_classes=k)
    model = state_lib.make_model(config, k)
    if _DTYPE.value == "bfloat16" or _IMPL.value != "fast":
        model = model.clone(
            dtype=jnp.bfloat16 if _DTYPE.value == "bfloat16" else model.dtype,
            conv_implementation=_IMPL.value,
        )
        state = state.replace(apply_fn=model.apply)
    kd = None if teacher_model is None else distillation.make_distillation(config, teacher_model)
    step = steps.make_train_step(config, num_classes=k, num_train_images=1000, distillation=kd)
    jitted = jax.jit(step, donate_argnums=(0,))
    batch = _batch(np.random.default_rng(0))
    start = time.perf_counter()
    compiled = jitted.lower(state, batch, teacher_params).compile()
    return compiled, state, teacher_params, time.perf_counter() - start


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    rng = np.random.default_rng(1)
    batch = _batch(rng)
    programs = {"student": _program("baseline"), "teacher": _program("teacher")}
    if _VTCE.value:
        teacher_config = _config("teacher")
        teacher_model = state_lib.make_model(teacher_config, _CLASSES.value)
        teacher_params = jax.tree.map(jnp.copy, programs["teacher"][1].params)
        programs["student+vtce"] = _program(
            "baseline", teacher_params=teacher_params, teacher_model=teacher_model
        )
    states = {name: p[1] for name, p in programs.items()}
    times: dict[str, list[float]] = {name: [] for name in programs}
    for i in range(_WARMUP.value + _REPEATS.value):
        for name, (compiled, _, tparams, _) in programs.items():
            start = time.perf_counter()
            states[name], metrics = compiled(states[name], batch, tparams)
            jax.block_until_ready((states[name], metrics))
            if i >= _WARMUP.value:
                times[name].append(time.perf_counter() - start)
    base_time = statistics.median(times["student"])
    print(
        f"DeepLab-VGG16 width {_WIDTH.value:g}, {_HEIGHT.value}x{_WIDTH_PX.value}, batch "
        f"{_BATCH.value}, {_CLASSES.value} classes, {_DTYPE.value}, depth-aware layers "
        f"'{_LAYERS.value}', D-Conv '{_IMPL.value}', {jax.devices()[0].device_kind}"
    )
    print("| step | compile (s) | step time (s, median) | images/s | ratio to student |")
    print("|---|---:|---:|---:|---:|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(
            f"| {name} | {programs[name][3]:.1f} | {med:.3f} | {_BATCH.value / med:.2f} | "
            f"{med / base_time:.2f}× |"
        )


if __name__ == "__main__":
    app.run(main)
