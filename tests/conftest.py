"""Shared pytest setup.

Two host CPU devices are forced before JAX is imported anywhere, so multi-device tests (pmap, psum,
NamedSharding) run on a CPU-only machine. Real dataset fixtures are read from ``../shared/data``
(override with ``DRD_SHARED_DATA``); tests that need them skip when the folder is absent.

Training tests share ``data_dir`` (``synthetic_rgbd/tiny``, built once per session, read only) and
opt in to ``fast_compile`` with ``pytestmark = pytest.mark.usefixtures("fast_compile")``.
"""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _shared_data_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("DRD_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="module")
def fast_compile():
    """XLA optimisations off for a module (``jax_disable_most_optimizations``).

    Compiling the tiny D-Conv teacher drops from minutes to seconds on a slow CPU. Results (e.g.
    ``params_fingerprint``) only compare between runs compiled under the same setting.
    """
    import jax

    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """A TFDS data dir with `synthetic_rgbd/tiny`, built once per session; do not write to it."""
    from drd_jax import input_pipeline

    d = tmp_path_factory.mktemp("synthetic_tiny")
    input_pipeline.load_data_source("synthetic_rgbd/tiny", "train", data_dir=str(d), prepare=True)
    return str(d)


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """Path of the real NYUv2 / SUN RGB-D fixture files; skips the test when they are absent."""
    path = _shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real dataset fixtures not found at {path}")
    return path


@pytest.fixture
def small_tmpfs(tmp_path):
    """``mount(size) -> path``: a tmpfs of ``size`` (e.g. ``'1m'``) under ``tmp_path``, unmounted
    after the test; skips without root or permission to mount (a disk that fills up for real)."""
    import shutil
    import subprocess

    mounted = []

    def mount(size: str) -> pathlib.Path:
        path = tmp_path / f"tmpfs_{len(mounted)}"
        path.mkdir()
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a small tmpfs needs root")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode:
            pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)
