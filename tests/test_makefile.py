"""The Makefile's install line for accelerators uses the jax version pinned in requirements.txt."""

import pathlib
import re
import shutil
import subprocess

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
