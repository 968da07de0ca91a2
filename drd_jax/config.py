"""A training config's fields, their checks and the run's config fingerprint.

The fields and their defaults are written in ``experiments/configs/base.py``; :data:`FIELDS` here
says what each may hold. :func:`validate_config` raises ``ValueError`` naming the first bad field
(``config.<field>: ...``); :func:`fingerprint` is what a workdir records, so a rerun with another
config is refused and one with the same config resumes.
"""

from __future__ import annotations

import importlib.util
import math
import os
import pathlib
from typing import NamedTuple

import ml_collections
import numpy as np

from drd_jax.checkpointing import config_fingerprint
from drd_jax.distillation.terms import KD_FIELDS, KD_WEIGHT_FIELDS, uses_kd_methods
from drd_jax.models import FEATURE_LAYERS
from drd_jax.parallel import PARALLEL

__all__ = [
    "ADDED_FIELDS",
    "DTYPES",
    "FIELDS",
    "FINGERPRINT_IGNORE",
    "INITS",
    "MODES",
    "Number",
    "OPTIMIZERS",
    "TEACHER_CHECKPOINTS",
    "field_error",
    "fingerprint",
    "resolve_data_dir",
    "validate_config",
]

MODES = ("baseline", "teacher", "student")
INITS = ("scratch", "teacher", "imagenet")
OPTIMIZERS = ("sgd", "adam")
TEACHER_CHECKPOINTS = ("best", "latest")
DTYPES = ("float32", "bfloat16")
# Fields added after runs were recorded, with the value those runs had: at that value they are left
# out of the fingerprint, so the runs written before the field existed keep theirs.
ADDED_FIELDS = {"dtype": "float32"}
# Fields that do not change what a run computes; they may differ between a run and its resume.
FINGERPRINT_IGNORE = (
    "data_dir",
    "parallel",
    "num_devices",
    "num_workers",
    "stop_after_steps",
    "progress_bar",
    "write_curves",
    "divergence_factor",
    "eval_pad_to",
)


class Number(NamedTuple):
    """A number in ``[lo, hi]`` (an open end with ``lo_open`` / ``hi_open``)."""

    lo: float
    hi: float = math.inf
    integer: bool = False
    lo_open: bool = False
    hi_open: bool = False


def _count(lo: int = 0, hi: float = math.inf) -> Number:
    return Number(lo, hi, integer=True)


_PAIR = "pair"
_WEIGHT = Number(0)  # a loss weight: >= 0, 0 = off

# Every field a training config must have, with its own check: a tuple of choices, a
# :class:`Number`, ``_PAIR``, or None (free-form, or checked with the fields it depends on in
# :func:`validate_config`). Cross-field rules follow the per-field checks.
FIELDS: dict[str, object] = {
    # Data.
    "dataset": None,
    "data_dir": None,
    "crop_size": _PAIR,
    "scale_range": _PAIR,
    "flip_prob": Number(0, 1),
    "color_jitter": Number(0, 1, hi_open=True),
    "num_workers": _count(),
    # Method.
    "mode": MODES,
    "init": INITS,
    "teacher_workdir": None,
    "teacher_checkpoint": TEACHER_CHECKPOINTS,
    "pretrained_path": None,
    "vtce_weight": _WEIGHT,
    "beta": Number(0, lo_open=True),
    **{field: _WEIGHT for field in KD_WEIGHT_FIELDS},
    "pair_kd_node_scale": Number(0, 1, lo_open=True),
    "critic_learning_rate": Number(0, lo_open=True),
    "critic_gp_weight": Number(0),
    "kd_feature_layer": FEATURE_LAYERS,
    "ka_code_features": _count(1),
    "ka_autoencoder_steps": _count(),
    "ka_autoencoder_learning_rate": Number(0, lo_open=True),
    "alpha": Number(0),
    "depth_aware_layers": None,
    "width": Number(0, lo_open=True),
    "dropout_rate": Number(0, 1, hi_open=True),
    "dtype": DTYPES,
    # Optimisation.
    "optimizer": OPTIMIZERS,
    "learning_rate": Number(0, lo_open=True),
    "momentum": Number(0, 1, hi_open=True),
    "weight_decay": Number(0),
    "lr_power": Number(0),
    "batch_size": _count(1),
    "num_train_steps": _count(1),
    "seed": _count(0, 2**32 - 1),
    # Execution.
    "parallel": PARALLEL,
    "num_devices": _count(),
    "stop_after_steps": _count(),
    "progress_bar": None,
    "write_curves": None,
    "divergence_factor": Number(0),
    # Logging, evaluation, checkpoints.
    "log_every_steps": _count(1),
    "eval_every_steps": _count(),
    "eval_batch_size": _count(),
    "eval_pad_to": _PAIR,
    "checkpoint_every_steps": _count(1),
    "max_checkpoints_to_keep": _count(1),
}


def field_error(name: str, message: str) -> ValueError:
    """The error of a bad config field: ``config.<name>: <message>``."""
    return ValueError(f"config.{name}: {message}")


