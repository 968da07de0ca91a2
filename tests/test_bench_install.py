"""``experiments.benchmarks.bench_install``: one ``make install`` timed from no ``.venv``, on a
stand-in Makefile (the real install takes half a minute)."""

import shutil
import subprocess
import sys

import pytest
from helpers import REPO_ROOT

from experiments.benchmarks import bench_install

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")

MAKEFILE = """install:
\ttest ! -e .venv
\tmkdir -p .venv/lib/__pycache__
\ttouch .venv/lib/__pycache__/a.cpython-311.pyc .venv/lib/__pycache__/b.cpython-311.pyc
\techo $(PYTHON) > .venv/python
"""


def test_each_install_starts_from_no_venv_and_counts_its_pyc_files(tmp_path):
    (tmp_path / "Makefile").write_text(MAKEFILE)
    for _ in range(2):  # the second run finds the first one's .venv and must delete it first
        seconds, pyc_files = bench_install.make_install(tmp_path, "python3.11")
        assert seconds > 0 and pyc_files == 2
    assert (tmp_path / ".venv" / "python").read_text() == "python3.11\n"


def test_a_failing_install_is_an_error_with_makes_output(tmp_path):
    (tmp_path / "Makefile").write_text("install:\n\techo no index here >&2; exit 3\n")
    with pytest.raises(RuntimeError, match=r"(?s)make install failed in .*no index here"):
        bench_install.make_install(tmp_path, "python3.11")


def test_a_missing_interpreter_is_named_before_anything_is_checked_out():
    command = [sys.executable, "-m", "experiments.benchmarks.bench_install", "--python=python0.1"]
    proc = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "--python: 'python0.1' is not on PATH" in proc.stderr
