"""``--multihost`` and its coordinates (``experiments/multihost.py``): what reaches
``jax.distributed.initialize`` and the errors for incomplete or bad coordinates."""

import os
import pathlib
import socket
import subprocess
import sys

import pytest

from experiments.multihost import initialize_arguments

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_single_process_and_auto_detection():
    assert initialize_arguments(False) is None
    assert initialize_arguments(True) == {}  # JAX detects SLURM / Open MPI / Cloud TPU


def test_explicit_coordinates_are_passed_through():
    assert initialize_arguments(True, "host0:1234", 4, 3) == {
        "coordinator_address": "host0:1234",
        "num_processes": 4,
        "process_id": 3,
    }


@pytest.mark.parametrize(
    "args, message",
    [
        ((False, "host0:1234", None, None), "--coordinator_address needs --multihost"),
        ((True, "host0:1234", 2, None), "missing --process_id"),
        ((True, None, 2, 0), "missing --coordinator_address"),
        ((True, "host0", 2, 0), "HOST:PORT"),
        ((True, "host0:12a", 2, 0), "HOST:PORT"),
        ((True, "host0:1234", 0, 0), "--num_processes must be >= 1"),
        ((True, "host0:1234", 2, 2), r"--process_id must be in \[0, 2\)"),
    ],
)
def test_bad_coordinates_name_the_flag(args, message):
    with pytest.raises(ValueError, match=message):
        initialize_arguments(*args)


def test_the_train_entry_point_refuses_incomplete_coordinates(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.train",
            "--config=experiments/configs/synthetic.py:tiny",
            f"--workdir={tmp_path / 'run'}",
            "--multihost",
            "--num_processes=2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "missing --coordinator_address, --process_id" in proc.stderr
    assert not (tmp_path / "run").exists()  # refused before anything ran


def _env_without_a_cluster() -> dict:
    """This environment without the variables JAX detects a cluster from."""
    cluster = ("SLURM_", "OMPI_", "PMI_", "TPU_", "CLOUD_TPU", "MEGASCALE_", "KUBERNETES_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(cluster)}
    return dict(env, JAX_PLATFORMS="cpu")


def _train(tmp_path, *flags):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.train",
            "--config=experiments/configs/synthetic.py:tiny",
            f"--workdir={tmp_path / 'run'}",
            *flags,
        ],
        cwd=ROOT,
        env=_env_without_a_cluster(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_multihost_alone_without_a_cluster_names_the_three_flags(tmp_path):
    proc = _train(tmp_path, "--multihost")
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2, proc.stderr
    assert last.startswith("error: --multihost: found no cluster to auto-detect"), last
    for flag in ("--coordinator_address=HOST:PORT", "--num_processes=N", "--process_id=I"):
        assert flag in last
    assert not (tmp_path / "run").exists()


def test_a_coordinator_that_never_answers_times_out_naming_its_address(tmp_path):
    with socket.socket() as s:  # a port nobody listens on (released before the command)
        s.bind(("localhost", 0))
        address = f"localhost:{s.getsockname()[1]}"
    proc = _train(
        tmp_path,
        "--multihost",
        f"--coordinator_address={address}",
        "--num_processes=2",
        "--process_id=1",
        "--coordinator_timeout=1",
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert any(f"waiting for the coordinator at {address} (timeout 1 s)" in x for x in lines)
    assert lines[-1].startswith("error: --multihost: the job did not start within 1 s"), lines
    assert f"the coordinator at {address} and all 2 processes" in lines[-1]
    assert not (tmp_path / "run").exists()


def test_a_bad_config_value_stops_before_waiting_for_the_coordinator(tmp_path):
    proc = _train(
        tmp_path,
        "--multihost",
        "--coordinator_address=localhost:1",
        "--num_processes=2",
        "--process_id=1",
        "--config.scale_range=(0.0, 1.0)",
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: config.scale_range: ")
    assert "waiting for the coordinator" not in proc.stderr


def test_a_zero_timeout_is_a_flag_error(tmp_path):
    proc = _train(tmp_path, "--multihost", "--coordinator_timeout=0")
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "error: flag --coordinator_timeout=0: 0 is not a positive integer", last


@pytest.mark.parametrize("module", ["experiments.train", "experiments.reproduce"])
def test_help_lists_the_multihost_flags(module):
    proc = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for flag in ("multihost", "coordinator_address", "num_processes", "process_id"):
        assert f"  --{flag}:" in proc.stdout or f"  --[no]{flag}:" in proc.stdout, flag
    assert "  --coordinator_timeout:" in proc.stdout
