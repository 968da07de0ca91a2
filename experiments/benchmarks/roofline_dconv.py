"""Roofline, on paper, of every depth-aware conv (D-Conv) implementation against XLA's conv.

Run ``python -m experiments.benchmarks.roofline_dconv --output_dir /tmp/roofline`` (a few minutes
on a 2-core CPU: it compiles every implementation at the real shapes) or ``--quick`` (tiny shapes,
seconds).

Layers: every distinct D-Conv shape of full-width DeepLab-VGG16 (``depth_aware_layers='all'``) on
a batch of 8 images of 480×640, read off the model (``bench_dconv.model_layer_shapes``), bfloat16
activations and weights, float32 similarity ``H`` (N, H', W', K = kh·kw). Two modes: ``fwd``
(``y``) and ``fwd+bwd`` (``y``, ``dx`` and ``dW`` for a given cotangent ``g``).

FLOPs and HBM bytes of:

* ``xla_conv`` (model): ``lax.conv_general_dilated`` at its ideal: forward reads x, the weights
  and writes y once, ``2·N·H'·W'·K·Cin·Cout`` FLOPs; backward = two more convs of the same FLOPs,
  ``dx`` (reads g, W, writes dx) and ``dW`` (reads x, g, writes dW).
* ``fused`` (model): the planned Pallas implicit GEMM. Output tiles of whole rows (about
  ``--tile_pixels`` pixels) × all of Cout; per tile it reads its rows of x plus the halo
  (``(k−1)·d`` rows, clipped to the image: zero padding is never read), its rows of ``H``, the
  whole kernel, and writes its rows of y once. FLOPs: the GEMM plus one multiply per (pixel, tap,
  Cin) for the ``H`` weighting. Backward: a ``dx`` kernel (reads g + halo, H, W once per tile,
  writes dx) and a ``dW`` kernel (reads x + halo, H, g, writes one float32 partial dW per tile).
* every implementation of ``drd_jax.ops.depth_conv`` (``fast`` with the path it picks,
  ``fast_tiles``, ``fast_offsets``, ``fast_patches``, ``checkpoint``, ``reference``) **as XLA
  lowers it on this machine's CPU**: ``jax.jit(f).lower(ShapeDtypeStructs).compile()`` at the real
  shapes (nothing is allocated), then the optimised HLO (``compiled.as_text()``) is walked
  (:func:`hlo_cost`): every instruction that runs at the top level (entry, while bodies × their
  known trip count) reads its operands and writes its result to memory; a fusion reads only the
  slices it takes of a sliced operand and an in-place dynamic-update-slice writes only its update.
  FLOPs are those of the dots and convolutions (``2·out·contracted``) plus one per element of the
  elementwise arithmetic. ``compiled.cost_analysis()`` is reported too (JSON): XLA's
  HloCostAnalysis, the same kind of count, but it counts a while body once, whatever its trip
  count (so it undercounts the loop implementations by up to K), and its conv FLOPs leave out taps
  that fall on the zero padding.
  A second count, ``fast (cached)``, leaves out the traffic of every buffer up to
  ``--cache_bytes`` (8 MiB: e.g. ``fast``'s row tiles), as if it stayed in a cache (the H200 has
  50 MB of L2): a bracket for what a cache could save, not a cache model.
  The implementation functions are lowered with ``H`` as an input, as in the fused model;
  computing ``H`` from depth (``depth_similarity``, common to all) is reported apart.

Limits, said where the numbers are shown: the HLO is XLA:CPU's; XLA:GPU fuses differently (e.g.
cuDNN/cuBLAS custom calls, other fusion decisions), which needs a GPU to compile. Predicted time =
``max(FLOPs / peak, bytes / bandwidth)``: a lower bound (perfect overlap, peak efficiency, no
launch overhead), for an H200 (990 TFLOP/s dense bf16, 4.8 TB/s) and a TPU v5e (197 TFLOP/s,
819 GB/s). Ratios are to ``xla_conv``'s bound on the same chip.

``--measure`` checks the byte model on this CPU: it measures the memory bandwidth (a large numpy
copy) and the bf16 matmul FLOP/s, times ``fast`` and XLA's conv at small shapes and compares the
measured time ratio with the ratio the model predicts from those two numbers.
Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import pathlib
import platform
import re
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from drd_jax.ops import depth_conv
from drd_jax.ops.windows import window_geometry

# name: (peak dense bf16 FLOP/s, HBM bytes/s)
CHIPS = {"H200": (990e12, 4.8e12), "TPU v5e": (197e12, 819e9)}
IMPLEMENTATIONS = ("fast", "fast_tiles", "fast_offsets", "fast_patches", "checkpoint", "reference")
MODES = ("fwd", "fwd+bwd")
FULL_INPUT = (8, 480, 640)
QUICK_INPUT = (1, 32, 32)
QUICK_WIDTH = 1 / 16
DEFAULT_TILE_PIXELS = 4096
# A materialised buffer up to this size is assumed to stay in a cache (H200: 50 MB of L2; this
# CPU: 32 MiB of L3) in the "cached" variant of the HLO byte count; a bracket, not a cache model.
DEFAULT_CACHE_BYTES = 8 * 2**20
CACHED = "fast (cached)"
ACT_BYTES = 2  # bfloat16 activations and weights
SIM_BYTES = 4  # float32 H
ACC_BYTES = 4  # float32 partial sums


@dataclasses.dataclass(frozen=True)
class Layer:
    """One distinct D-Conv shape: stride 1, 'SAME' padding, square kernel and dilation."""

    name: str
    count: int
    n: int
    h: int
    w: int
    cin: int
    cout: int
    k: int
    d: int

    @property
    def geometry(self):
        return window_geometry(
            (self.h, self.w), (self.k, self.k), strides=(1, 1), padding="SAME", dilation=self.d
        )

    @property
    def out_hw(self) -> tuple[int, int]:
        return self.geometry[4]

    @property
    def taps(self) -> int:
        return self.k * self.k

    @property
    def pixels(self) -> int:
        """Output pixels N·H'·W'."""
        return self.n * self.out_hw[0] * self.out_hw[1]


@dataclasses.dataclass(frozen=True)
class Cost:
    flops: float
    bytes: float

    def __add__(self, other):
        return Cost(self.flops + other.flops, self.bytes + other.bytes)


def vgg_layers(batch: int, height: int, width: int, network_width: float = 1.0) -> list[Layer]:
    """Distinct D-Conv shapes of DeepLab-VGG16, read off the model, in network order."""
    from experiments.benchmarks.bench_dconv import distinct_shapes, model_layer_shapes

    shapes = model_layer_shapes(batch, height, width, network_width)
    return [Layer(label, count, *shape) for label, shape, count in distinct_shapes(shapes)]


# ------------------------------------------------------------------------------------------
# Analytic models.
# ------------------------------------------------------------------------------------------


def conv_flops(layer: Layer) -> float:
    """``2·N·H'·W'·K·Cin·Cout``: one multiply-add per (output pixel, tap, Cin, Cout)."""
    return 2.0 * layer.pixels * layer.taps * layer.cin * layer.cout


def xla_conv_cost(layer: Layer, mode: str) -> Cost:
    """XLA's conv at its ideal: each of x, W, y (and g, dx, dW) moved once."""
    x = layer.n * layer.h * layer.w * layer.cin * ACT_BYTES
    wts = layer.taps * layer.cin * layer.cout * ACT_BYTES
    y = layer.pixels * layer.cout * ACT_BYTES
    fwd = Cost(conv_flops(layer), x + wts + y)
    if mode == "fwd":
        return fwd
    dx = Cost(conv_flops(layer), y + wts + x)  # reads g, W; writes dx
    dw = Cost(conv_flops(layer), x + y + wts)  # reads x, g; writes dW
    return fwd + dx + dw


