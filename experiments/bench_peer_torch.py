"""Benchmark: our fast D-Conv against a PyTorch peer written like the Depth-aware CNN CPU ports.

Run ``python -m experiments.bench_peer_torch [--repeats 5]`` (issue 6). Needs PyTorch, an optional
benchmark-only dependency (``pip install torch==2.13.0``); without it the script says so and exits
with status 0.

The peer computes the same D-Conv the way the PyTorch ports of Depth-aware CNN do on the CPU:
``torch.nn.functional.unfold`` of the features ``(N, Cin, H, W)`` into columns
``(N, Cin·k², L)``, ``unfold`` of the depth map into ``(N, k², L)``,
``H = exp(−α·|D_neighbour − D_centre|)`` (centre: the middle tap), the columns multiplied by ``H``
(broadcast over Cin), one matmul with the weight ``(Cout, Cin·k²)``. Zero-padded neighbours add
nothing because the unfolded features are 0 there; the benchmark depth is valid everywhere, so the
spec's ``H = 1`` for invalid pairs never matters. Ours is the jitted ``depth_aware_conv`` (``fast``)
program of ``experiments.bench_dconv``. Both do forward + backward of ``sum(y · cotangent)`` w.r.t.
the features and the weight, keep the loss value, and include computing ``H`` from the depth map.

For every distinct depth-aware conv shape of full-width DeepLab-VGG16 at 240×320, batch 2
(``bench_dconv.VGG240_LAYERS``), the two are timed round-robin in one process (one run of each
per round, median of ``--repeats`` after a warm-up), torch with as many threads as CPU cores.
Before timing, both are checked to compute the same numbers on a small shape (float32).
Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

from experiments import bench_dconv
from experiments.bench_dconv import VGG240_LAYERS, distinct_shapes

ALPHA = 8.3  # drd_jax.ops.DEFAULT_ALPHA, the SPEC's value
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


def _torch_inputs(torch, x, depth, kernel, cotangent):
    """Our NHWC / HWIO arrays in the peer's layouts (same values)."""
    k, _, cin, cout = kernel.shape
    tx = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    tdepth = torch.from_numpy(np.asarray(depth)[:, None].copy())
    w = np.asarray(kernel).transpose(3, 2, 0, 1).reshape(cout, cin * k * k)
    tw = torch.from_numpy(w.copy()).requires_grad_(True)
    tcot = torch.from_numpy(np.asarray(cotangent).transpose(0, 3, 1, 2).copy())
    return tx, tdepth, tw, tcot


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


def check_same_numbers(torch, shape=(2, 11, 14, 5, 7, 3, 2), rtol=1e-4, atol=1e-5):
    """Asserts that the peer and our fast D-Conv agree (loss, dx, dW) on a small float32 shape."""
    compiled, (x, depth, kernel, cotangent) = _ours(shape)
    loss, (dx, dkernel) = jax.device_get(compiled(x, depth, kernel, cotangent))
    tx, tdepth, tw, tcot = _torch_inputs(torch, x, depth, kernel, cotangent)
    k, dilation = shape[5], shape[6]
    t_loss, t_dx, t_dw = _torch_fwd_bwd(torch, tx, tdepth, tw, tcot, k, dilation)
    cout, cin = shape[4], shape[3]
    t_dkernel = t_dw.numpy().reshape(cout, cin, k, k).transpose(2, 3, 1, 0)
    scale = float(np.abs(dx).max()), float(np.abs(dkernel).max())
    np.testing.assert_allclose(t_loss.item(), float(loss), rtol=rtol, atol=atol * abs(float(loss)))
    t_dx = t_dx.numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(t_dx, dx, rtol=rtol, atol=atol * scale[0])
    np.testing.assert_allclose(t_dkernel, dkernel, rtol=rtol, atol=atol * scale[1])


def bench_shape(torch, shape, repeats):
    """Median seconds (torch peer, ours) for one shape, timed round-robin."""
    compiled, args = _ours(shape)
    tx, tdepth, tw, tcot = _torch_inputs(torch, *args)
    k, dilation = shape[5], shape[6]

    def peer():
        _torch_fwd_bwd(torch, tx, tdepth, tw, tcot, k, dilation)  # torch CPU is synchronous

    return bench_dconv._time_round_robin([(peer, ()), (compiled, args)], repeats)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per program")
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
        f"({torch.get_num_threads()} threads), float32, repeats {args.repeats}"
    )
    check_same_numbers(torch, (2, 11, 14, 5, 7, 3, 2))
    check_same_numbers(torch, (1, 9, 12, 4, 6, 3, 1))
    print("check: the torch peer and our fast D-Conv agree (loss, dx, dW; rtol 1e-4)")
    bench_dconv.check_vgg_layers()

    start = time.perf_counter()
    lines = [
        "| layer(s) | shape (H×W, Cin→Cout) | torch peer ms | ours (fast) ms | torch / ours |",
        "|---|---|---:|---:|---:|",
    ]
    total = np.zeros(2)
    network = np.zeros(2)
    for label, shape, count in distinct_shapes(VGG240_LAYERS):
        t0 = time.perf_counter()
        times = np.asarray(bench_shape(torch, shape, args.repeats))
        print(f"  {label}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        total += times
        network += count * times
        lines.append(
            f"| {label} | {bench_dconv._shape_text(shape)} | {times[0] * 1e3:.1f} "
            f"| {times[1] * 1e3:.1f} | {times[0] / times[1]:.2f}× |"
        )
    lines.append(
        f"| **sum over the distinct shapes** | | {total[0] * 1e3:.0f} | {total[1] * 1e3:.0f} "
        f"| {total[0] / total[1]:.2f}× |"
    )
    layers = sum(c for _, _, c in distinct_shapes(VGG240_LAYERS))
    lines.append(
        f"| **network ({layers} layers, each once)** | | {network[0] * 1e3:.0f} "
        f"| {network[1] * 1e3:.0f} | {network[0] / network[1]:.2f}× |"
    )
    print()
    print("\n".join(lines))
    print(f"\nbenchmark wall time {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
