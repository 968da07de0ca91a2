"""The Makefile: the install line for accelerators uses the jax version pinned in requirements.txt,
bench-gpu and gpu-wheels, and test-fast's marker."""

import os
import pathlib
import re
import shutil
import subprocess
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
@pytest.mark.parametrize("accelerator", ["cuda12", "cuda13", "tpu"])
def test_install_adds_the_accelerator_plugin_of_the_pinned_jax(accelerator):
    pinned = re.search(r"^jax==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M).group(1)
    dry_run = subprocess.run(
        ["make", "-n", "install", f"JAX_ACCELERATOR={accelerator}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f'pip install --quiet "jax[{accelerator}]=={pinned}"' in dry_run
    plain = subprocess.run(
        ["make", "-n", "install"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "jax[" not in plain  # the CPU install is unchanged


def _dry_run(*args: str) -> str:
    """``make -n`` output, continued lines joined, runs of whitespace as one space (as a top-level
    make: under ``make test`` the inherited MAKEFLAGS would add "Entering directory" lines)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    out = subprocess.run(
        ["make", "--no-print-directory", "-n", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return " ".join(out.replace("\\\n", " ").split())


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_bench_gpu_installs_the_carried_wheels_then_runs_the_benchmark():
    dry_run = _dry_run("bench-gpu")
    install = (
        "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
        "--target /tmp/site .whl/*.whl"
    )
    assert f'if [ -n ".whl" ] && ls .whl/*.whl >/dev/null 2>&1; then {install};' in dry_run
    assert "export PYTHONPATH=/tmp/site" in dry_run
    assert dry_run.endswith("python3 -m experiments.benchmarks.bench_gpu")
    assert "venv" not in dry_run  # the GPU machine has no .venv: no install step
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^bench-gpu:\s*$", makefile, re.M)  # no prerequisite (e.g. the venv stamp)
    assert 'carry: [".whl"]' in makefile and "BENCH_GPU_FLAGS=--output_dir=$OUT" in makefile
    custom = " ".join(
        _dry_run(
            "bench-gpu", "BENCH_PYTHON=py3", "BENCH_GPU_FLAGS=--output_dir=/o --batch=2"
        ).split()
    )
    assert "py3 -m pip install" in custom
    assert custom.endswith("py3 -m experiments.benchmarks.bench_gpu --output_dir=/o --batch=2")


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_test_fast_leaves_out_the_integration_tests_and_test_runs_everything():
    fast = _dry_run("test-fast")
    assert fast.endswith('.venv/bin/python -m pytest -q -n 2 --dist loadfile -m "not integration"')
    assert _dry_run("test").endswith(".venv/bin/python -m pytest -q -n 2 --dist loadfile")
    markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]
    assert any(m.startswith("integration:") for m in markers["ini_options"]["markers"])


def _script_packages(script: str) -> list[str]:
    """The names in gpu_wheels.sh's BINARY and SDIST_ONLY arrays."""
    names = []
    for array in ("BINARY", "SDIST_ONLY"):
        names += re.search(rf"^{array}=\(([^)]*)\)", script, re.M).group(1).split()
    return names


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_gpu_wheels_downloads_pinned_cp312_wheels_into_the_ignored_whl_dir():
    assert "bash experiments/benchmarks/gpu_wheels.sh .whl" in _dry_run("gpu-wheels")
    assert "/.whl/" in (ROOT / ".gitignore").read_text().splitlines()
    script = (ROOT / "experiments" / "benchmarks" / "gpu_wheels.sh").read_text()
    flags = (
        "--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform "
        "manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 "
        "--platform manylinux2014_x86_64 --platform manylinux1_x86_64"
    )
    assert flags in " ".join(script.replace("\\\n", " ").split())
    names = _script_packages(script)
    assert len(names) == len(set(names))
    required = {"grain", "tensorflow-datasets", "array_record", "ml_collections", "tensorboardx"}
    assert required <= {n.lower() for n in names}
    pins = (ROOT / "requirements.txt").read_text()
    for name in names:  # every version comes from requirements.txt
        assert re.search(rf"^{re.escape(name)}==\S+$", pins, re.M | re.I), name