def tile_rows(layer: Layer, tile_pixels: int) -> int:
    """Output rows per tile of the fused kernel: about ``tile_pixels`` pixels, at least 1 row."""
    return max(1, min(layer.out_hw[0], math.ceil(tile_pixels / layer.out_hw[1])))


def halo_rows_read(layer: Layer, rows: int) -> int:
    """Input rows one image's tiles read in all: each tile's window rows, clipped to the image."""
    (_, s, d, pads, (ho, _)) = layer.geometry
    total = 0
    for r0 in range(0, ho, rows):
        r1 = min(ho, r0 + rows)  # output rows [r0, r1)
        lo = r0 * s[0] - pads[0][0]
        hi = (r1 - 1) * s[0] - pads[0][0] + (layer.k - 1) * d[0]  # inclusive
        total += max(0, min(hi, layer.h - 1) - max(lo, 0) + 1)
    return total


def fused_cost(layer: Layer, mode: str, tile_pixels: int = DEFAULT_TILE_PIXELS) -> Cost:
    """The planned fused (Pallas implicit GEMM) kernels; see the module docstring."""
    rows = tile_rows(layer, tile_pixels)
    ho = layer.out_hw[0]
    tiles = layer.n * math.ceil(ho / rows)
    x_read = layer.n * halo_rows_read(layer, rows) * layer.w * layer.cin * ACT_BYTES
    sim = layer.pixels * layer.taps * SIM_BYTES
    wts = layer.taps * layer.cin * layer.cout * ACT_BYTES
    y = layer.pixels * layer.cout * ACT_BYTES
    x = layer.n * layer.h * layer.w * layer.cin * ACT_BYTES
    weighting = float(layer.pixels * layer.taps * layer.cin)  # H ⊙ x (or H ⊙ g·Wᵀ) multiplies
    fwd = Cost(conv_flops(layer) + weighting, x_read + sim + tiles * wts + y)
    if mode == "fwd":
        return fwd
    # dx: the transposed conv reads g with the same (mirrored) halo, in Cout channels.
    g_read = x_read // (layer.w * layer.cin) * layer.out_hw[1] * layer.cout
    dx = Cost(conv_flops(layer) + weighting, g_read + sim + tiles * wts + x)
    dw_partials = tiles * layer.taps * layer.cin * layer.cout * ACC_BYTES
    dw = Cost(conv_flops(layer) + weighting, x_read + sim + y + dw_partials + wts)
    return fwd + dx + dw


