"""Catching a training loss that explodes while it is still finite.

The in-step ``finite`` flag (``steps.train_step``, built with :func:`all_finite`) stops a run at
the first inf or NaN. A run can diverge long before that: a loss going 1.2 → 6.5e4 → 1.4e13 over
100 steps is finite at every step, and every checkpoint saved meanwhile is garbage.
:class:`DivergenceMonitor` watches one non-negative loss on the host and reports the first value
that exceeds ``factor`` times the median of the recent ones; the training loop then stops without
saving, so the newest checkpoint is the last good one (see :class:`TrainingDivergedError`).

The loop watches the pixel-wise cross-entropy (``ce_loss``): every mode has it, it is ≥ 0, it
starts near log K (K classes), and any blow-up of the network shows in it. The total loss is not
used: with a holistic (adversarial) term it can be negative or hover around 0, where ratios mean
nothing.
"""

from __future__ import annotations

import collections
import math
import statistics

import jax
import jax.numpy as jnp

__all__ = ["DivergenceMonitor", "TrainingDivergedError", "all_finite"]


def all_finite(tree) -> jax.Array:
    """Whether every element of every leaf of ``tree`` is finite (a scalar bool, traceable)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


class TrainingDivergedError(FloatingPointError):
    """The training loss exploded (finite, but ``factor`` × its recent median or more).

    A ``FloatingPointError`` (as a non-finite loss), so code that handles one handles both.
    """


class DivergenceMonitor:
    """Flags a loss above ``factor`` × the median of the last ``window`` accepted values.

    Args:
      factor: the ratio that counts as divergence (> 1); 0 switches the check off.
      window: how many recent values the median is taken over.
      warmup: values to see before the first check (early training is erratic, and a resumed run
        starts with an empty history).

    ``check(loss)`` returns None and records the value, or, when it is a divergence, a one-line
    description (the value is then not recorded, so repeated checks keep the good reference).
    Non-finite values are left to the ``finite`` flag: they are not recorded and not reported.

    Examples:
      >>> monitor = DivergenceMonitor(100.0, warmup=3)
      >>> [monitor.check(x) for x in (1.0, 0.9, 1.1, 0.8)]
      [None, None, None, None]
      >>> monitor.check(5e4)
      'loss 5e+04 is 5.3e+04 x the median 0.95 of the last 4 values (limit 100 x)'
    """

    def __init__(self, factor: float, *, window: int = 100, warmup: int = 10):
        if factor != 0 and not factor > 1:
            raise ValueError(f"factor must be 0 (off) or > 1, got {factor!r}")
        if window < 1 or warmup < 1:
            raise ValueError(f"window and warmup must be >= 1, got {window} and {warmup}")
        self.factor = float(factor)
        self.warmup = int(warmup)
        self._recent: collections.deque[float] = collections.deque(maxlen=int(window))

    @property
    def enabled(self) -> bool:
        return self.factor > 0

    def check(self, loss: float) -> str | None:
        """None if ``loss`` is acceptable (then it is recorded), else what is wrong with it."""
        loss = float(loss)
        if not self.enabled or not math.isfinite(loss):
            return None
        if len(self._recent) >= self.warmup:
            reference = statistics.median(self._recent)
            if reference > 0 and loss > self.factor * reference:
                return (
                    f"loss {loss:.3g} is {loss / reference:.2g} x the median {reference:.3g} of "
                    f"the last {len(self._recent)} values (limit {self.factor:g} x)"
                )
        self._recent.append(loss)
        return None
