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
    return dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        JAX_DISABLE_MOST_OPTIMIZATIONS="1",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    )


def test_two_processes_train_as_one_job_like_one_process_with_two_devices(data_dir, tmp_path):
    port = _free_port()
    multi = tmp_path / "two_processes"
    procs = [
        subprocess.Popen(
            [
                *TRAIN,
                *_args(data_dir, multi),
                "--multihost",
                f"--coordinator_address=localhost:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            cwd=REPO_ROOT,
            env=_env(1),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for i, (p, (_, err)) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"process {i}:\n{err[-3000:]}"
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