def similarity_cost(layer: Layer) -> Cost:
    """``depth_similarity``: read depth once, write H; ~6 FLOPs per element of H."""
    return Cost(
        6.0 * layer.pixels * layer.taps,
        layer.n * layer.h * layer.w * 4 + layer.pixels * layer.taps * SIM_BYTES,
    )


def roofline_seconds(cost: Cost, peak_flops: float, bandwidth: float) -> float:
    """Lower bound ``max(FLOPs / peak, bytes / bandwidth)``."""
    return max(cost.flops / peak_flops, cost.bytes / bandwidth)


def bound(cost: Cost, peak_flops: float, bandwidth: float) -> str:
    return "memory" if cost.bytes / bandwidth > cost.flops / peak_flops else "compute"


# ------------------------------------------------------------------------------------------
# Optimised HLO: what is materialised, and its FLOPs.
# ------------------------------------------------------------------------------------------

_DTYPE_BYTES = {
    "pred": 1, "s4": 1, "u4": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
    "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
    "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16,
}  # fmt: skip
_ARRAY = re.compile(r"([a-z][a-z0-9]*)\[([\d,]*)\]")
_HEADER = re.compile(r"^(ENTRY\s+)?%(\S+)\s.*\{\s*$")
_ELEMENTWISE = {
    "add", "subtract", "multiply", "divide", "maximum", "minimum", "exponential", "log", "abs",
    "negate", "sqrt", "rsqrt", "tanh", "power", "exponential-minus-one", "log-plus-one",
}  # fmt: skip
_FREE = {
    "parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all", "iota",
    "partition-id", "replica-id",
}  # fmt: skip


@dataclasses.dataclass
class Inst:
    name: str
    type: str
    opcode: str
    operands: list
    args: str  # the text between the opcode's parentheses
    attrs: str

    @property
    def nbytes(self) -> int:
        return type_bytes(self.type)

    @property
    def dims(self) -> list[int]:
        m = _ARRAY.search(self.type)
        return [int(v) for v in m.group(2).split(",") if v] if m else []


def type_bytes(text: str) -> int:
    """Bytes of an HLO type (a tuple: the sum of its arrays)."""
    total = 0
    for dtype, dims in _ARRAY.findall(text):
        total += _DTYPE_BYTES.get(dtype, 4) * math.prod(int(v) for v in dims.split(",") if v)
    return total


def _split_type(rest: str) -> tuple[str, str]:
    """Splits ``'<type> <opcode>(...'`` into the type and the rest (tuple types hold spaces)."""
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                return rest[: i + 1], rest[i + 1 :].lstrip()
    head, _, tail = rest.partition(" ")
    return head, tail


def _parse_inst(line: str) -> Inst | None:
    line = line.strip()
    if line.startswith("ROOT "):
        line = line[5:]
    if not line.startswith("%") or " = " not in line:
        return None
    name, _, rest = line.partition(" = ")
    type_, rest = _split_type(rest)
    opcode, _, rest = rest.partition("(")
    depth, end = 1, len(rest)
    for i, ch in enumerate(rest):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            end = i
            break
    operands = re.findall(r"%([\w.\-]+)", rest[:end])
    return Inst(name[1:], type_, opcode.strip(), operands, rest[:end], rest[end + 1 :])


def parse_hlo(text: str) -> tuple[dict[str, list[Inst]], str, dict[str, str]]:
    """``({computation: [instructions]}, entry name, {computation: root instruction name})``."""
    comps: dict[str, list[Inst]] = {}
    roots: dict[str, str] = {}
    entry, current = "", None
    for line in text.splitlines():
        if current is None:
            m = _HEADER.match(line)
            if m and "->" in line:
                current = m.group(2)
                comps[current] = []
                if m.group(1):
                    entry = current
            continue
        if line.strip() == "}":
            current = None
            continue
        inst = _parse_inst(line)
        if inst is not None:
            comps[current].append(inst)
            if line.strip().startswith("ROOT "):
                roots[current] = inst.name
    return comps, entry, roots


def _attr(inst: Inst, key: str) -> str | None:
    m = re.search(key + r"=%?([\w.\-]+)", inst.attrs)
    return m.group(1) if m else None


def _dims_attr(inst: Inst, key: str) -> list[int]:
    m = re.search(key + r"=\{([\d,]*)\}", inst.attrs)
    return [int(v) for v in m.group(1).split(",") if v] if m else []


