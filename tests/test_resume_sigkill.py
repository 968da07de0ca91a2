"""A run killed with SIGKILL and started again ends with the same params as an uninterrupted one.

Real processes through the ``experiments.train`` entry point (tiny synthetic config, CPU, XLA
optimisations off as in ``test_train.py``):

* run A trains ``NUM_STEPS`` steps uninterrupted;
* run B, the same command in another workdir, is killed with SIGKILL once it has committed a
  checkpoint at a step in ``[CKPT_EVERY, NUM_STEPS)`` and, if it can be caught, while its next
  asynchronous save is still being written (an ``<step>.orbax-checkpoint-tmp`` directory exists);
* the same command is started again on B: it resumes from B's latest committed checkpoint and its
  ``final_metrics.json`` (params fingerprint, mIoU, confusion matrix, ...) equals A's.

Orbax writes a step into ``<step>.orbax-checkpoint-tmp`` and renames it to ``<step>`` as the last
act of a save (after ``commit_success.txt``), so a directory named by digits alone is committed.
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import time

import pytest
from helpers import REPO_ROOT, SUBPROCESS_ENV, run_command, train_command

from drd_jax.metric_writers import read_jsonl

NUM_STEPS = 8
CKPT_EVERY = 2
TMP_MARK = ".orbax-checkpoint-tmp"
TIMEOUT_S = 300


def command(workdir, data_dir, mode):
    return train_command(
        workdir,
        data_dir,
        f"--config.num_train_steps={NUM_STEPS}",
        f"--config.checkpoint_every_steps={CKPT_EVERY}",
        mode=mode,
    )


def run_to_end(cmd) -> subprocess.CompletedProcess:
    proc = run_command(cmd, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def committed_steps(workdir) -> list[int]:
    d = pathlib.Path(workdir) / "checkpoints"
    try:
        return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit())
    except FileNotFoundError:  # not created yet
        return []


def tmp_dirs(workdir) -> list[str]:
    d = pathlib.Path(workdir) / "checkpoints"
    try:
        return sorted(p.name for p in d.iterdir() if TMP_MARK in p.name)
    except FileNotFoundError:
        return []


def read_final(workdir) -> dict:
    return json.loads((pathlib.Path(workdir) / "final_metrics.json").read_text())


def kill_mid_run(cmd, workdir, log_dir) -> tuple[list[int], list[str]]:
    """Starts ``cmd``; SIGKILLs it after a committed step >= CKPT_EVERY, a save in flight if
    possible. Returns the committed steps and the tmp directories left behind."""
    # Output to files, not pipes: orbax logs a lot and a full pipe would stall the child.
    with open(log_dir / "killed.out", "w") as out, open(log_dir / "killed.err", "w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=SUBPROCESS_ENV, stdout=out, stderr=err)
        try:
            deadline = time.monotonic() + TIMEOUT_S
            while proc.poll() is None and time.monotonic() < deadline:
                steps = committed_steps(workdir)
                done = [s for s in steps if s >= CKPT_EVERY]
                # Prefer killing while the next save is still being written; give up waiting for
                # that once half the run's checkpoints are committed.
                if done and (tmp_dirs(workdir) or max(done) >= NUM_STEPS // 2):
                    os.kill(proc.pid, signal.SIGKILL)
                    break
                time.sleep(0.02)
            returncode = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    stderr = (log_dir / "killed.err").read_text()
    assert returncode == -signal.SIGKILL, (
        f"the run was not killed mid-run (returncode {returncode}; too fast? raise NUM_STEPS)\n"
        + stderr[-3000:]
    )
    assert not (workdir / "final_metrics.json").exists()
    steps = committed_steps(workdir)
    assert steps and CKPT_EVERY <= max(steps) < NUM_STEPS, steps
    return steps, tmp_dirs(workdir)


@pytest.mark.parametrize("mode", ["baseline"])
def test_sigkilled_run_resumes_to_same_params(mode, data_dir, tmp_path):
    # A: uninterrupted.
    run_a = tmp_path / "A"
    run_to_end(command(run_a, data_dir, mode))
    expected = read_final(run_a)
    assert expected["steps"] == NUM_STEPS

    # B: killed mid-run with SIGKILL, then the same command again.
    run_b = tmp_path / "B"
    cmd = command(run_b, data_dir, mode)
    steps_at_kill, tmp_at_kill = kill_mid_run(cmd, run_b, tmp_path)
    print(f"killed with committed steps {steps_at_kill}, in flight {tmp_at_kill}")
    resumed = run_to_end(cmd)

    found = re.findall(r"resumed .* at step (\d+)", resumed.stderr)
    assert [int(s) for s in found] == [max(steps_at_kill)], resumed.stderr[-3000:]
    result = read_final(run_b)
    assert result["params_fingerprint"] == expected["params_fingerprint"]
    assert result == expected  # mIoU, accuracies, confusion matrix, config fingerprint, ...

    # Logs: one line per step, no duplicates from the killed run.
    records = read_jsonl(run_b / "metrics.jsonl")
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, NUM_STEPS + 1))
    assert [r["step"] for r in records if r["split"] == "eval"] == [NUM_STEPS]
    # Same checkpoints kept as run A, and the killed run's half-written save cleaned up.
    assert committed_steps(run_b) == committed_steps(run_a)
    assert tmp_dirs(run_b) == []
