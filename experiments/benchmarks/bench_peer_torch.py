"""Benchmark: our fast D-Conv against a PyTorch peer written like the Depth-aware CNN CPU ports.

Run ``python -m experiments.benchmarks.bench_peer_torch [--repeats 5]``. Needs PyTorch, an optional
benchmark-only dependency (``pip install torch==2.13.0``); without it the script says so and exits
with status 0.

The peer computes the same D-Conv the way the PyTorch ports of Depth-aware CNN do on the CPU:
``torch.nn.functional.unfold`` of the features ``(N, Cin, H, W)`` into columns
``(N, Cin·k², L)``, ``unfold`` of the depth map into ``(N, k², L)``,
``H = exp(−α·|D_neighbour − D_centre|)`` (centre: the middle tap), the columns multiplied by ``H``
(broadcast over Cin), one matmul with the weight ``(Cout, Cin·k²)``. Zero-padded neighbours add
nothing because the unfolded features are 0 there; the benchmark depth is valid everywhere, so the
rule ``H = 1`` for invalid pairs (docs/method.md) never matters. Ours is the jitted
``depth_aware_conv`` (``fast``) program of ``experiments.benchmarks.bench_dconv``. Both do forward
+ backward of ``sum(y · cotangent)`` w.r.t. the features and the weight, keep the loss value, and
include computing ``H`` from the depth map.

For every distinct depth-aware conv shape of full-width DeepLab-VGG16 at 240×320, batch 2
(``bench_dconv.VGG240_LAYERS``), the two are timed round-robin in one process (one run of each
per round, median of ``--repeats`` after a warm-up), torch with as many threads as CPU cores.
Before timing, both are checked to compute the same numbers on a small shape (float32).
The functions take a torch ``device`` (``--device``, default ``cpu``; on ``cuda`` every peer
run ends with ``torch.cuda.synchronize()``); ``experiments.benchmarks.bench_gpu`` runs them on the
GPU. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

from experiments.benchmarks import bench_dconv
from experiments.benchmarks.bench_dconv import VGG240_LAYERS, distinct_shapes

ALPHA = 8.3  # drd_jax.ops.DEFAULT_ALPHA (docs/method.md, D-Conv)
TORCH_HINT = "torch not installed; pip install torch==2.13.0 to run this benchmark"


def torch_dconv(torch, x, depth, weight, k, dilation, alpha=ALPHA):
    """Peer D-Conv: x (N, Cin, H, W), depth (N, 1, H, W), weight (Cout, Cin·k²) → (N, Cout, H, W).

    Stride 1, 'SAME' zero padding, odd ``k``.
    """
    f = torch.nn.functional
    n, cin, h, w = x.shape
    pad = dilation * (k // 2)
    cols = f.unfold(x, k, dilation=dilation, padding=pad)  # (N, Cin·k², L), channel-major
    dcols = f.unfold(depth, k, dilation=dilation, padding=pad)  # (N, k², L)
    centre = dcols[:, (k * k) // 2 : (k * k) // 2 + 1]
    sim = torch.exp(-alpha * (dcols - centre).abs())
    weighted = (cols.view(n, cin, k * k, -1) * sim.unsqueeze(1)).view(n, cin * k * k, -1)
    return torch.matmul(weight, weighted).view(n, -1, h, w)


def _torch_inputs(torch, x, depth, kernel, cotangent, device="cpu"):
    """Our NHWC / HWIO arrays in the peer's layouts (same values), on torch ``device``."""
    k, _, cin, cout = kernel.shape

    def tensor(a):
        return torch.from_numpy(np.array(a, order="C")).to(device)  # a writable copy

    tx = tensor(np.asarray(x).transpose(0, 3, 1, 2)).requires_grad_(True)
    tdepth = tensor(np.asarray(depth)[:, None])
    tw = tensor(np.asarray(kernel).transpose(3, 2, 0, 1).reshape(cout, cin * k * k))
    tcot = tensor(np.asarray(cotangent).transpose(0, 3, 1, 2))
    return tx, tdepth, tw.requires_grad_(True), tcot


def _torch_fwd_bwd(torch, tx, tdepth, tw, tcot, k, dilation):
    out = torch_dconv(torch, tx, tdepth, tw, k, dilation)
    loss = (out * tcot).sum()
    dx, dw = torch.autograd.grad(loss, (tx, tw))
    return loss, dx, dw


def _ours(shape, dtype=np.float32):
    """Our compiled fast D-Conv fwd+bwd program and its arguments (as in bench_dconv)."""
    x, depth, kernel, cotangent = bench_dconv._inputs(shape, dtype)
    _, fwd_bwd = bench_dconv._make_programs(bench_dconv._dconv("fast"), shape[-1])
    args = (x, depth, kernel, cotangent)
    return jax.jit(fwd_bwd).lower(*args).compile(), args


