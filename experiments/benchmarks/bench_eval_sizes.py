r"""Benchmark: evaluation on a SUN RGB-D-like mix of four image sizes, per size vs one canvas.

    python -m experiments.benchmarks.bench_eval_sizes              # CPU: sizes ÷ 4, width 1/8
    python -m experiments.benchmarks.bench_eval_sizes --scale=1 --width=1 --images=40   # SUN's

The test split is ``--images`` synthetic scenes (``tfds_builders.synthetic_rgbd.scenes``) cycling
through SUN RGB-D's four sensor sizes (kv2 530×730, realsense 531×681, kv1 427×561, xtion
441×591), scaled by ``1 / --scale``. A DeepLab-VGG16 student or teacher (``--depth_aware``) with
random weights is evaluated with ``steps.eval_step`` and ``loop.evaluate``, as the trainer does:

* ``per size``: no padding, batch 1: one program compiled per image size (the trainer's
  former behaviour);
* ``padded, batch B``: every image padded into the largest size
  (``input_pipeline.eval_pad_size``), ``eval_step(padded=True)``: one program.

Each setting runs two passes over the split: the first includes compiling, the second is what
every later evaluation of a run costs. Reported: programs compiled (``jax.jit``'s cache size),
seconds per pass, and whether the confusion matrix equals the per-size one (the criterion: equal
pixel counts in every cell). Not a test: times depend on the machine.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from drd_jax import input_pipeline, loop
from drd_jax.models import DeepLabVGG16
from drd_jax.parallel import DataParallel
from drd_jax.steps import eval_step
from tfds_builders.synthetic_rgbd import NUM_CLASSES, scenes

# SUN RGB-D's sensors: (height, width) of their frames.
SUN_SIZES = {"kv2": (530, 730), "realsense": (531, 681), "kv1": (427, 561), "xtion": (441, 591)}

FLAGS = flags.FLAGS


def sun_like_source(num_images: int, scale: float) -> list[dict]:
    """``num_images`` synthetic scenes cycling through SUN RGB-D's sizes divided by ``scale``."""
    sizes = [(round(h / scale), round(w / scale)) for h, w in SUN_SIZES.values()]
    return [scenes.make_example(0, "test", i, *sizes[i % len(sizes)]) for i in range(num_images)]


def run_setting(model, params, source, *, pad_to, batch_size: int) -> dict:
    """Two evaluation passes of ``source``; their seconds, programs compiled and the matrix."""
    par = DataParallel("jit", 1)
    step = functools.partial(
        eval_step, model=model, num_classes=NUM_CLASSES, padded=pad_to is not None
    )
    compiled = jax.jit(step)
    ds = input_pipeline.create_eval_dataset(
        source, num_classes=NUM_CLASSES, batch_size=batch_size, pad_to=pad_to
    )
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        cm = loop.evaluate(compiled, params, ds, par, NUM_CLASSES)
        seconds.append(time.perf_counter() - start)
    return {"seconds": seconds, "programs": compiled._cache_size(), "confusion": cm}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    source = sun_like_source(FLAGS.images, FLAGS.scale)
    model = DeepLabVGG16(num_classes=NUM_CLASSES, width=FLAGS.width, depth_aware=FLAGS.depth_aware)
    params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.ones((1, 32, 32)))
    params = params["params"]
    start = time.perf_counter()
    pad_to = input_pipeline.eval_pad_size(source)
    scan = time.perf_counter() - start
    sizes = sorted({tuple(ex["depth"].shape) for ex in source})
    print(
        f"{len(source)} images in sizes {sizes}; canvas {pad_to} (size scan {scan:.2f} s); "
        f"{'teacher' if FLAGS.depth_aware else 'student'} width {FLAGS.width:g}; "
        f"{jax.devices()[0].device_kind}, jax {jax.__version__}"
    )
    settings = {"per size, batch 1": run_setting(model, params, source, pad_to=None, batch_size=1)}
    for b in map(int, FLAGS.batch_sizes):
        name = f"padded, batch {b}"
        settings[name] = run_setting(model, params, source, pad_to=pad_to, batch_size=b)
    reference = settings["per size, batch 1"]
    print("| setting | programs compiled | pass 1 s (with compiling) | pass 2 s | same matrix |")
    print("|---|---:|---:|---:|---|")
    for name, r in settings.items():
        same = np.array_equal(r["confusion"], reference["confusion"])
        print(
            f"| {name} | {r['programs']} | {r['seconds'][0]:.1f} | {r['seconds'][1]:.1f} "
            f"| {'yes' if same else '**no**'} |"
        )


def define_flags() -> None:
    """The command line (defined only when run as a script, so importing this module is free)."""
    flags.DEFINE_float("scale", 4.0, "Divide SUN RGB-D's sizes by this.")
    flags.DEFINE_integer("images", 24, "Test images (cycling through the four sizes).")
    flags.DEFINE_float("width", 0.125, "Width multiplier of DeepLab-VGG16.")
    flags.DEFINE_bool("depth_aware", False, "Evaluate a teacher (D-Conv) instead.")
    flags.DEFINE_list("batch_sizes", ["1", "4"], "Batch sizes of the padded settings.")


if __name__ == "__main__":
    define_flags()
    app.run(main)
