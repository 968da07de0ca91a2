"""Benchmark: what verifying every record of NYUv2 and SUN RGB-D before step 0 costs.

Run ``python -m experiments.benchmarks.bench_verify_data [--records 240] [--shards 2] [--repeats 5]
[--decode 24] [--workdir D] [--shared_data ../shared/data]``.

The full datasets are not needed (nor present here): the script writes ``--records`` records of
each dataset's real size and encoding, in ``--shards`` array_record files exactly as TFDS writes
them (``group_size:1``), and times ``drd_jax.input_pipeline.verify_records`` on them, the check
the trainer runs before step 0 (every record's stored bytes read, each chunk's hash checked). The
records are serialized with the builders' own features (``nyuv2/40``, ``sunrgbd/bfx``) from the
real samples in ``--shared_data`` (read there, never copied), varied per record by rolling them
sideways so that no two records are equal (PNG/zlib sizes stay realistic):

* NYUv2 (480x640): the real frame #1 of ``nyuv2_sample`` (RGB, dense depth, 40-class label);
  ``raw_depth``, which the sample lacks, is the dense depth with the void-labelled pixels set
  to 0 (holes).
* SUN RGB-D (530x730, Kinect v2, its largest common size): the six real RGB + ``depth_bfx``
  pairs of ``sunrgbd_unlabeled_samples``, decoded as the builder does; they have no labels, so
  ``label`` is NYUv2's 40-class label resized (nearest) to 530x730 and clipped to 0..37.

Each timing is repeated ``--repeats`` times (mean and sd) in two states: ``warm`` (the files in
the page cache, as right after a build or a previous run) and ``cold`` (their pages evicted with
``posix_fadvise(DONTNEED)`` before each repeat: read from the disk). Also timed, for
comparison, decoding ``--decode`` records fully (PNG + zlib, what reading every record through
the data source would cost). Seconds per record are extrapolated linearly to the full datasets
(NYUv2 1449 records, SUN RGB-D 10335); SUN RGB-D's kv1/realsense/xtion frames are smaller than
kv2's, so its extrapolation is an upper bound. Prints a table and, with ``--json``, writes the
numbers. Not a test: numbers depend on the machine, its disk and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
import PIL.Image

from drd_jax import input_pipeline

FULL_RECORDS = {"nyuv2": 1449, "sunrgbd": 10335}  # train + test


def _shared_data(path: str | None) -> pathlib.Path:
    root = pathlib.Path(__file__).resolve().parents[2]
    path = pathlib.Path(
        path or os.environ.get("DRD_SHARED_DATA") or root.parent / "shared" / "data"
    )
    if not (path / "nyuv2_sample").is_dir() or not (path / "sunrgbd_unlabeled_samples").is_dir():
        sys.exit(
            f"error: --shared_data {path}: expected nyuv2_sample/ and sunrgbd_unlabeled_samples/"
        )
    return path


def _nyu_sample(shared: pathlib.Path) -> dict[str, np.ndarray]:
    d = shared / "nyuv2_sample" / "NYUDepthv2"
    image = np.asarray(PIL.Image.open(d / "RGB" / "0.jpg").convert("RGB"))
    depth = np.load(d / "Depth" / "0.npy").astype(np.float32)
    label = np.asarray(PIL.Image.open(d / "Label" / "0.png")).astype(np.uint8)
    return {
        "image": image,
        "depth": depth,
        "raw_depth": np.where(label > 0, depth, 0),
        "label": label,
    }


def _nyu_examples(shared: pathlib.Path):
    base = _nyu_sample(shared)

    def example(i: int) -> dict:
        roll = {k: np.roll(v, 7 * i, axis=1) for k, v in base.items()}
        return {
            "image": PIL.Image.fromarray(roll["image"]),
            "depth": roll["depth"],
            "raw_depth": roll["raw_depth"].astype(np.float32),
            "label": roll["label"],
            "index": i + 1,
            "scene": f"bedroom_{i:04d}",
            "scene_type": "bedroom",
        }

    return example


def _sun_examples(shared: pathlib.Path):
    from tfds_builders.sunrgbd.sunrgbd_dataset_builder import decode_depth

    d = shared / "sunrgbd_unlabeled_samples" / "SUNRGBD"
    pairs = [
        (d / "train" / "color" / f"{k:04d}.png", d / "train_depth" / f"{k:06d}.png")
        for k in (1, 2, 3)
    ] + [
        (d / "val" / "color" / f"{k:04d}.png", d / "val_depth" / f"{k:06d}.png")
        for k in (2839, 2840, 2841)
    ]
    samples = [
        (
            np.asarray(PIL.Image.open(rgb).convert("RGB")),
            decode_depth(np.asarray(PIL.Image.open(depth))),
        )
        for rgb, depth in pairs
    ]
    h, w = samples[0][1].shape
    nyu_label = PIL.Image.open(shared / "nyuv2_sample" / "NYUDepthv2" / "Label" / "0.png")
    label = np.minimum(np.asarray(nyu_label.resize((w, h), PIL.Image.NEAREST)), 37).astype(np.uint8)

    def example(i: int) -> dict:
        image, depth = samples[i % len(samples)]
        shift = 7 * (i // len(samples))
        return {
            "image": PIL.Image.fromarray(np.roll(image, shift, axis=1)),
            "depth": np.roll(depth, shift, axis=1),
            "label": np.roll(label, shift, axis=1),
            "index": i + 1,
            "scene": f"kv2/kinect2data/{i:06d}",
            "sensor": "kv2",
        }

    return example


def _features(name: str, tmp: pathlib.Path):
    import tfds_builders

    cls = {"nyuv2": tfds_builders.nyuv2.Builder, "sunrgbd": tfds_builders.sunrgbd.Builder}[name]
    config = {"nyuv2": "40", "sunrgbd": "bfx"}[name]
    return cls(config=config, data_dir=str(tmp / "unused")).info.features


def _write(name, features, example, records: int, shards: int, out: pathlib.Path):
    """``records`` serialized examples in ``shards`` array_record files (TFDS's options)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    paths, per_shard = [], -(-records // shards)
    for s in range(shards):
        path = out / f"{name}-train.array_record-{s:05d}-of-{shards:05d}"
        writer = ArrayRecordWriter(str(path), "group_size:1")  # as tfds' ArrayRecordFileAdapter
        for i in range(s * per_shard, min((s + 1) * per_shard, records)):
            writer.write(features.serialize_example(example(i)))
        writer.close()
        paths.append(path)
    return paths


class _Source:
    """The two things ``verify_records`` reads of a TFDS data source: ``len`` and the
    array_record source with its per-file read instructions."""

    def __init__(self, paths):
        from array_record.python.array_record_data_source import ArrayRecordDataSource

        self.data_source = ArrayRecordDataSource([str(p) for p in paths])

    def __len__(self) -> int:
        return len(self.data_source)

    def __getitem__(self, index):
        return self.data_source[index]


def _evict(paths) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _stats(values) -> dict:
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "runs": list(values),
    }


