"""``--multihost`` and its coordinates (``experiments/multihost.py``): what reaches
``jax.distributed.initialize`` and the errors for incomplete or bad coordinates."""

import pathlib
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