def _inst_flops(inst: Inst, shapes: dict[str, Inst]) -> tuple[float, float]:
    """``(matmul FLOPs, other FLOPs)`` of one instruction (not recursing)."""
    out = math.prod(inst.dims) if inst.dims else 1
    if inst.opcode == "dot":
        lhs = shapes[inst.operands[0]].dims
        contracted = math.prod(lhs[i] for i in _dims_attr(inst, "lhs_contracting_dims"))
        return 2.0 * out * contracted, 0.0
    if inst.opcode == "convolution":
        rhs = shapes[inst.operands[1]].dims
        labels = re.search(r"dim_labels=\w+_(\w+)->", inst.attrs).group(1)
        return 2.0 * out * math.prod(rhs) / rhs[labels.index("o")], 0.0
    if inst.opcode in _ELEMENTWISE:
        return 0.0, float(out)
    if inst.opcode == "reduce":
        return 0.0, float(math.prod(shapes[inst.operands[0]].dims or [1]))
    return 0.0, 0.0


@dataclasses.dataclass
class HloCost:
    matmul_flops: float = 0.0
    other_flops: float = 0.0
    bytes_read: float = 0.0
    bytes_written: float = 0.0
    offchip_bytes: float = 0.0  # only buffers larger than ``cache_bytes``
    loops: list = dataclasses.field(default_factory=list)  # trip counts (None: unknown)
    traffic: dict = dataclasses.field(default_factory=dict)  # (name, type) -> bytes moved

    @property
    def flops(self) -> float:
        return self.matmul_flops + self.other_flops

    @property
    def bytes(self) -> float:
        return self.bytes_read + self.bytes_written


def hlo_cost(text: str, cache_bytes: int = 0) -> HloCost:
    """FLOPs and memory traffic of an optimised HLO module (see the module docstring).

    ``offchip_bytes`` counts only the traffic of buffers larger than ``cache_bytes`` (the others
    are assumed to stay in a cache), a rough lower estimate beside ``bytes`` (all traffic).
    """
    comps, entry, roots = parse_hlo(text)
    by_name = {c: {i.name: i for i in insts} for c, insts in comps.items()}
    cost = HloCost()

    def fused_flops(comp: str) -> tuple[float, float]:
        mm = other = 0.0
        for inst in comps[comp]:
            a, b = _inst_flops(inst, by_name[comp])
            mm, other = mm + a, other + b
            called = _attr(inst, "calls")
            if inst.opcode == "fusion" and called in comps:
                a, b = fused_flops(called)
                mm, other = mm + a, other + b
        return mm, other

    def follow(comp: str, name: str) -> Inst:
        inst = by_name[comp][name]
        while inst.opcode == "bitcast" and inst.operands:
            inst = by_name[comp][inst.operands[0]]
        return inst

    def fusion_traffic(inst: Inst, comp: str, called: str) -> tuple[list, list]:
        """``(reads, writes)``: ``(bytes moved, size of the buffer)`` per operand / output."""
        insts = comps[called]
        params = {int(i.args): i.name for i in insts if i.opcode == "parameter"}
        users: dict[str, list[Inst]] = {}
        for i in insts:
            for op in i.operands:
                users.setdefault(op, []).append(i)
        in_place = set()
        root = follow(called, roots[called])
        outputs = [root] if root.opcode != "tuple" else [follow(called, o) for o in root.operands]
        writes = []
        for out in outputs:
            if out.opcode == "dynamic-update-slice":
                writes.append((by_name[called][out.operands[1]].nbytes, out.nbytes))
                in_place.add(follow(called, out.operands[0]).name)
            else:
                writes.append((out.nbytes, out.nbytes))
        reads = []
        for index, operand in enumerate(inst.operands):
            full = by_name[comp][operand].nbytes
            param = params.get(index)
            if param is None or param in in_place:
                continue
            uses = _through_elementwise(param, users)
            if uses and all(u.opcode in ("slice", "dynamic-slice") for u in uses):
                itemsize = full / max(1, math.prod(by_name[comp][operand].dims or [1]))
                taken = sum(itemsize * math.prod(u.dims or [1]) for u in uses)
                reads.append((min(full, taken), full))
            else:
                reads.append((full, full))
        return reads, writes

    def walk(comp: str, times: float) -> None:
        shapes = by_name[comp]
        for inst in comps[comp]:
            op = inst.opcode
            if op in _FREE:
                continue
            if op == "while":
                m = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', inst.attrs)
                trips = int(m.group(1)) if m else None
                cost.loops.append(trips)
                walk(_attr(inst, "body"), times * (trips or 1))
                continue
            if op in ("call", "async-start") or (op == "conditional"):
                for key in ("to_apply", "calls"):
                    if _attr(inst, key) in comps:
                        walk(_attr(inst, key), times)
                continue
            called = _attr(inst, "calls")
            if op == "fusion" and called in comps:
                mm, other = fused_flops(called)
                reads, writes = fusion_traffic(inst, comp, called)
            else:
                mm, other = _inst_flops(inst, shapes)
                if op == "dynamic-update-slice":
                    update = shapes[inst.operands[1]].nbytes
                    reads, writes = [(update, update)], [(update, inst.nbytes)]
                elif op in ("slice", "dynamic-slice"):
                    reads = [(inst.nbytes, shapes[inst.operands[0]].nbytes)]
                    writes = [(inst.nbytes, inst.nbytes)]
                else:
                    sizes = [shapes[o].nbytes for o in inst.operands if o in shapes]
                    reads, writes = [(b, b) for b in sizes], [(inst.nbytes, inst.nbytes)]
            read = sum(moved for moved, _ in reads)
            written = sum(moved for moved, _ in writes)
            offchip = sum(moved for moved, size in reads + writes if size > cache_bytes)
            cost.matmul_flops += times * mm
            cost.other_flops += times * other
            cost.bytes_read += times * read
            cost.bytes_written += times * written
            cost.offchip_bytes += times * offchip
            key = (inst.name, inst.type.split("{")[0])
            cost.traffic[key] = cost.traffic.get(key, 0.0) + times * (read + written)

    walk(entry, 1.0)
    return cost