def _in_range(v, check: Number) -> bool:
    """``v`` is finite, integral if ``check.integer``, and inside ``check``'s interval."""
    return (
        math.isfinite(v)
        and (not check.integer or int(v) == v)
        and check.lo <= v <= check.hi
        and not (check.lo_open and v == check.lo)
        and not (check.hi_open and v == check.hi)
    )


def _describe(check: Number) -> str:
    """What ``check`` accepts, e.g. ``'a finite number in (0, inf)'``, ``'an integer in [1, 8]'``.

    Only finite values pass, so an infinite end is always printed open.
    """
    unbounded = math.isinf(check.hi)
    lo, hi = check.lo, check.hi
    if check.integer:
        lo, hi = int(lo), hi if unbounded else int(hi)
    lb = "(" if check.lo_open else "["
    rb = ")" if check.hi_open or unbounded else "]"
    kind = "an integer" if check.integer else "a finite number" if unbounded else "a number"
    return f"{kind} in {lb}{lo}, {hi}{rb}"


def _check_field(config, name: str, check) -> None:
    v = config[name]
    if isinstance(check, Number):
        if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
            raise field_error(name, f"must be a number, got {v!r}")
        if not _in_range(v, check):
            raise field_error(name, f"must be {_describe(check)}, got {v!r}")
    elif check == _PAIR:
        if not isinstance(v, list | tuple) or len(v) != 2:
            raise field_error(name, f"must be a pair, got {v!r}")
    elif isinstance(check, tuple) and v not in check:
        raise field_error(name, f"must be one of {check}, got {v!r}")


def _check_dataset(dataset) -> None:
    """``dataset`` is ``<builder>`` or ``<builder>/<config>`` of ``tfds_builders``.

    Raises:
      ValueError: ``config.dataset: ...`` naming the missing builder, or listing the builder's
        configs when it has no config of that name.
    """
    name, _, builder_config = str(dataset).partition("/")
    if not name or importlib.util.find_spec(f"tfds_builders.{name}") is None:
        raise field_error("dataset", f"no builder tfds_builders.{name} for {dataset!r}")
    if builder_config:
        from tfds_builders._common import UnknownConfigError, check_config_name

        builder = importlib.import_module(f"tfds_builders.{name}").Builder
        try:
            check_config_name(builder, builder_config)
        except UnknownConfigError as e:
            raise field_error("dataset", str(e)) from None


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ``ValueError`` naming the first bad field (``config.<field>: ...``)."""
    missing = [name for name in FIELDS if name not in config]
    if missing:
        raise ValueError(f"config is missing the fields {missing} (see experiments/configs/)")
    for name, check in FIELDS.items():
        _check_field(config, name, check)
    _check_dataset(config.dataset)
    if not all(isinstance(v, int) and v > 0 for v in config.crop_size):
        raise field_error("crop_size", f"must be two positive ints, got {config.crop_size!r}")
    pad = config.eval_pad_to
    if not (all(isinstance(v, int) and v >= 0 for v in pad) and (pad[0] > 0) == (pad[1] > 0)):
        raise field_error(
            "eval_pad_to", f"must be (0, 0) (automatic) or two positive ints, got {pad!r}"
        )
    if 0 < config.divergence_factor <= 1:
        raise field_error(
            "divergence_factor", f"must be 0 (off) or > 1, got {config.divergence_factor!r}"
        )
    if config.init == "teacher" and config.mode != "student":
        raise field_error(
            "init", f"'teacher' (parameter sharing) needs mode='student', got mode={config.mode!r}"
        )
    for field in KD_WEIGHT_FIELDS:
        if config[field] and config.mode != "student":
            raise field_error(field, f"distillation needs mode='student', got {config.mode!r}")
    distills = config.vtce_weight or uses_kd_methods(config)
    if config.mode == "student" and (config.init == "teacher" or distills):
        if not config.teacher_workdir:
            raise field_error(
                "teacher_workdir",
                "student mode with init='teacher' or a distillation weight > 0 needs the "
                "teacher run's workdir",
            )
    if config.init == "imagenet" and not config.pretrained_path:
        raise field_error("pretrained_path", "init='imagenet' needs a VGG16 weights file")


def fingerprint(config: ml_collections.ConfigDict) -> str:
    """The config fingerprint of a run (``FINGERPRINT_IGNORE`` left out).

    A run that uses none of the seed papers' methods (``KD_WEIGHT_FIELDS``) also leaves out every
    field of those methods (``KD_FIELDS``), and the ``ADDED_FIELDS`` that hold the value runs had
    before them: they do not change what it computes, and runs written before the fields existed
    keep their fingerprint (so they are still resumed and reused).
    """
    ignore = FINGERPRINT_IGNORE
    if not uses_kd_methods(config):
        ignore = ignore + KD_FIELDS
    ignore = ignore + tuple(f for f, old in ADDED_FIELDS.items() if config.get(f, old) == old)
    return config_fingerprint(config.to_dict(), ignore=ignore)


def resolve_data_dir(config) -> str:
    """``config.data_dir``, else ``$DRD_DATA_DIR``, else ``~/tensorflow_datasets``."""
    d = config.data_dir or os.environ.get("DRD_DATA_DIR") or "~/tensorflow_datasets"
    return str(pathlib.Path(d).expanduser())
