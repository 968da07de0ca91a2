"""Two processes on localhost (one CPU device each, ``jax.distributed`` over the ``--multihost``
coordinates) train the tiny config as one job, and match one process with two devices.

Numerics: the mIoU is equal (asserted within 1e-3), the params agree to float32 rounding but
not bit for bit (the cross-process all-reduce sums the two gradients in another order than the
in-process one), so ``params_fingerprint`` is compared only through the params' largest
difference.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from drd_jax import runs

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="localhost jax.distributed")

TRAIN = [
    sys.executable,
    "-m",
    "experiments.train",
    "--config=experiments/configs/synthetic.py:tiny",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _args(data_dir, workdir):
    return [
        f"--workdir={workdir}",
        "--config.mode=baseline",
        "--config.dropout_rate=0.0",
        f"--config.data_dir={data_dir}",
    ]


def _env(devices: int) -> dict:
    """The session's environment with ``devices`` CPU devices (its other XLA flags kept)."""
    flags = os.environ.get("XLA_FLAGS", "").split()
    flags = [f for f in flags if not f.startswith("--xla_force_host_platform_device_count")]
    return dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        JAX_DISABLE_MOST_OPTIMIZATIONS="1",
        XLA_FLAGS=" ".join([*flags, f"--xla_force_host_platform_device_count={devices}"]),
    )


def _run_processes(commands: list[list[str]], log_dir: pathlib.Path, timeout: int = 900):
    """Runs the processes of one job together; returns their stdout. Output goes to files: a
    pipe that nobody reads while waiting for another process can fill and block the job."""
    procs, logs = [], []
    for i, command in enumerate(commands):
        out, err = log_dir / f"process{i}.out", log_dir / f"process{i}.err"
        logs.append((out, err))
        with out.open("w") as o, err.open("w") as e:
            procs.append(subprocess.Popen(command, cwd=REPO_ROOT, env=_env(1), stdout=o, stderr=e))
    try:
        for p in procs:
            p.wait(timeout=timeout)
    finally:
        for p in procs:
            p.kill()
    for i, (p, (_, err)) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == 0, f"process {i}:\n{err.read_text()[-3000:]}"
    return [out.read_text() for out, _ in logs]


def test_two_processes_train_as_one_job_like_one_process_with_two_devices(data_dir, tmp_path):
    port = _free_port()
    multi = tmp_path / "two_processes"
    coordinates = [
        "--multihost",
        f"--coordinator_address=localhost:{port}",
        "--num_processes=2",
    ]
    _run_processes(
        [[*TRAIN, *_args(data_dir, multi), *coordinates, f"--process_id={i}"] for i in range(2)],
        tmp_path,
        timeout=600,
    )
    single = tmp_path / "one_process"
    proc = subprocess.run(
        [*TRAIN, *_args(data_dir, single)],
        cwd=REPO_ROOT,
        env=_env(2),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    a = json.loads((multi / runs.FINAL_METRICS_NAME).read_text())
    b = json.loads((single / runs.FINAL_METRICS_NAME).read_text())
    assert a["steps"] == b["steps"] == 4
    assert abs(a["mean_iou"] - b["mean_iou"]) <= 1e-3
    # Only process 0 logged: one line per step, not two.
    logged = [json.loads(line) for line in (multi / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if r["split"] == "train"] == [1, 2, 3, 4]
    pa, pb = runs.load_run(multi).params, runs.load_run(single).params
    diffs = [
        float(np.max(np.abs(x - y))) for x, y in zip(*map(jax.tree.leaves, (pa, pb)), strict=True)
    ]
    scale = max(float(np.max(np.abs(y))) for y in jax.tree.leaves(pb))
    assert max(diffs) <= 1e-5 * scale, (max(diffs), scale)
    # The run saved from two processes reads back on one (as `segment` and `reproduce` do).
    assert runs.load_run(multi).step == 4


def test_reproduce_runs_as_one_job_on_two_processes(data_dir, tmp_path):
    """``reproduce --multihost``: both processes train table 1's runs together, share the
    PS-start evaluation, and process 0 alone writes the results (same as one process)."""
    port = _free_port()
    workdir = tmp_path / "reproduce"
    command = [
        sys.executable,
        "-m",
        "experiments.reproduce",
        "--config=experiments/configs/synthetic.py:tiny",
        f"--workdir={workdir}",
        "--table=1",
        "--figure_images=1",
        "--compilation_cache=",
        f"--config.data_dir={data_dir}",
        "--multihost",
        f"--coordinator_address=localhost:{port}",
        "--num_processes=2",
    ]
    outputs = _run_processes([[*command, f"--process_id={i}"] for i in range(2)], tmp_path)
    assert "## Table 1" in outputs[0] and "## Table 1" not in outputs[1]
    summary = json.loads((workdir / "results.json").read_text())
    assert [e["row"] for e in summary["tables"]["1"]] == ["BL", "TN", "SN"]
    for entry in summary["tables"]["1"]:
        final = json.loads((workdir / "runs" / entry["run"] / runs.FINAL_METRICS_NAME).read_text())
        assert entry["ours"]["mean_iou"] == pytest.approx(100 * final["mean_iou"])
    # The PS-start evaluation, shared by the two processes, counts the whole split once.
    start = runs.evaluate_run(runs.load_run(workdir / "runs" / "tn"), depth_aware=False)
    assert summary["ps_starting_point"]["mean_iou"] == pytest.approx(
        100 * start["mean_iou"], abs=1e-6
    )
    assert (workdir / "fig4.png").is_file() and (workdir / "curves.png").is_file()