# Ops that read an operand element by element, so that a slice of their result reads only the
# matching elements of the operand.
_TRANSPARENT = {"bitcast", "convert", "copy", "reshape", "negate", "abs", "exponential"}


def _through_elementwise(name: str, users: dict[str, list[Inst]]) -> list[Inst]:
    """The users of ``name``, looking through bitcasts, converts and other one-to-one ops."""
    found = []
    for user in users.get(name, []):
        if user.opcode in _TRANSPARENT:
            found.extend(_through_elementwise(user.name, users))
        else:
            found.append(user)
    return found


# ------------------------------------------------------------------------------------------
# Lowering the implementations on this machine.
# ------------------------------------------------------------------------------------------


def fast_path(layer: Layer) -> str:
    """The path ``'fast'`` takes at this shape (``patches``, ``tiles``, ``tiles_dw_patches`` or
    ``offsets``), by ``depth_conv``'s own rules."""
    if layer.taps * layer.cin <= depth_conv.PATCH_MAX_FEATURES:
        return "patches"
    x = jax.ShapeDtypeStruct((layer.n, layer.h, layer.w, layer.cin), jnp.bfloat16)
    kernel_k = jax.ShapeDtypeStruct((layer.taps, layer.cin, layer.cout), jnp.bfloat16)
    return depth_conv._forward_strategy(x, kernel_k, layer.geometry)


def _structs(layer: Layer, dtype=jnp.bfloat16):
    ho, wo = layer.out_hw
    return (
        jax.ShapeDtypeStruct((layer.n, layer.h, layer.w, layer.cin), dtype),
        jax.ShapeDtypeStruct((layer.n, ho, wo, layer.taps), jnp.float32),
        jax.ShapeDtypeStruct((layer.taps, layer.cin, layer.cout), dtype),
        jax.ShapeDtypeStruct((layer.n, ho, wo, layer.cout), dtype),
    )


def program(layer: Layer, impl: str, mode: str):
    """``(f, args)``: ``f(x, sim, kernel_k[, g])`` for ``impl`` (or ``'xla_conv'``), bf16.

    ``fwd`` returns ``y``; ``fwd+bwd`` returns ``(y, dx, dW)`` for the cotangent ``g``.
    """
    k, _, d, pads, _ = layer.geometry
    x, sim, kernel_k, g = _structs(layer)

    def forward(x, sim, kernel_k):
        if impl == "xla_conv":
            y = lax.conv_general_dilated(
                x,
                kernel_k.reshape(*k, layer.cin, layer.cout),
                (1, 1),
                pads,
                rhs_dilation=d,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                preferred_element_type=jnp.float32,
            )
        else:
            fn = depth_conv._IMPLS[impl]
            y = fn(x, sim, kernel_k, geometry=layer.geometry, precision=None)
        return y.astype(x.dtype)

    if mode == "fwd":
        return forward, (x, sim, kernel_k)

    def forward_backward(x, sim, kernel_k, g):
        y, vjp = jax.vjp(lambda x, kk: forward(x, sim, kk), x, kernel_k)
        return (y, *vjp(g))

    return forward_backward, (x, sim, kernel_k, g)


def lowered_cost(
    layer: Layer, impl: str, mode: str, cache_bytes: int = DEFAULT_CACHE_BYTES
) -> dict:
    """Compiles ``impl`` at ``layer`` on this backend and reads its optimised HLO."""
    fn, args = program(layer, impl, mode)
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    seconds = time.perf_counter() - start
    cost = hlo_cost(compiled.as_text(), cache_bytes)
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis or {}
    busiest = sorted(cost.traffic.items(), key=lambda kv: -kv[1])[:5]
    largest = max(((type_bytes(t), t) for _, t in cost.traffic), default=(0, ""))
    return {
        "flops": cost.flops,
        "matmul_flops": cost.matmul_flops,
        "bytes": cost.bytes,
        "bytes_read": cost.bytes_read,
        "bytes_written": cost.bytes_written,
        "bytes_cached": cost.offchip_bytes,
        "cache_bytes": cache_bytes,
        "while_trip_counts": cost.loops,
        "largest_buffer": {"type": largest[1], "bytes": largest[0]},
        "most_traffic": [{"name": n, "type": t, "bytes": b} for (n, t), b in busiest],
        "xla_cost_analysis": {
            "flops": float(analysis.get("flops", -1.0)),
            "bytes accessed": float(analysis.get("bytes accessed", -1.0)),
        },
        "compile_seconds": seconds,
    }


