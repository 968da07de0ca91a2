"""A training config's fields: their meanings and checks, and the run's config fingerprint.

:data:`FIELDS` is the one place that says what each field means and may hold (a :class:`Field`:
check, one-line help, section); ``experiments/configs/base.py`` sets their defaults, and
:func:`describe_fields` lists them with a config's values (what ``--help`` prints when a
``--config`` is given: ``experiments/cli.py``). :func:`validate_config` raises
``drd_jax.errors.ConfigError`` (a ``ValueError``) naming the first bad field
(``config.<field>: ...``); :func:`fingerprint` is what a workdir records, so a rerun with another
config is refused and one with the same config resumes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import pathlib
import shlex
import textwrap
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np

from drd_jax.distillation.terms import KD_FIELDS, KD_WEIGHT_FIELDS, uses_kd_methods
from drd_jax.errors import ConfigError
from drd_jax.extras import require
from drd_jax.json_values import to_json_value
from drd_jax.models import DEPTH_AWARE_LAYER_CHOICES, FEATURE_LAYERS
from drd_jax.parallel import PARALLEL

ml_collections = require("ml_collections", extra="train")

__all__ = [
    "ADDED_FIELDS",
    "DTYPES",
    "FIELDS",
    "Field",
    "FINGERPRINT_IGNORE",
    "INITS",
    "MODES",
    "Number",
    "OPTIMIZERS",
    "SECTIONS",
    "TEACHER_CHECKPOINTS",
    "allowed_values",
    "describe_fields",
    "field_error",
    "fingerprint",
    "hash_config",
    "legacy_fingerprints",
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


class Field(NamedTuple):
    """One field of a training config: what it may hold, what it means, where it is listed.

    Attributes:
      check: a tuple of choices, a :class:`Number`, ``'pair'``, or None (free-form, or checked
        with the fields it depends on in :func:`validate_config`).
      help: its meaning in one line (units, what 0 means), as ``--help`` prints it.
      section: the group it is listed in (one of :data:`SECTIONS`).
    """

    check: object
    help: str
    section: str


def _section(section: str, **fields: tuple[object, str]) -> dict[str, Field]:
    return {name: Field(check, text, section) for name, (check, text) in fields.items()}


# Every field a training config must have, by section (the order ``--help`` lists them in): its
# check and its one-line meaning. Cross-field rules follow the per-field checks in
# :func:`validate_config`; ``experiments/configs/base.py`` sets the paper's values.
FIELDS: dict[str, Field] = {
    **_section(
        "Data",
        dataset=(
            None,
            "the TFDS dataset, '<builder>' or '<builder>/<config>' of tfds_builders "
            "(e.g. 'nyuv2/40', 'sunrgbd/bfx', 'synthetic_rgbd/tiny')",
        ),
        data_dir=(None, "TFDS data directory; '' = $DRD_DATA_DIR, else ~/tensorflow_datasets"),
        crop_size=(
            _PAIR,
            "(height, width) of the training crops, two positive ints (pixels); a smaller "
            "rescaled image is padded (mean colour, depth 0, void label)",
        ),
        scale_range=(
            _PAIR,
            "(min, max) of the random rescale factor of a training image (relative to its stored "
            "size, before the crop); finite, 0 < min <= max",
        ),
        flip_prob=(
            Number(0, 1),
            "probability of a horizontal flip of a training example (image, depth, label)",
        ),
        color_jitter=(
            Number(0, 1, hi_open=True),
            "strength s of the random brightness, contrast and saturation factors "
            "U(1 - s, 1 + s) on the training RGB; 0 = off",
        ),
        num_workers=(
            _count(),
            "grain worker processes of the training input; 0 = threads in this process "
            "(the same batches either way)",
        ),
    ),
    **_section(
        "Method",
        mode=(
            MODES,
            "what is trained: 'baseline' (RGB, plain convs, CE), 'teacher' (RGB-D, D-Convs, CE) "
            "or 'student' (RGB, CE + distillation from a frozen teacher)",
        ),
        init=(
            INITS,
            "the initial params: 'scratch' (random), 'teacher' (parameter sharing: the teacher's; "
            "student only) or 'imagenet' (VGG16 weights from pretrained_path)",
        ),
        teacher_workdir=(
            None,
            "student: workdir of the trained teacher run (needed with init='teacher' or any "
            "distillation weight > 0); must be '' in the other modes",
        ),
        teacher_checkpoint=(
            TEACHER_CHECKPOINTS,
            "student: the teacher run's checkpoint to use: 'best' (by test mIoU; the latest if "
            "none was evaluated) or 'latest'",
        ),
        pretrained_path=(
            None,
            "init='imagenet': the VGG16 ImageNet weights (Keras .h5, torchvision .pth or .npz), "
            "checked before the run (the 13 trunk convs, of the shapes of the model's width)",
        ),
        vtce_weight=(
            _WEIGHT,
            "student: weight w of VTCE in the loss CE + w * VTCE; 0 = no VTCE (BL+PS with "
            "init='teacher')",
        ),
        beta=(
            Number(0, lo_open=True),
            "VTCE's temperature decay: T = exp(-beta * (e^2 - e + 2) / 2) at epoch "
            "e = floor(step * batch_size / train images)",
        ),
        pixel_kd_weight=(
            _WEIGHT,
            "student: weight of Structured KD's pixel-wise KD, KL(teacher || student) per pixel; "
            "0 = off (upstream 10)",
        ),
        pair_kd_weight=(
            _WEIGHT,
            "student: weight of Structured KD's pair-wise KD (cosine affinities of max-pooled "
            "nodes of kd_feature_layer); 0 = off (upstream 0.5)",
        ),
        holistic_kd_weight=(
            _WEIGHT,
            "student: weight of Structured KD's holistic KD (a WGAN-GP critic on softmax score "
            "maps); 0 = off (upstream 0.1)",
        ),
        adaptation_weight=(
            _WEIGHT,
            "student: weight of knowledge adaptation (L1 gap of the teacher's auto-encoder codes "
            "and the student's adapter codes); 0 = off (upstream 50)",
        ),
        affinity_weight=(
            _WEIGHT,
            "student: weight of affinity distillation (pixel x pixel cosine affinity; of the KA "
            "codes if adaptation_weight > 0, else of the features); 0 = off (upstream 1)",
        ),
        pair_kd_node_scale=(
            Number(0, 1, lo_open=True),
            "pair-wise KD: node (max-pool window) size as a fraction of the feature map's height "
            "and width; 0.5 = 2 x 2 nodes (Structured KD)",
        ),
        critic_learning_rate=(
            Number(0, lo_open=True),
            "holistic KD: Adam learning rate of the WGAN-GP critic (betas 0.9, 0.99)",
        ),
        critic_gp_weight=(
            Number(0),
            "holistic KD: weight of the critic's gradient penalty; 0 = none (upstream 10)",
        ),
        kd_feature_layer=(
            FEATURE_LAYERS,
            "the layer whose features the feature terms (pair-wise, adaptation, affinity) read",
        ),
        ka_code_features=(
            _count(1),
            "knowledge adaptation: channels of the auto-encoder's code, before scaling by width",
        ),
        ka_autoencoder_steps=(
            _count(),
            "knowledge adaptation: Adam steps pre-training the auto-encoder on the frozen "
            "teacher's features, before the student's first step",
        ),
        ka_autoencoder_learning_rate=(
            Number(0, lo_open=True),
            "knowledge adaptation: Adam learning rate of the auto-encoder's pre-training",
        ),
        alpha=(
            Number(0),
            "teacher: depth similarity sharpness, per metre: H = exp(-alpha * |depth difference|) "
            "weighs each D-Conv tap; 0 makes H = 1 (plain convs)",
        ),
        depth_aware_layers=(
            DEPTH_AWARE_LAYER_CHOICES,
            "teacher: its D-Convs: 'all' (the paper: every 3x3 conv and fc6) or 'block_first' "
            "(Depth-aware CNN: conv1_1, conv2_1, ..., conv5_1 and fc6)",
        ),
        width=(
            Number(0, lo_open=True),
            "multiplier of every hidden width of DeepLab-VGG16; 1 = full width (small for CPU)",
        ),
        dropout_rate=(
            Number(0, 1, hi_open=True),
            "dropout rate after fc6 and fc7 in training; 0 = none",
        ),
        dtype=(
            DTYPES,
            "the network's compute dtype; params, optimiser state and losses stay float32",
        ),
    ),
    **_section(
        "Optimisation",
        optimizer=(
            OPTIMIZERS,
            "'sgd' (with momentum) or 'adam', on the poly learning-rate schedule",
        ),
        learning_rate=(
            Number(0, lo_open=True),
            "initial learning rate of the poly schedule "
            "learning_rate * (1 - step / num_train_steps) ** lr_power",
        ),
        momentum=(Number(0, 1, hi_open=True), "SGD momentum; 0 = none (adam ignores it)"),
        weight_decay=(
            Number(0),
            "L2 weight decay: weight_decay * params added to the gradient before the optimizer; "
            "0 = off",
        ),
        lr_power=(
            Number(0),
            "power of the poly learning-rate decay; 0 = a constant learning rate",
        ),
        batch_size=(
            _count(1),
            "the global batch: training images per step over all devices and hosts "
            "(a multiple of the device count)",
        ),
        num_train_steps=(
            _count(1),
            "training steps of the run (the poly schedule reaches 0 at the last)",
        ),
        seed=(
            _count(0, 2**32 - 1),
            "random seed of the initial params, dropout, the data order and the augmentation",
        ),
    ),
    **_section(
        "Execution",
        parallel=(
            PARALLEL,
            "data parallelism: 'jit' (jax.jit over a NamedSharding 'data' mesh) or 'pmap' "
            "(jax.pmap, gradients summed with lax.psum)",
        ),
        num_devices=(_count(), "local devices to train on; 0 = all (must be 0 on multi-host runs)"),
        stop_after_steps=(
            _count(),
            "save and stop at this step (rerun the same command to resume); 0 = run to "
            "num_train_steps",
        ),
        progress_bar=(
            None,
            "True: a tqdm bar on a terminal, one log line per logged step off a terminal; "
            "False: neither",
        ),
        write_curves=(
            None,
            "True: write <workdir>/curves.png (training loss and test mIoU) when the run ends",
        ),
        divergence_factor=(
            Number(0),
            "stop, saving nothing of that step, when the cross-entropy exceeds this x its median "
            "over the last 100 steps; 0 = off, else > 1",
        ),
    ),
    **_section(
        "Logging, evaluation, checkpoints",
        log_every_steps=(
            _count(1),
            "steps between logged metrics (log line, metrics.jsonl, TensorBoard) and the host's "
            "checks for non-finite or diverging losses",
        ),
        eval_every_steps=(
            _count(),
            "steps between test-set evaluations (each saves a checkpoint); 0 = only at the end",
        ),
        eval_batch_size=(
            _count(),
            "test images per evaluation batch over all devices; 0 = one image per device",
        ),
        eval_pad_to=(
            _PAIR,
            "(height, width) canvas, two positive ints, every test image is padded into at the "
            "bottom/right (one program for mixed sizes); (0, 0) = the test split's largest size",
        ),
        checkpoint_every_steps=(
            _count(1),
            "steps between periodic checkpoints (also saved at each evaluation and at the end)",
        ),
        max_checkpoints_to_keep=(
            _count(1),
            "the newest checkpoints kept; the best by test mIoU is kept as well",
        ),
    ),
}


# The groups of FIELDS, in their order.
SECTIONS = tuple(dict.fromkeys(field.section for field in FIELDS.values()))


def field_error(name: str, message: str) -> ConfigError:
    """The error of a bad config field: ``config.<name>: <message>``."""
    return ConfigError(f"config.{name}: {message}")


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


def allowed_values(check) -> str:
    """What a field whose check is ``check`` may hold, in words ('' when it is free-form)."""
    if isinstance(check, Number):
        return _describe(check)
    if check == _PAIR:
        return "a pair"
    if isinstance(check, tuple):
        return "one of " + ", ".join(repr(choice) for choice in check)
    return ""


def describe_fields(config, *, flag: str = "config", width: int = 100) -> str:
    """Every field of ``config`` as ``--help`` lists it, grouped by :data:`SECTIONS`.

    Each field is a line ``  --<flag>.<name>=<value>`` with its value in ``config`` (shell-quoted:
    the line can be pasted onto a command line), then its :attr:`Field.help` and allowed values
    (:func:`allowed_values`), wrapped to ``width``. A field of ``config`` that :data:`FIELDS`
    does not know is listed last under "Other"; one that ``config`` lacks says so.
    """
    indent = " " * 6
    lines = [f"Config fields, with this config's values (--{flag}.<name>=<value> sets one):"]

    def add(name: str, text: str, allowed: str = "") -> None:
        value = f"={shlex.quote(str(config[name]))}" if name in config else " (not in this config)"
        lines.append(f"  --{flag}.{name}{value}")
        wrap = dict(initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False)
        lines.extend(textwrap.wrap(text, width, break_long_words=False, **wrap))
        if allowed:
            lines.extend(textwrap.wrap(f"(allowed: {allowed})", width, **wrap))

    for section in SECTIONS:
        lines += ["", f"{section}:"]
        for name, field in FIELDS.items():
            if field.section == section:
                add(name, field.help, allowed_values(field.check))
    other = [str(name) for name in config.keys() if name not in FIELDS]
    if other:
        lines += ["", "Other:"]
        for name in other:
            add(name, "not a field of drd_jax.config.FIELDS (validate_config ignores it)")
    return "\n".join(lines) + "\n"


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


def _is_int(v) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _check_scale_range(value) -> None:
    """``(min, max)`` finite numbers with ``0 < min <= max`` (the input pipeline's rescale)."""
    numbers = all(
        isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
        for v in value
    )
    if not (numbers and all(math.isfinite(v) for v in value) and 0 < value[0] <= value[1]):
        raise field_error(
            "scale_range", f"must be (min, max) with 0 < min <= max, finite, got {value!r}"
        )


def _check_pretrained(config) -> None:
    """``init='imagenet'``: ``pretrained_path`` is VGG16 weights that fit ``config.width``
    (``pretrained.check_vgg16_file``: the file's layout only, not its arrays)."""
    if not config.pretrained_path:
        raise field_error("pretrained_path", "init='imagenet' needs a VGG16 weights file")
    from drd_jax import pretrained

    try:
        pretrained.check_vgg16_file(
            config.pretrained_path, width=config.width, width_name="config.width"
        )
    except (OSError, ValueError) as e:
        raise field_error("pretrained_path", str(e).strip()) from None


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ``ConfigError`` (a ``ValueError``) naming the first bad field (``config.<field>``).

    Checks every field of :data:`FIELDS` (its allowed values), then the rules between fields and
    what is cheap to check outside the config: the dataset's builder and builder config, pairs
    (``crop_size``, ``scale_range``, ``eval_pad_to``), a ``teacher_workdir`` only in student mode,
    a ``seed`` that leaves room for knowledge adaptation's ``seed + 1``, and with
    ``init='imagenet'`` the ``pretrained_path`` file (exists, readable, VGG16 weights of the
    model's ``width``; its layout only). A run calls it before it writes anything.
    """
    missing = [name for name in FIELDS if name not in config]
    if missing:
        raise ConfigError(f"config is missing the fields {missing} (see experiments/configs/)")
    for name, field in FIELDS.items():
        _check_field(config, name, field.check)
    _check_dataset(config.dataset)
    if not all(_is_int(v) and v > 0 for v in config.crop_size):
        raise field_error("crop_size", f"must be two positive ints, got {config.crop_size!r}")
    _check_scale_range(config.scale_range)
    pad = config.eval_pad_to
    if not (all(_is_int(v) and v >= 0 for v in pad) and (pad[0] > 0) == (pad[1] > 0)):
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
    if config.teacher_workdir and config.mode != "student":
        raise field_error(
            "teacher_workdir",
            f"only a student uses a teacher, got mode={config.mode!r} with teacher_workdir="
            f"{config.teacher_workdir!r} (it would be ignored); set it to '' or use mode='student'",
        )
    if config.mode == "student" and config.adaptation_weight and config.seed >= 2**32 - 1:
        raise field_error(
            "seed",
            f"must be below {2**32 - 1} with knowledge adaptation (adaptation_weight > 0: its "
            f"auto-encoder stage reads the data with seed + 1), got {config.seed!r}",
        )
    if config.init == "imagenet":
        _check_pretrained(config)


def fingerprint(config: ml_collections.ConfigDict) -> str:
    """The config fingerprint of a run (``FINGERPRINT_IGNORE`` and ``teacher_workdir`` left out).

    A run that uses none of the seed papers' methods (``KD_WEIGHT_FIELDS``) also leaves out every
    field of those methods (``KD_FIELDS``), and the ``ADDED_FIELDS`` that hold the value runs had
    before them: they do not change what it computes, and runs written before the fields existed
    keep their fingerprint (so they are still resumed and reused). A non-empty
    ``teacher_workdir`` is where the teacher is, not which one: it is left out too, and a student
    records its teacher's params fingerprint instead (``runs``), so that a run directory moved or
    copied with its teacher is the same run.
    """
    where = ("teacher_workdir",) if config.get("teacher_workdir") else ()  # "": as always
    return _fingerprint(config, FINGERPRINT_IGNORE + where)


def legacy_fingerprints(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The other fingerprints earlier versions gave ``config``: with its ``teacher_workdir``
    (a student's), so that runs recorded under them are still resumed and reused in place."""
    if not config.get("teacher_workdir"):
        return ()
    return (_fingerprint(config, FINGERPRINT_IGNORE),)


def _fingerprint(config: ml_collections.ConfigDict, ignore: tuple[str, ...]) -> str:
    if not uses_kd_methods(config):
        ignore = ignore + KD_FIELDS
    ignore = ignore + tuple(f for f, old in ADDED_FIELDS.items() if config.get(f, old) == old)
    return hash_config(config.to_dict(), ignore=ignore)


def resolve_data_dir(config) -> str:
    """``config.data_dir``, else ``$DRD_DATA_DIR``, else ``~/tensorflow_datasets``."""
    d = config.data_dir or os.environ.get("DRD_DATA_DIR") or "~/tensorflow_datasets"
    return str(pathlib.Path(d).expanduser())


def hash_config(config: Mapping[str, Any], *, ignore: Iterable[str] = ()) -> str:
    """SHA-256 hex digest of the canonical JSON of ``config``: what :func:`fingerprint` records.

    Canonical: keys sorted, no whitespace, tuples as lists, numpy/JAX scalars as Python numbers, so
    the same config gives the same digest in every process and Python version.

    Args:
      config: a mapping (or ``ml_collections.ConfigDict``) of JSON-able values.
      ignore: keys left out, e.g. ``("workdir",)``; dotted names (``"data.data_dir"``) reach into
        nested mappings. Missing keys are fine.

    Raises:
      TypeError: if a value cannot be written as JSON.
    """
    tree = to_json_value(config)
    if not isinstance(tree, dict):
        raise TypeError(f"config must be a mapping, got {type(config).__name__}")
    for name in ignore:
        _drop(tree, name)
    text = json.dumps(tree, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _drop(tree: dict, dotted: str) -> None:
    """Removes ``tree``'s key at the dotted path ``dotted``, if there is one."""
    *parents, leaf = dotted.split(".")
    for name in parents:
        tree = tree.get(name)
        if not isinstance(tree, dict):
            return
    tree.pop(leaf, None)