def bench_dataset(name, shared, args, out: pathlib.Path) -> dict:
    features = _features(name, out)
    example = {"nyuv2": _nyu_examples, "sunrgbd": _sun_examples}[name](shared)
    t0 = time.perf_counter()
    paths = _write(name, features, example, args.records, args.shards, out)
    write_s = time.perf_counter() - t0
    source = _Source(paths)
    nbytes_files = sum(p.stat().st_size for p in paths)
    result = {
        "records": len(source),
        "shards": len(paths),
        "file_bytes": nbytes_files,
        "bytes_per_record": nbytes_files / len(source),
        "write_s": write_s,
        "full_records": FULL_RECORDS[name],
    }
    for threads in args.threads:
        for state in ("warm", "cold"):
            times = []
            input_pipeline.verify_records(source, num_threads=threads)  # warms the cache
            for _ in range(args.repeats):
                if state == "cold":
                    _evict(paths)
                t0 = time.perf_counter()
                input_pipeline.verify_records(source, num_threads=threads)
                times.append(time.perf_counter() - t0)
            s = _stats(times)
            per_record = s["mean"] / len(source)
            s.update(
                per_record_ms=1e3 * per_record,
                per_record_sd_ms=1e3 * s["sd"] / len(source),
                mb_per_s=nbytes_files / 1e6 / s["mean"],
                full_dataset_s=per_record * FULL_RECORDS[name],
                full_dataset_sd_s=s["sd"] / len(source) * FULL_RECORDS[name],
            )
            result[f"verify_{state}_{threads}threads"] = s
    # Decoding every record instead (PNG + zlib, one thread), on the first --decode records.
    raw = [source[i] for i in range(min(args.decode, len(source)))]
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for r in raw:
            features.deserialize_example_np(r, decoders=None)
        times.append((time.perf_counter() - t0) / len(raw))
    s = _stats(times)
    s.update(full_dataset_s=s["mean"] * FULL_RECORDS[name], per_record_ms=1e3 * s["mean"])
    result["decode_1thread_per_record"] = s
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=240, help="records written per dataset")
    parser.add_argument("--shards", type=int, default=2, help="array_record files per dataset")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--decode", type=int, default=24, help="records decoded for comparison")
    parser.add_argument("--datasets", nargs="+", default=["nyuv2", "sunrgbd"])
    parser.add_argument("--workdir", default=None, help="where the records go (default: a tmp)")
    parser.add_argument("--shared_data", default=None, help="default: ../shared/data")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    shared = _shared_data(args.shared_data)
    results = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs",
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "args": vars(args),
    }
    with tempfile.TemporaryDirectory(prefix="bench_verify_", dir=args.workdir) as tmp:
        for name in args.datasets:
            out = pathlib.Path(tmp) / name
            out.mkdir()
            results[name] = bench_dataset(name, shared, args, out)
            print(_table(name, results[name]), flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1))
    return results


def _table(name: str, r: dict) -> str:
    lines = [
        f"\n{name}: {r['records']} records in {r['shards']} shards, "
        f"{r['bytes_per_record'] / 1e6:.2f} MB/record (written in {r['write_s']:.0f} s); "
        f"extrapolated to {r['full_records']} records",
        "| check | ms/record | MB/s | full dataset (s) |",
        "|---|---:|---:|---:|",
    ]
    for key, s in r.items():
        if key.startswith("verify_"):
            lines.append(
                f"| {key} | {s['per_record_ms']:.2f} ± {s['per_record_sd_ms']:.2f} | "
                f"{s['mb_per_s']:.0f} | {s['full_dataset_s']:.1f} ± {s['full_dataset_sd_s']:.1f} |"
            )
    d = r["decode_1thread_per_record"]
    lines.append(
        f"| decode every record, 1 thread | {d['per_record_ms']:.1f} ± {1e3 * d['sd']:.1f} | | "
        f"{d['full_dataset_s']:.0f} |"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
