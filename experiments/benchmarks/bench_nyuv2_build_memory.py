"""Peak memory of building NYUv2 from a full-size ``nyu_depth_v2_labeled.mat``.

Writes a labeled .mat in the official MATLAB v7.3 layout (by default all 1449 frames at 480x640,
like the real 2.8 GB download), one frame at a time so the generator stays lean, then runs

    python -m tfds_builders.build nyuv2 --config 40 --data_dir D --manual_dir M

in a subprocess and reports the child's peak resident memory (``ru_maxrss`` from ``wait4``, the
kernel's own high-water mark) next to the peak of a child that only imports the same modules.

Frame content: the real NYUv2 frame #1 (shared data folder, when present) rolled sideways by a
different amount per frame, so PNG / zlib sizes match real data; otherwise smooth synthetic
frames. The real ``splits.mat`` and class maps are used when present (restricted to the first
``--frames`` frames); otherwise synthetic ones are written.

    python -m experiments.benchmarks.bench_nyuv2_build_memory --frames 400
    python -m experiments.benchmarks.bench_nyuv2_build_memory            # all 1449 frames
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import PIL.Image

from tfds_builders.nyuv2 import nyuv2_dataset_builder as nyu
from tfds_builders.nyuv2 import testing

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SHARED = pathlib.Path(os.environ.get("DRD_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
HEIGHT, WIDTH = 480, 640


def _real_frame() -> dict | None:
    sample = SHARED / "nyuv2_sample" / "NYUDepthv2"
    maps = SHARED / "nyuv2_meta" / "classMapping40.mat"
    if not (sample.is_dir() and maps.is_file()):
        return None
    map40 = nyu.load_map_894_to_40(maps)
    depth = np.load(sample / "Depth" / "0.npy").astype(np.float32)
    label40 = np.asarray(PIL.Image.open(sample / "Label" / "0.png"))
    return {
        "image": np.asarray(PIL.Image.open(sample / "RGB" / "0.jpg").convert("RGB")),
        "depth": depth,
        # Kinect-like raw depth: holes (0) where the inpainted depth is far or at strong edges.
        "raw_depth": np.where(
            (depth > 3.3) | (np.abs(np.gradient(depth)[1]) > 0.05), 0, depth
        ).astype(np.float32),
        "label": testing.raw_labels_from_40(label40, map40),
    }


def _synthetic_frame() -> dict:
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    depth = (1.5 + 2.0 * x / WIDTH + 0.3 * np.sin(y / 37.0)).astype(np.float32)
    image = np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)
    label = ((x // 80) + 8 * (y // 120) + 1).astype(np.uint16)
    return {"image": image, "depth": depth, "raw_depth": depth, "label": label}


def write_fixture(manual: pathlib.Path, frames: int, compression: str | None) -> dict:
    """Writes the manual dir; returns a description of what was used."""
    manual.mkdir(parents=True, exist_ok=True)
    base = _real_frame()
    source = "real NYUv2 frame #1, rolled per frame"
    if base is None:
        base, source = _synthetic_frame(), "synthetic frames (shared data absent)"

    def frame(k: int) -> dict:
        shift = (k * 37) % WIDTH
        out = {key: np.roll(value, shift, axis=1) for key, value in base.items()}
        out["scene"], out["scene_type"] = f"room_{k:04d}", "room"
        return out

    start = time.perf_counter()
    testing.write_labeled_mat(
        manual / nyu.LABELED_MAT, frames, frame, compression=compression, height=HEIGHT, width=WIDTH
    )
    write_s = time.perf_counter() - start

    meta = SHARED / "nyuv2_meta"
    if (meta / "splits.mat").is_file():
        splits = nyu.load_splits(meta / "splits.mat")
        train = splits["train"][splits["train"] <= frames]
        test = splits["test"][splits["test"] <= frames]
        for name in ("classMapping40.mat", "class13Mapping.mat"):
            shutil.copyfile(meta / name, manual / name)
    else:
        train = np.arange(1, frames + 1)[::2]
        test = np.arange(2, frames + 1)[::2]
        map40 = np.concatenate([[0], np.arange(894) % 40 + 1])
        testing.write_class_maps(manual, map40, np.concatenate([[0], np.arange(40) % 13 + 1]))
    testing.write_splits_mat(manual / "splits.mat", train, test)
    mat = manual / nyu.LABELED_MAT
    return {
        "content": source,
        "frames": frames,
        "train": len(train),
        "test": len(test),
        "mat_bytes": mat.stat().st_size,
        "mat_allocated_bytes": mat.stat().st_blocks * 512,
        "uncompressed_bytes": frames * HEIGHT * WIDTH * (3 + 4 + 4 + 2 + 1),
        "compression": compression or "none",
        "write_s": round(write_s, 1),
    }


def run_child(argv: list[str], log: pathlib.Path) -> tuple[int, float, float]:
    """Runs ``argv``; returns (exit status, peak RSS in MiB from wait4, wall seconds)."""
    start = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, usage.ru_maxrss / 1024.0, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1449, help="frames in the fixture .mat")
    parser.add_argument("--config", default="40", choices=["40", "13", "894"])
    parser.add_argument(
        "--compression", default="gzip", choices=["gzip", "none"], help="like MATLAB: gzip"
    )
    parser.add_argument("--workdir", help="where fixture and dataset go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the workdir afterwards")
    parser.add_argument("--json", help="also write the result to this JSON file")
    args = parser.parse_args(argv)

    workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="bench_nyuv2_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        print(f"writing a {args.frames}-frame labeled .mat under {workdir} ...", flush=True)
        fixture = write_fixture(
            workdir / "manual", args.frames, None if args.compression == "none" else "gzip"
        )
        print(json.dumps(fixture), flush=True)

        imports = "import tensorflow_datasets, tfds_builders.build, tfds_builders.nyuv2"
        _, baseline_mib, _ = run_child([sys.executable, "-c", imports], workdir / "baseline.log")
        command = [sys.executable, "-m", "tfds_builders.build", "nyuv2", "--config", args.config]
        command += ["--data_dir", str(workdir / "data"), "--manual_dir", str(workdir / "manual")]
        print("running:", " ".join(command[1:]), flush=True)
        code, peak_mib, wall_s = run_child(command, workdir / "build.log")
        log_tail = (workdir / "build.log").read_text()[-2000:]
        if code != 0:
            print(log_tail, file=sys.stderr)
            print(f"build failed with exit status {code}", file=sys.stderr)
            return 1
        data_bytes = sum(p.stat().st_size for p in (workdir / "data").rglob("*") if p.is_file())
        result = {
            **fixture,
            "config": args.config,
            "peak_rss_mib": round(peak_mib, 1),
            "import_only_peak_rss_mib": round(baseline_mib, 1),
            "build_wall_s": round(wall_s, 1),
            "dataset_bytes": data_bytes,
            "summary": [line for line in log_tail.splitlines() if "examples in" in line][-1:],
        }
        print(json.dumps(result, indent=2))
        gib = 1 << 30
        print(
            f"\n| {args.frames} | {fixture['mat_bytes'] / gib:.2f} GiB ({fixture['compression']}) "
            f"| {fixture['uncompressed_bytes'] / gib:.2f} GiB | {peak_mib:.0f} MiB "
            f"| {baseline_mib:.0f} MiB | {wall_s:.0f} s |"
        )
        if args.json:
            pathlib.Path(args.json).write_text(json.dumps(result, indent=2))
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
