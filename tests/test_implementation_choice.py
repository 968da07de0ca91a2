"""The table behind ``depth_aware_conv(..., implementation='auto')``."""

import jax
import pytest

from drd_jax.ops import implementation_choice as choice


@pytest.mark.parametrize("platform", ["cpu", "gpu", "cuda", "rocm", "tpu", "TPU", "metal", ""])
def test_fast_everywhere_until_a_gpu_has_measured(platform):
    assert choice.choose_implementation(platform) == "fast"


def test_default_platform_is_the_default_backend(monkeypatch):
    monkeypatch.setitem(choice.CHOICES, jax.default_backend(), choice.Choice("reference", "x"))
    assert choice.choose_implementation() == "reference"
    assert choice.choose_implementation("no such platform") == choice.DEFAULT


def test_aliases_share_the_gpu_entry(monkeypatch):
    monkeypatch.setitem(choice.CHOICES, "gpu", choice.Choice("fast_patches", "measured"))
    assert choice.choose_implementation("cuda") == "fast_patches"
    assert choice.choose_implementation("ROCm") == "fast_patches"
    assert choice.choose_implementation("cpu") == "fast"


def test_every_entry_names_a_known_implementation_and_its_provenance():
    from drd_jax.ops import depth_conv

    known = set(depth_conv.IMPLEMENTATIONS) - {choice.AUTO}
    assert {"cpu", "gpu", "tpu"} <= set(choice.CHOICES)
    for platform, entry in choice.CHOICES.items():
        assert entry.implementation in known, platform
        assert isinstance(entry.measured, str) and entry.measured.strip(), platform
    assert choice.DEFAULT in known


def test_unmeasured_entries_say_so():
    for platform in ("gpu", "tpu"):
        assert choice.CHOICES[platform].measured.startswith("not measured yet"), platform
    assert "BENCHMARKS.md" in choice.CHOICES["cpu"].measured


def test_auto_is_the_chosen_implementation_through_the_public_op():
    import numpy as np

    from drd_jax.ops import depth_conv

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 6, 7, 3)).astype(np.float32)
    depth = rng.uniform(0.5, 4.0, size=(1, 6, 7)).astype(np.float32)
    kernel = rng.normal(size=(3, 3, 3, 4)).astype(np.float32)
    auto = depth_conv.depth_aware_conv(x, depth, kernel, implementation="auto")
    chosen = depth_conv.depth_aware_conv(
        x, depth, kernel, implementation=choice.choose_implementation(jax.default_backend())
    )
    np.testing.assert_array_equal(np.asarray(auto), np.asarray(chosen))
