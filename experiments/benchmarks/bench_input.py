"""Benchmark: training input pipeline throughput (examples/s) on this machine.

Run ``python -m experiments.benchmarks.bench_input [--data_dir D] [--crop 240 320] [--batch_size 8]
[--num_workers 0] [--num_threads 2] [--warmup 5] [--steps 40]``.

Without ``--data_dir`` the synthetic ``default`` set (120x160) is built into a temporary folder
first (a few seconds; not timed). The pipeline is ``drd_jax.input_pipeline.create_train_dataset``
exactly as training uses it: TFDS array_record read + PNG/zlib decode, random scale, pad-and-crop
to ``--crop``, flip, normalisation, batching. The scale range is the training default (0.75-1.75)
times ``--base_scale``, which defaults to crop height / stored height (2 for 240x320 crops of the
120x160 synthetic images, which are thus upscaled 1.5-3.5x). Throughput is measured over
``--steps`` batches after ``--warmup`` batches (which absorb worker start-up).
Not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import numpy as np

from drd_jax import input_pipeline
from tfds_builders.synthetic_rgbd import NUM_CLASSES


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default=None, help="TFDS data dir (default: build to tmp)")
    parser.add_argument("--dataset", default="synthetic_rgbd/default")
    parser.add_argument("--num_classes", type=int, default=NUM_CLASSES)
    parser.add_argument("--crop", type=int, nargs=2, default=(240, 320), metavar=("H", "W"))
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--num_threads", type=int, default=2)
    parser.add_argument("--base_scale", type=float, default=None)
    parser.add_argument("--color_jitter", type=float, default=0.0)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args(argv)

    tmp = None
    data_dir = args.data_dir
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_input_")
        data_dir = tmp.name
    t0 = time.perf_counter()
    source = input_pipeline.load_data_source(
        args.dataset, "train", data_dir=data_dir, prepare=args.data_dir is None
    )
    build_s = time.perf_counter() - t0
    stored_h = source[0]["image"].shape[0]
    base = args.base_scale if args.base_scale is not None else args.crop[0] / stored_h
    scale_range = (0.75 * base, 1.75 * base)

    ds = input_pipeline.create_train_dataset(
        source,
        batch_size=args.batch_size,
        crop_size=tuple(args.crop),
        num_classes=args.num_classes,
        seed=0,
        scale_range=scale_range,
        color_jitter=args.color_jitter,
        num_workers=args.num_workers,
        num_threads=args.num_threads,
    )
    it = iter(ds)
    for _ in range(args.warmup):
        next(it)
    t0 = time.perf_counter()
    checksum = 0.0
    for _ in range(args.steps):
        batch = next(it)
        checksum += float(np.mean(batch["image"][:, :1, :1]))  # touch the data
    elapsed = time.perf_counter() - t0
    if hasattr(it, "close"):
        it.close()
    result = {
        "dataset": args.dataset,
        "examples": len(source),
        "stored_hw": source[0]["image"].shape[:2],
        "crop": tuple(args.crop),
        "scale_range": tuple(round(s, 3) for s in scale_range),
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "num_threads": args.num_threads,
        "steps": args.steps,
        "seconds": round(elapsed, 3),
        "batches_per_s": round(args.steps / elapsed, 2),
        "examples_per_s": round(args.steps * args.batch_size / elapsed, 1),
        "build_s": round(build_s, 1),
        "cpu": platform.processor() or platform.machine(),
    }
    for key, value in result.items():
        print(f"{key}: {value}")
    if tmp is not None:
        tmp.cleanup()
    return result


if __name__ == "__main__":
    main()
