"""Benchmark: plain conv vs depth-aware conv (fast and reference), time and compiled memory.

Run ``python -m experiments.bench_dconv [--repeats 10] [--shapes conv1,fc6] [--dtype float32]``.

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
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from drd_jax.ops import depth_aware_conv

SHAPES = {
    # name: (N, H, W, Cin, Cout, k, dilation)
    "conv1": (2, 120, 160, 64, 64, 3, 1),
    "fc6": (2, 30, 40, 512, 1024, 3, 12),
}


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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per program")
    parser.add_argument(
        "--shapes", default=",".join(SHAPES), help=f"comma-separated subset of {list(SHAPES)}"
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument(
        "--implementations",
        default="fast,reference",
        help="comma-separated depth_aware_conv implementations to time",
    )
    args = parser.parse_args(argv)
    dtype = jnp.dtype(args.dtype)
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
    print(f"dtype {dtype.name}, repeats {args.repeats}; memory: XLA compiled memory_analysis")
    for name in args.shapes.split(","):
        if name not in SHAPES:
            raise ValueError(f"--shapes: unknown shape {name!r}, expected some of {list(SHAPES)}")
        rows = bench_shape(name, SHAPES[name], dtype, args.repeats, args.implementations.split(","))
        print()
        print(format_table(name, SHAPES[name], rows))


if __name__ == "__main__":
    main()
