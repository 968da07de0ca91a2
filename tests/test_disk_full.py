"""A run on a full disk stops with one message naming the path and the space needed, and the same
command resumes once space is freed, to the params of an uninterrupted run.

Real processes (``experiments.train``, tiny baseline) on a small tmpfs; needs root and
permission to mount, skips otherwise (``tests/test_checkpointing.py`` and
``tests/test_metric_writers.py`` test the messages without a mount).
"""

import errno
import json
import shutil
import subprocess

import pytest
from helpers import run_command, train_command

NUM_STEPS = 12


@pytest.fixture
def small_fs(small_tmpfs):
    """A 4 MiB tmpfs (skips without root or permission to mount)."""
    return small_tmpfs("4m")


def train(workdir, data_dir) -> subprocess.CompletedProcess:
    overrides = (f"--config.num_train_steps={NUM_STEPS}", "--config.checkpoint_every_steps=2")
    return run_command(train_command(workdir, data_dir, *overrides))


def fingerprint(workdir) -> str:
    return json.loads((workdir / "final_metrics.json").read_text())["params_fingerprint"]


def test_disk_full_stops_with_one_message_and_resumes_after_space_is_freed(
    small_fs, data_dir, tmp_path
):
    reference = train(tmp_path / "reference", data_dir)
    assert reference.returncode == 0, reference.stderr[-3000:]
    # Leave room for about two checkpoints (0.6 MB each) and the logs.
    filler = small_fs / "filler"
    with open(filler, "wb") as f:
        try:
            f.write(b"\1" * (shutil.disk_usage(small_fs).free - 1_500_000))
        except OSError as e:
            assert e.errno == errno.ENOSPC
    workdir = small_fs / "run"
    full = train(workdir, data_dir)
    assert full.returncode != 0
    err = full.stderr
    assert "no space left on device" in err and str(workdir) in err, err[-3000:]
    assert "needs about" in err and "rerun the same command" in err, err[-3000:]
    assert "Event loop is closed" not in err
    assert err.count("Traceback") <= 1, err[-6000:]  # the entry point's own, if any
    assert err.count("No space left on device") <= 2, err[-6000:]  # our message and its cause
    assert not (workdir / "final_metrics.json").exists()

    filler.unlink()  # space freed: the same command resumes
    resumed = train(workdir, data_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed" in resumed.stderr
    assert fingerprint(workdir) == fingerprint(tmp_path / "reference")
