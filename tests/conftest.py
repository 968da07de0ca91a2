"""Shared pytest setup.

Two host CPU devices are forced before JAX is imported anywhere, so multi-device tests (pmap, psum,
NamedSharding) run on a CPU-only machine. Real dataset fixtures are read from ``../shared/data``
(override with ``DRD_SHARED_DATA``); tests that need them skip when the folder is absent.
"""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _shared_data_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("DRD_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """Path of the real NYUv2 / SUN RGB-D fixture files; skips the test when they are absent."""
    path = _shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real dataset fixtures not found at {path}")
    return path
