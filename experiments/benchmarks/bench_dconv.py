"""Benchmark: plain conv vs depth-aware conv (fast and reference), time and compiled memory.

Run ``python -m experiments.benchmarks.bench_dconv [--repeats 10] [--shapes conv1,fc6]
[--dtype float32]``, or ``python -m experiments.benchmarks.bench_dconv --shapes vgg240`` for
every distinct depth-aware conv shape
of full-width DeepLab-VGG16 on a batch of two 240×320 images (one table row per shape,
with PASS/FAIL against fwd+bwd time ≤ 1.5× and peak memory ≤ 2× the plain conv; only ``fast`` is
compared unless ``--implementations`` says otherwise).

For each shape it jits, compiles and times (median of ``--repeats`` runs after one warm-up,
``block_until_ready``; the programs are timed round-robin, one run each per round, so that load
from other processes on a shared machine affects them alike):
  * ``fwd``: ``y = op(x, kernel)``;
  * ``fwd+bwd``: ``jax.value_and_grad`` of ``sum(y · cotangent)`` w.r.t. ``x`` and ``kernel``
    (the loss value keeps the forward pass in the compiled program, as in a training step);
and reads the peak memory XLA plans for each compiled program from
``jax.jit(f).lower(*args).compile().memory_analysis()``: ``argument + output + temp − alias``
bytes (or ``peak_memory_in_bytes`` where the backend reports a larger one; on CPU it omits
temps). Ratios are to the plain conv.
Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from drd_jax.errors import ConfigError
from drd_jax.ops import depth_aware_conv

SHAPES = {
    # name: (N, H, W, Cin, Cout, k, dilation)
    "conv1": (2, 120, 160, 64, 64, 3, 1),
    "fc6": (2, 30, 40, 512, 1024, 3, 12),
}

# Every depth-aware conv of full-width DeepLab-VGG16 (depth_aware_layers='all') on a batch of two
# 240×320 images: (N, H, W, Cin, Cout, k, dilation), in network order. pool1–pool3 (max 3×3/2,
# pad 1) halve the size: 240×320 → 120×160 → 60×80 → 30×40; pool4 and pool5 have stride 1; conv5_x
# use dilation 2, fc6 dilation 12. fc7 and fc8 are 1×1, i.e. plain convs, and not listed.
# check_vgg_layers() reads the same shapes off the model.
VGG240_INPUT = (2, 240, 320)
VGG240_LAYERS = {
    "conv1_1": (2, 240, 320, 3, 64, 3, 1),
    "conv1_2": (2, 240, 320, 64, 64, 3, 1),
    "conv2_1": (2, 120, 160, 64, 128, 3, 1),
    "conv2_2": (2, 120, 160, 128, 128, 3, 1),
    "conv3_1": (2, 60, 80, 128, 256, 3, 1),
    "conv3_2": (2, 60, 80, 256, 256, 3, 1),
    "conv3_3": (2, 60, 80, 256, 256, 3, 1),
    "conv4_1": (2, 30, 40, 256, 512, 3, 1),
    "conv4_2": (2, 30, 40, 512, 512, 3, 1),
    "conv4_3": (2, 30, 40, 512, 512, 3, 1),
    "conv5_1": (2, 30, 40, 512, 512, 3, 2),
    "conv5_2": (2, 30, 40, 512, 512, 3, 2),
    "conv5_3": (2, 30, 40, 512, 512, 3, 2),
    "fc6": (2, 30, 40, 512, 1024, 3, 12),
}
PRESETS = {"vgg240": VGG240_LAYERS}


def model_layer_shapes(
    batch: int, height: int, width: int, network_width: float = 1.0
) -> dict[str, tuple]:
    """Shapes of the depth-aware convs of DeepLab-VGG16 (full width unless ``network_width``, the
    model's width multiplier, says otherwise), read off the model.

    Traces the teacher's ``init`` with ``jax.eval_shape`` (nothing is computed) and records the
    input of every ``DepthAwareConv`` that is depth-aware: (N, H, W, Cin, Cout, k, dilation).
    """
    from flax import linen as nn

    from drd_jax.layers import DepthAwareConv
    from drd_jax.models.deeplab_vgg16 import DeepLabVGG16

    shapes = {}

    def record(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, DepthAwareConv) and context.method_name == "__call__":
            if module.depth_aware:
                k, d = module.kernel_size, module.kernel_dilation
                assert k[0] == k[1] and d[0] == d[1], (module.name, k, d)
                shapes[module.name] = (*args[0].shape, module.features, k[0], d[0])
        return next_fun(*args, **kwargs)

    model = DeepLabVGG16(
        num_classes=40, width=network_width, depth_aware=True, depth_aware_layers="all"
    )
    image = jax.ShapeDtypeStruct((batch, height, width, 3), jnp.float32)
    depth = jax.ShapeDtypeStruct((batch, height, width), jnp.float32)
    with nn.intercept_methods(record):
        jax.eval_shape(model.init, jax.random.key(0), image, depth)
    return shapes


def check_vgg_layers() -> None:
    """Raises AssertionError if VGG240_LAYERS differs from the shapes the model gives."""
    derived = model_layer_shapes(*VGG240_INPUT)
    assert derived == VGG240_LAYERS, f"VGG240_LAYERS is out of date, the model gives {derived}"


def distinct_shapes(layers: dict[str, tuple]) -> list[tuple[str, tuple, int]]:
    """``(label, shape, count)`` per distinct shape in first-seen order; label names its layers."""
    groups: dict[tuple, list[str]] = {}
    for name, shape in layers.items():
        groups.setdefault(shape, []).append(name)
    return [(", ".join(names), shape, len(names)) for shape, names in groups.items()]


def _plain_conv(x, depth, kernel, dilation):
    del depth
    return lax.conv_general_dilated(
        x,
        kernel,
        (1, 1),
        "SAME",
        rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        preferred_element_type=jnp.float32,
    ).astype(x.dtype)


def _dconv(implementation):
    def op(x, depth, kernel, dilation):
        return depth_aware_conv(
            x, depth, kernel, dilation=(dilation, dilation), implementation=implementation
        )

    return op


def _make_programs(op, dilation):
    def fwd(x, depth, kernel):
        return op(x, depth, kernel, dilation)

    def loss(x, kernel, depth, cotangent):
        y = op(x, depth, kernel, dilation)
        return jnp.sum(y.astype(jnp.float32) * cotangent)

    def fwd_bwd(x, depth, kernel, cotangent):
        # value_and_grad keeps the forward pass in the program (jax.grad alone lets XLA drop it,
        # since the gradient of this bilinear loss does not need y), as in a training step.
        return jax.value_and_grad(loss, argnums=(0, 1))(x, kernel, depth, cotangent)

    return fwd, fwd_bwd


def peak_bytes(compiled) -> int:
    """Peak bytes XLA plans for a compiled program (see module docstring).

    ``argument + output + temp − alias`` bytes from ``memory_analysis()``, or the backend's
    ``peak_memory_in_bytes`` when that is larger (on CPU it leaves out the temp buffer).
    """
    stats = compiled.memory_analysis()
    total = (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
    )
    return int(max(total, getattr(stats, "peak_memory_in_bytes", 0) or 0))


def _time_round_robin(programs, repeats: int) -> list[float]:
    """Median seconds per program; each round times every program once, so that load changes on a
    shared machine hit all programs alike."""
    for compiled, args in programs:
        jax.block_until_ready(compiled(*args))  # warm-up
    times = [[] for _ in programs]
    for _ in range(repeats):
        for slot, (compiled, args) in zip(times, programs, strict=True):
            start = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            slot.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def _inputs(shape, dtype, seed=0):
    n, h, w, cin, cout, k, _ = shape
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(n, h, w, cin)), dtype)
    kernel = jnp.asarray(rng.normal(size=(k, k, cin, cout)) / np.sqrt(k * k * cin), dtype)
    depth = jnp.asarray(rng.uniform(0.5, 5.0, size=(n, h, w)), jnp.float32)
    cotangent = jnp.asarray(rng.normal(size=(n, h, w, cout)), jnp.float32)
    return x, depth, kernel, cotangent


def bench_shape(name, shape, dtype, repeats, implementations):
    x, depth, kernel, cotangent = _inputs(shape, dtype)
    dilation = shape[-1]
    ops = {"plain conv": _plain_conv}
    ops.update({f"D-Conv {impl}": _dconv(impl) for impl in implementations})
    labels, programs, memory = [], [], []
    for label, op in ops.items():
        fwd, fwd_bwd = _make_programs(op, dilation)
        c_fwd = jax.jit(fwd).lower(x, depth, kernel).compile()
        c_bwd = jax.jit(fwd_bwd).lower(x, depth, kernel, cotangent).compile()
        labels.append(label)
        programs += [(c_fwd, (x, depth, kernel)), (c_bwd, (x, depth, kernel, cotangent))]
        memory.append((peak_bytes(c_fwd), peak_bytes(c_bwd)))
    times = _time_round_robin(programs, repeats)
    return [
        dict(op=label, fwd_s=times[2 * i], bwd_s=times[2 * i + 1], fwd_mem=m[0], bwd_mem=m[1])
        for i, (label, m) in enumerate(zip(labels, memory, strict=True))
    ]


def format_table(name, shape, rows) -> str:
    base = rows[0]
    n, h, w, cin, cout, k, d = shape
    lines = [
        f"### {name}: N={n}, {h}x{w}, {cin}->{cout}, {k}x{k}, dilation {d}",
        "",
        "| op | fwd ms | ratio | fwd+bwd ms | ratio "
        "| fwd peak MiB | ratio | fwd+bwd peak MiB | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['op']} | {r['fwd_s'] * 1e3:.1f} | {r['fwd_s'] / base['fwd_s']:.2f}x "
            f"| {r['bwd_s'] * 1e3:.1f} | {r['bwd_s'] / base['bwd_s']:.2f}x "
            f"| {r['fwd_mem'] / 2**20:.1f} | {r['fwd_mem'] / base['fwd_mem']:.2f}x "
            f"| {r['bwd_mem'] / 2**20:.1f} | {r['bwd_mem'] / base['bwd_mem']:.2f}x |"
        )
    return "\n".join(lines)


def _shape_text(shape) -> str:
    n, h, w, cin, cout, k, d = shape
    return f"{h}×{w}, {cin}→{cout}" + (f", dil {d}" if d > 1 else "")


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "**FAIL**"


def format_preset_tables(preset, results, impl, max_time_ratio=1.5, max_mem_ratio=2.0) -> str:
    """The preset's tables for one D-Conv implementation against the plain conv: time ≤
    ``max_time_ratio`` and peak memory ≤ ``max_mem_ratio`` times the plain conv's are the targets.

    ``results``: ``[(label, shape, count, rows)]`` with ``rows`` from ``bench_shape``. The first
    table is fwd+bwd (the targets), the second the forward alone (for analysis). Totals: over
    the distinct shapes (each once) and over the network (each layer once, i.e. weighted by count).
    """
    op = f"D-Conv {impl}"
    n = results[0][1][0]
    lines = [
        f"### {preset}: D-Conv `{impl}` vs plain conv, fwd+bwd, N={n}, 3×3 "
        f"(targets: time ≤ {max_time_ratio}×, peak ≤ {max_mem_ratio}×)",
        "",
        f"| layer(s) | shape (H×W, Cin→Cout) | plain ms | {impl} ms | ratio "
        f"| plain peak MiB | {impl} peak MiB | mem ratio | time | memory |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    totals = dict(plain=0.0, ours=0.0, plain_net=0.0, ours_net=0.0)
    fwd_lines = [
        f"### {preset}: forward alone, D-Conv `{impl}` vs plain conv",
        "",
        f"| layer(s) | plain fwd ms | {impl} fwd ms | ratio | plain fwd peak MiB "
        f"| {impl} fwd peak MiB | mem ratio | bwd share of {impl} fwd+bwd |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, shape, count, rows in results:
        base = rows[0]
        r = next(r for r in rows if r["op"] == op)
        t_ratio = r["bwd_s"] / base["bwd_s"]
        m_ratio = r["bwd_mem"] / base["bwd_mem"]
        lines.append(
            f"| {label} | {_shape_text(shape)} | {base['bwd_s'] * 1e3:.1f} "
            f"| {r['bwd_s'] * 1e3:.1f} | {t_ratio:.2f}× "
            f"| {base['bwd_mem'] / 2**20:.1f} | {r['bwd_mem'] / 2**20:.1f} | {m_ratio:.2f}× "
            f"| {_verdict(t_ratio <= max_time_ratio)} | {_verdict(m_ratio <= max_mem_ratio)} |"
        )
        fwd_lines.append(
            f"| {label} | {base['fwd_s'] * 1e3:.1f} | {r['fwd_s'] * 1e3:.1f} "
            f"| {r['fwd_s'] / base['fwd_s']:.2f}× | {base['fwd_mem'] / 2**20:.1f} "
            f"| {r['fwd_mem'] / 2**20:.1f} | {r['fwd_mem'] / base['fwd_mem']:.2f}× "
            f"| {1 - r['fwd_s'] / r['bwd_s']:.0%} |"
        )
        totals["plain"] += base["bwd_s"]
        totals["ours"] += r["bwd_s"]
        totals["plain_net"] += count * base["bwd_s"]
        totals["ours_net"] += count * r["bwd_s"]
    lines.append(
        f"| **sum over the distinct shapes** | | {totals['plain'] * 1e3:.0f} "
        f"| {totals['ours'] * 1e3:.0f} | {totals['ours'] / totals['plain']:.2f}× | | | | | |"
    )
    layers = sum(c for _, _, c, _ in results)
    lines.append(
        f"| **network ({layers} layers, each once)** | | {totals['plain_net'] * 1e3:.0f} "
        f"| {totals['ours_net'] * 1e3:.0f} | {totals['ours_net'] / totals['plain_net']:.2f}× "
        "| | | | | |"
    )
    return "\n".join(lines + [""] + fwd_lines)


def run_preset(preset, dtype, repeats, implementations):
    """Benchmarks every distinct shape of a preset; returns ``[(label, shape, count, rows)]``."""
    if preset == "vgg240":
        check_vgg_layers()
    results = []
    for label, shape, count in distinct_shapes(PRESETS[preset]):
        start = time.perf_counter()
        rows = bench_shape(label, shape, dtype, repeats, implementations)
        print(f"  {label}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        results.append((label, shape, count, rows))
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per program")
    parser.add_argument(
        "--shapes",
        default=",".join(SHAPES),
        help=f"comma-separated subset of {list(SHAPES)}, or a preset: {list(PRESETS)}",
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument(
        "--implementations",
        default=None,
        help="comma-separated depth_aware_conv implementations to time "
        "(default: fast,reference; fast for a preset)",
    )
    args = parser.parse_args(argv)
    dtype = jnp.dtype(args.dtype)
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
    print(f"dtype {dtype.name}, repeats {args.repeats}; memory: XLA compiled memory_analysis")
    if args.shapes in PRESETS:
        implementations = (args.implementations or "fast").split(",")
        start = time.perf_counter()
        results = run_preset(args.shapes, dtype, args.repeats, implementations)
        for impl in implementations:
            print()
            print(format_preset_tables(args.shapes, results, impl))
        print(f"\nbenchmark wall time {time.perf_counter() - start:.0f} s")
        return
    implementations = (args.implementations or "fast,reference").split(",")
    for name in args.shapes.split(","):
        if name not in SHAPES:
            raise ConfigError(
                f"--shapes: unknown shape {name!r}, expected some of {list(SHAPES)} "
                f"or one preset of {list(PRESETS)}"
            )
        rows = bench_shape(name, SHAPES[name], dtype, args.repeats, implementations)
        print()
        print(format_table(name, SHAPES[name], rows))


if __name__ == "__main__":
    main()