# ------------------------------------------------------------------------------------------
# The check on this CPU.
# ------------------------------------------------------------------------------------------


def measure_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """Bytes/s of a large numpy copy (read + write counted), best of ``repeats``."""
    a = np.ones(megabytes * 2**20 // 4, np.float32)
    b = np.empty_like(a)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - start)
    return 2 * a.nbytes / best


def measure_matmul(size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a jitted bf16 matmul with float32 accumulation (as the D-Conv contractions)."""
    a = jnp.ones((size, size), jnp.bfloat16)
    f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    f(a, a).block_until_ready()
    return 2.0 * size**3 / _median_seconds(lambda: f(a, a), repeats)


def _median_seconds(call, repeats: int) -> float:
    return _round_robin_medians({"call": call}, repeats)["call"]


def _round_robin_medians(calls: dict, repeats: int) -> dict:
    """Median seconds of each call, timed in turns (one run of each per round), so that load
    from other processes on a shared machine affects them alike."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(call())
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def measure_layer(
    layer: Layer,
    mode: str,
    repeats: int,
    peak: float,
    bandwidth: float,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> dict:
    """Times 'fast' and XLA's conv at ``layer`` and compares with the model's ratio.

    The model's seconds use the FLOPs and bytes of the very programs timed (their XLA:CPU HLO),
    with this CPU's measured matmul FLOP/s and copy bandwidth; ``cached``: counting only the
    buffers larger than ``cache_bytes``.
    """
    out = {"layer": dataclasses.asdict(layer), "mode": mode, "fast_path": fast_path(layer)}
    rng = np.random.default_rng(0)
    models, cached, calls = {}, {}, {}
    for impl in ("xla_conv", "fast"):
        fn, structs = program(layer, impl, mode)
        args = [jnp.asarray(rng.random(s.shape, np.float32), s.dtype) for s in structs]
        compiled = jax.jit(fn).lower(*args).compile()
        jax.block_until_ready(compiled(*args))  # warm-up
        calls[impl] = functools.partial(compiled, *args)
        hlo = hlo_cost(compiled.as_text(), cache_bytes)
        models[impl] = Cost(hlo.flops, hlo.bytes)
        cached[impl] = roofline_seconds(Cost(hlo.flops, hlo.offchip_bytes), peak, bandwidth)
    seconds = _round_robin_medians(calls, repeats)
    ideal = xla_conv_cost(layer, mode)
    predicted = {k: roofline_seconds(c, peak, bandwidth) for k, c in models.items()}
    out.update(
        measured_ms={k: 1e3 * v for k, v in seconds.items()},
        measured_ratio=seconds["fast"] / seconds["xla_conv"],
        model_ms={k: 1e3 * v for k, v in predicted.items()},
        model_bound={k: bound(c, peak, bandwidth) for k, c in models.items()},
        model_ratio_to_ideal_conv=predicted["fast"] / roofline_seconds(ideal, peak, bandwidth),
        model_ratio_hlo=predicted["fast"] / predicted["xla_conv"],
        model_ms_cached={k: 1e3 * v for k, v in cached.items()},
        model_ratio_cached=cached["fast"] / cached["xla_conv"],
    )
    return out


def check_layers(quick: bool) -> list[Layer]:
    """Shapes of the CPU check: few channels (memory-bound for 'fast') and a VGG-like one."""
    if quick:
        return [Layer("probe", 1, 1, 16, 16, 8, 8, 3, 1)]
    return [
        Layer("probe", 1, 2, 120, 160, 16, 16, 3, 1),
        Layer("probe", 1, 1, 120, 160, 64, 64, 3, 1),
    ]


# ------------------------------------------------------------------------------------------
# The report.
# ------------------------------------------------------------------------------------------


def analyse(
    layers: list[Layer],
    implementations,
    tile_pixels: int,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    log=print,
) -> dict:
    """Every number of the report, as a JSON-ready dict."""
    result = {"chips": {k: {"peak_flops": p, "bandwidth": b} for k, (p, b) in CHIPS.items()}}
    rows = []
    for layer in layers:
        entry = {"layer": dataclasses.asdict(layer), "fast_path": fast_path(layer)}
        entry["similarity"] = dataclasses.asdict(similarity_cost(layer))
        for mode in MODES:
            costs = {
                "xla_conv": xla_conv_cost(layer, mode),
                "fused": fused_cost(layer, mode, tile_pixels),
            }
            lowered = {}
            for impl in ("xla_conv", *implementations):
                start = time.perf_counter()
                lowered[impl] = lowered_cost(layer, impl, mode, cache_bytes)
                log(f"  {layer.name} {mode} {impl}: {time.perf_counter() - start:.1f} s")
                if impl != "xla_conv":
                    costs[impl] = Cost(lowered[impl]["flops"], lowered[impl]["bytes"])
            if "fast" in lowered:
                costs[CACHED] = Cost(lowered["fast"]["flops"], lowered["fast"]["bytes_cached"])
            chips = {}
            for chip, (peak, bw) in CHIPS.items():
                base = roofline_seconds(costs["xla_conv"], peak, bw)
                chips[chip] = {
                    name: {
                        "seconds": roofline_seconds(c, peak, bw),
                        "ratio": roofline_seconds(c, peak, bw) / base,
                        "bound": bound(c, peak, bw),
                    }
                    for name, c in costs.items()
                }
            entry[mode] = {
                "costs": {k: dataclasses.asdict(c) for k, c in costs.items()},
                "cpu_hlo": lowered,
                "predicted": chips,
            }
        rows.append(entry)
    result["layers"] = rows
    result["totals"] = _totals(rows)
    return result


def _totals(rows) -> dict:
    """Whole-network predicted seconds per implementation (each shape × its layer count)."""
    totals = {}
    for mode in MODES:
        totals[mode] = {}
        for chip in CHIPS:
            sums: dict[str, float] = {}
            for row in rows:
                for name, p in row[mode]["predicted"][chip].items():
                    sums[name] = sums.get(name, 0.0) + row["layer"]["count"] * p["seconds"]
            totals[mode][chip] = {
                name: {"seconds": s, "ratio": s / sums["xla_conv"]} for name, s in sums.items()
            }
    return totals


def _shape_text(layer: dict) -> str:
    return (
        f"{layer['n']}×{layer['h']}×{layer['w']}, {layer['cin']}→{layer['cout']}, "
        f"{layer['k']}×{layer['k']}" + (f" d{layer['d']}" if layer["d"] > 1 else "")
    )


def _mb(value: float) -> str:
    return f"{value / 1e6:,.0f}" if value >= 1e7 else f"{value / 1e6:.2f}"


def _micros(predictions) -> str:
    return " / ".join(f"{1e6 * p['seconds']:.0f}" for p in predictions)


def format_report(result: dict, implementations) -> str:
    """Markdown tables of :func:`analyse`'s result."""
    rows = result["layers"]
    names = ["fused", *implementations] + ([CACHED] if "fast" in implementations else [])
    lines = [
        "### Layers, and XLA's conv at its ideal (bf16 x, W, y)",
        "",
        "| layers | N×H×W, Cin→Cout, k | fwd GFLOP | fwd MB | FLOP/B | bound H200 / v5e "
        "| fwd µs H200 / v5e | fwd+bwd µs H200 / v5e | `fast` path |",
        "|---|---|---:|---:|---:|---|---:|---:|---|",
    ]
    for row in rows:
        fwd = row["fwd"]["costs"]["xla_conv"]
        pf = [row["fwd"]["predicted"][c]["xla_conv"] for c in CHIPS]
        pb = [row["fwd+bwd"]["predicted"][c]["xla_conv"] for c in CHIPS]
        lines.append(
            f"| {row['layer']['name']} | {_shape_text(row['layer'])} | {fwd['flops'] / 1e9:.1f} "
            f"| {_mb(fwd['bytes'])} | {fwd['flops'] / fwd['bytes']:.0f} "
            f"| {' / '.join(p['bound'] for p in pf)} "
            f"| {_micros(pf)} | {_micros(pb)} | {row['fast_path']} |"
        )
    for mode in MODES:
        lines += [
            "",
            f"### {mode}: HBM bytes (MB): models, and the implementations as XLA:CPU lowers them",
            "",
            "| layers | xla_conv (ideal) | xla_conv (CPU HLO) | "
            + " | ".join(names)
            + " | `fast`: largest buffer |",
            "|---|" + "---:|" * (len(names) + 2) + "---|",
        ]
        for row in rows:
            costs = row[mode]["costs"]
            hlo = row[mode]["cpu_hlo"]
            big = hlo.get("fast", {}).get("largest_buffer", {})
            cells = [_mb(costs["xla_conv"]["bytes"]), _mb(hlo["xla_conv"]["bytes"])]
            cells += [_mb(costs[n]["bytes"]) for n in names]
            lines.append(
                f"| {row['layer']['name']} | " + " | ".join(cells) + f" | {big.get('type', '')} |"
            )
        lines += [
            "",
            f"### {mode}: predicted time ÷ XLA conv's, H200 / TPU v5e (roofline lower bounds)",
            "",
            "| layers | xla_conv µs | " + " | ".join(names) + " |",
            "|---|---:|" + "---:|" * len(names),
        ]
        for row in [*rows, None]:
            if row is None:
                pred = result["totals"][mode]
                label = "**network** (shape × layer count)"
            else:
                pred = row[mode]["predicted"]
                label = row["layer"]["name"]
            us = " / ".join(f"{1e6 * pred[c]['xla_conv']['seconds']:.0f}" for c in CHIPS)
            cells = [" / ".join(f"{pred[c][n]['ratio']:.2f}" for c in CHIPS) for n in names]
            lines.append(f"| {label} | {us} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_measurements(check: dict) -> str:
    lines = [
        f"This CPU: memory bandwidth {check['bandwidth'] / 1e9:.1f} GB/s (numpy copy), bf16 "
        f"matmul {check['matmul_flops'] / 1e9:.0f} GFLOP/s.",
        "",
        "| shape | mode | `fast` path | measured ms conv / fast | model ms conv / fast "
        "| model (cached) ms conv / fast | model bound conv / fast | measured ratio "
        "| model ratio | model ratio (cached) |",
        "|---|---|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for m in check["layers"]:
        ms, model, cached = m["measured_ms"], m["model_ms"], m["model_ms_cached"]
        lines.append(
            f"| {_shape_text(m['layer'])} | {m['mode']} | {m['fast_path']} "
            f"| {ms['xla_conv']:.1f} / {ms['fast']:.1f} "
            f"| {model['xla_conv']:.1f} / {model['fast']:.1f} "
            f"| {cached['xla_conv']:.1f} / {cached['fast']:.1f} "
            f"| {m['model_bound']['xla_conv']} / {m['model_bound']['fast']} "
            f"| {m['measured_ratio']:.2f} | {m['model_ratio_hlo']:.2f} "
            f"| {m['model_ratio_cached']:.2f} |"
        )
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default=None, help="writes roofline_dconv.{json,md} here")
    parser.add_argument(
        "--quick", action="store_true", help="tiny shapes: N=1, 32×32, width 1/16, two layers"
    )
    parser.add_argument("--measure", action="store_true", help="check the model on this CPU")
    parser.add_argument(
        "--repeats", type=int, default=11, help="timed runs per program (--measure)"
    )
    parser.add_argument(
        "--tile_pixels",
        type=int,
        default=DEFAULT_TILE_PIXELS,
        help="output pixels per tile of the fused kernel's model (rounded to whole rows)",
    )
    parser.add_argument(
        "--cache_bytes",
        type=int,
        default=DEFAULT_CACHE_BYTES,
        help="buffers up to this size count as cached in the '(cached)' byte counts",
    )
    parser.add_argument(
        "--implementations", default=",".join(IMPLEMENTATIONS), help="comma-separated subset"
    )
    args = parser.parse_args(argv)
    implementations = tuple(args.implementations.split(","))
    unknown = [i for i in implementations if i not in IMPLEMENTATIONS]
    if unknown:
        parser.error(f"--implementations: unknown {unknown}, expected some of {IMPLEMENTATIONS}")
    if args.tile_pixels < 1 or args.repeats < 1 or args.cache_bytes < 0:
        parser.error("--tile_pixels and --repeats must be >= 1, --cache_bytes >= 0")

    if args.quick:
        layers = vgg_layers(*QUICK_INPUT, QUICK_WIDTH)
        layers = [layers[1], layers[-1]]  # a 3×3 conv and the dilated fc6
    else:
        layers = vgg_layers(*FULL_INPUT)
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    start = time.perf_counter()
    result = {
        "setup": {
            "command": "python -m experiments.benchmarks.roofline_dconv "
            + " ".join(sys.argv[1:] if argv is None else argv),
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "cpu_count": os.cpu_count(),
            "machine": f"{_cpu_name()}; {platform.platform()}",
            "tile_pixels": args.tile_pixels,
            "cache_bytes": args.cache_bytes,
            "quick": args.quick,
        }
    }
    result.update(analyse(layers, implementations, args.tile_pixels, args.cache_bytes, log=log))
    report = format_report(result, implementations)
    if args.measure:
        bandwidth = measure_bandwidth(64 if args.quick else 256)
        peak = measure_matmul(512 if args.quick else 2048)
        result["cpu_check"] = {
            "bandwidth": bandwidth,
            "matmul_flops": peak,
            "layers": [
                measure_layer(layer, mode, args.repeats, peak, bandwidth, args.cache_bytes)
                for layer in check_layers(args.quick)
                for mode in MODES
            ],
        }
        report += "\n\n### The model on this CPU\n\n" + format_measurements(result["cpu_check"])
    result["wall_seconds"] = time.perf_counter() - start
    print(report)
    if args.output_dir:
        out = pathlib.Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "roofline_dconv.json").write_text(json.dumps(result, indent=1))
        (out / "roofline_dconv.md").write_text(report + "\n")
        print(f"\nwrote {out / 'roofline_dconv.json'} and {out / 'roofline_dconv.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
