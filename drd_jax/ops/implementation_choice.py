"""Which ``depth_aware_conv`` implementation ``implementation='auto'`` runs, per platform.

``'auto'`` picks, for the platform the program runs on (``jax.default_backend()``: ``'cpu'``,
``'gpu'``, ``'tpu'``; a CUDA or ROCm backend counts as ``'gpu'``), the implementation that
measured fastest there: :data:`CHOICES` maps each platform to a :class:`Choice`, the winner and
where and when it was measured. A platform missing from the table gets :data:`DEFAULT`.

Until a GPU has measured it, ``'fast'`` stays the default everywhere, and the table says so: the
GPU and TPU entries are ``'fast'``, "not measured yet". The CPU entry is ``'fast'`` as measured
by the CPU benchmark in BENCHMARKS.md (``fast`` within 0.56–1.30× of XLA's plain conv, fwd+bwd,
at every depth-aware layer of DeepLab-VGG16; the Pallas kernels only run in interpret mode on a
CPU, so they are not contenders there). To change an entry, run ``make bench-gpu`` (or
``python -m experiments.benchmarks.bench_gpu``) on that platform, read the ``dconv`` and
``train_step`` sections' per-implementation verdicts, and record the winner with the run's device,
date and report here.

This module imports nothing from :mod:`drd_jax.ops.depth_conv`, which resolves ``'auto'``
through :func:`choose_implementation`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax

DEFAULT = "fast"
AUTO = "auto"

# jax.default_backend() names that mean the same platform as a key of CHOICES.
PLATFORM_ALIASES = {"cuda": "gpu", "rocm": "gpu"}


class Choice(NamedTuple):
    """One table entry: the ``implementation`` to run and where/when it was ``measured``."""

    implementation: str
    measured: str


CHOICES: dict[str, Choice] = {
    "cpu": Choice(
        "fast",
        "BENCHMARKS.md, 'D-Conv per layer at 240×320 and against the PyTorch peer', subsection "
        "'After the patch path for narrow layers' (2-core Intel Xeon VM, jax 0.10.2, float32; "
        "bfloat16 in its 'bfloat16' subsection; the section records no date): fast fwd+bwd "
        "0.56–1.30× XLA's conv per layer (0.50–1.35× in bfloat16)",
    ),
    "gpu": Choice("fast", "not measured yet: 'fast' until `make bench-gpu` has run on a GPU"),
    "tpu": Choice("fast", "not measured yet: 'fast' until a TPU benchmark has run"),
}


def normalize_platform(platform: str) -> str:
    """``platform`` lower-cased, with ``'cuda'``/``'rocm'`` as ``'gpu'``."""
    name = str(platform).lower()
    return PLATFORM_ALIASES.get(name, name)


def choose_implementation(platform: str | None = None) -> str:
    """The implementation ``'auto'`` stands for on ``platform``.

    Args:
      platform: a JAX platform name (``'cpu'``, ``'gpu'``, ``'cuda'``, ``'rocm'``, ``'tpu'``, any
        case); None: ``jax.default_backend()``.

    Returns:
      ``CHOICES[platform].implementation``, or :data:`DEFAULT` (``'fast'``) for a platform the
      table does not list.
    """
    if platform is None:
        platform = jax.default_backend()
    choice = CHOICES.get(normalize_platform(platform))
    return DEFAULT if choice is None else choice.implementation