def check_same_numbers(torch, shape=(2, 11, 14, 5, 7, 3, 2), rtol=1e-4, atol=1e-5, device="cpu"):
    """Asserts that the peer (on torch ``device``) and our fast D-Conv agree (loss, dx, dW) on a
    small float32 shape, both at full float32 precision (no TF32)."""
    with jax.default_matmul_precision("highest"):
        compiled, (x, depth, kernel, cotangent) = _ours(shape)
    loss, (dx, dkernel) = jax.device_get(compiled(x, depth, kernel, cotangent))
    tx, tdepth, tw, tcot = _torch_inputs(torch, x, depth, kernel, cotangent, device)
    k, dilation = shape[5], shape[6]
    t_loss, t_dx, t_dw = _torch_fwd_bwd(torch, tx, tdepth, tw, tcot, k, dilation)
    cout, cin = shape[4], shape[3]
    t_dkernel = t_dw.cpu().numpy().reshape(cout, cin, k, k).transpose(2, 3, 1, 0)
    scale = float(np.abs(dx).max()), float(np.abs(dkernel).max())
    np.testing.assert_allclose(t_loss.item(), float(loss), rtol=rtol, atol=atol * abs(float(loss)))
    t_dx = t_dx.cpu().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(t_dx, dx, rtol=rtol, atol=atol * scale[0])
    np.testing.assert_allclose(t_dkernel, dkernel, rtol=rtol, atol=atol * scale[1])


def bench_shape(torch, shape, repeats, device="cpu"):
    """Median seconds (torch peer on ``device``, ours) for one float32 shape, timed round-robin."""
    compiled, args = _ours(shape)
    tx, tdepth, tw, tcot = _torch_inputs(torch, *args, device)
    k, dilation = shape[5], shape[6]
    cuda = torch.device(device).type == "cuda"

    def peer():
        _torch_fwd_bwd(torch, tx, tdepth, tw, tcot, k, dilation)
        if cuda:  # kernels run asynchronously there; torch CPU is synchronous
            torch.cuda.synchronize(device)

    return bench_dconv._time_round_robin([(peer, ()), (compiled, args)], repeats)


def bench_layers(torch, layers, repeats, device="cpu", *, each=None) -> list[dict]:
    """:func:`bench_shape` of every distinct shape of ``layers`` (name → shape): rows
    ``{layers, shape, count, peer_s, ours_s}`` (seconds). ``each(row)``, if given, sees every
    row as it comes and may return False to stop before the next shape."""
    rows = []
    for label, shape, count in distinct_shapes(layers):
        t0 = time.perf_counter()
        peer_s, ours_s = bench_shape(torch, shape, repeats, device)
        print(f"  {label}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        rows.append(dict(layers=label, shape=shape, count=count, peer_s=peer_s, ours_s=ours_s))
        if each is not None and each(rows[-1]) is False:
            break
    return rows


def format_peer_table(rows: list[dict], min_speedup: float | None = None) -> str:
    """Markdown table of :func:`bench_layers` rows with totals over the distinct shapes and over
    the network; with ``min_speedup``, a PASS/FAIL column (torch / ours ≥ ``min_speedup``)."""
    verdict = min_speedup is not None
    lines = [
        "| layer(s) | shape (H×W, Cin→Cout) | torch peer ms | ours (fast) ms | torch / ours |"
        + (f" ≥ {min_speedup:g}× |" if verdict else ""),
        "|---|---|---:|---:|---:|" + ("---|" if verdict else ""),
    ]

    def line(label, shape_text, peer, ours, digits):
        ratio = peer / ours
        end = f" {bench_dconv._verdict(ratio >= min_speedup)} |" if verdict else ""
        ms = f"{peer * 1e3:.{digits}f} | {ours * 1e3:.{digits}f}"
        return f"| {label} | {shape_text} | {ms} | {ratio:.2f}× |" + end

    total, network = np.zeros(2), np.zeros(2)
    for r in rows:
        times = np.asarray([r["peer_s"], r["ours_s"]])
        total += times
        network += r["count"] * times
        lines.append(line(r["layers"], bench_dconv._shape_text(r["shape"]), *times, 1))
    layers = sum(r["count"] for r in rows)
    lines.append(line("**sum over the distinct shapes**", "", *total, 0))
    lines.append(line(f"**network ({layers} layers, each once)**", "", *network, 0))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per program")
    parser.add_argument("--device", default="cpu", help="torch device of the peer (cpu, cuda)")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print(TORCH_HINT)
        return 0

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    print(
        f"jax {jax.__version__} (backend {jax.default_backend()}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads, {args.device}), float32, repeats {args.repeats}"
    )
    check_same_numbers(torch, (2, 11, 14, 5, 7, 3, 2), device=args.device)
    check_same_numbers(torch, (1, 9, 12, 4, 6, 3, 1), device=args.device)
    print("check: the torch peer and our fast D-Conv agree (loss, dx, dW; rtol 1e-4)")
    bench_dconv.check_vgg_layers()

    start = time.perf_counter()
    rows = bench_layers(torch, VGG240_LAYERS, args.repeats, args.device)
    print()
    print(format_peer_table(rows))
    print(f"\nbenchmark wall time {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
