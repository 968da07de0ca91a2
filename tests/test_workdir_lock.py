"""One live run per workdir (``drd_jax.workdir_lock``): a second run is refused at once, naming
the workdir and the holder's pid and host; a lock left by a killed run never blocks a resume."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from helpers import REPO_ROOT, run_command, train_command

from drd_jax.workdir_lock import WorkdirLock, WorkdirLockedError

# A process that takes the lock, says so, and holds it until killed.
HOLDER = """
import sys, time
from drd_jax.workdir_lock import WorkdirLock
lock = WorkdirLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def start_holder(workdir) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(workdir)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_lock_is_refused_naming_workdir_pid_and_host(tmp_path):
    with WorkdirLock(tmp_path / "run") as lock:
        assert lock.path == tmp_path / "run" / ".lock"
        with pytest.raises(WorkdirLockedError) as info:
            WorkdirLock(tmp_path / "run").acquire()
    message = str(info.value)
    assert str(tmp_path / "run") in message
    assert f"pid {os.getpid()}" in message and socket.gethostname() in message
    assert "\n" not in message
    WorkdirLock(tmp_path / "run").acquire().release()  # released: free again


def test_lock_of_a_sigkilled_process_does_not_block(tmp_path):
    holder = start_holder(tmp_path)
    try:
        with pytest.raises(WorkdirLockedError, match=f"pid {holder.pid}"):
            WorkdirLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / ".lock").exists()  # the stale file stays; the kernel dropped the lock
    WorkdirLock(tmp_path).acquire().release()


def test_a_second_training_process_is_refused_and_a_killed_one_does_not_block(data_dir, tmp_path):
    workdir = tmp_path / "run"
    holder = start_holder(workdir)  # a live run holds the workdir
    try:
        started = time.monotonic()
        proc = run_command(train_command(workdir, data_dir))
        seconds = time.monotonic() - started
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert proc.returncode != 0
    assert f"pid {holder.pid}" in proc.stderr and str(workdir) in proc.stderr, proc.stderr[-3000:]
    assert not (workdir / "checkpoints").exists() and not (workdir / "metrics.jsonl").exists()
    print(f"refused after {seconds:.1f} s (process start included)")
    # The holder was killed with SIGKILL: its lock file is left, and does not block a run.
    proc = run_command(train_command(workdir, data_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (workdir / "final_metrics.json").is_file()
