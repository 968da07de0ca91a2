"""Training and evaluation of the DeepLab-VGG16 teacher, student and baseline (flax-examples shape).

``train_and_evaluate(config, workdir)`` runs one of three modes (``config.mode``):

* ``'baseline'``: RGB only, plain convs, pixel-wise cross-entropy (BL).
* ``'teacher'``: RGB-D, depth-aware convs (D-Conv), cross-entropy (TN).
* ``'student'``: RGB only, plain convs, ``CE + config.vtce_weight * VTCE`` against a frozen teacher
  restored from ``config.teacher_workdir`` (its best-by-mIoU checkpoint, or its latest with
  ``config.teacher_checkpoint='latest'``). The teacher's logits are computed inside the jitted step,
  with depth, under ``stop_gradient``; the teacher is never checkpointed with the student.
  ``config.init``: ``'teacher'`` (parameter sharing: the student starts from a copy of the
  teacher's param tree), ``'scratch'`` or ``'imagenet'`` (``merge_pretrained`` from
  ``config.pretrained_path``).
  The ablation rows: BL+VTCE = student/scratch; BL+PS = student/teacher with ``vtce_weight=0``;
  BL+PS+VTCE = student/teacher.

Loss: the per-pixel losses are averaged over the valid (non-void) pixels of the whole *global*
batch (sum over every device's pixels / global count), so one step gives the same gradient whatever
the device layout. VTCE temperature: ``vtce_temperature(state.step, num_train_images=N,
batch_size=global batch, beta=config.beta)``.

Optimiser: SGD with momentum and L2 weight decay added to the gradient (``add_decayed_weights``, as
Caffe does; biases are decayed too), or Adam (``config.optimizer='adam'``); learning rate
``lr * (1 - step / num_train_steps) ** lr_power`` (poly).

Data parallel: one :func:`train_step` and two thin wrappers (:class:`DataParallel`):

* ``config.parallel='jit'``: ``jax.jit`` over a ``Mesh`` of ``jax.devices()`` with axis ``'data'``;
  batches are global arrays sharded along the batch dimension (``NamedSharding(mesh, P('data'))``),
  the state is replicated (``P()``); XLA inserts the gradient all-reduce.
* ``config.parallel='pmap'``: ``jax.pmap`` with ``axis_name='batch'``; batches carry a leading
  device axis (the input pipeline's ``num_devices``), the state is replicated along it, and the step
  reduces gradients and metrics with ``lax.psum`` (a sum of per-device sums over the global valid
  pixel count: the mean over the global batch).

Dropout: the key of step ``s`` is ``fold_in(state.dropout_rng, s)``; with pmap it is further
folded with the device index, so the dropout masks of the two paths differ (their results agree
only with ``dropout_rate=0``, which is what the equivalence test uses).

Multi-host (GPU/TPU pods): call ``jax.distributed.initialize()`` before anything else in every
process (``experiments/train.py`` does when ``--multihost`` is given). Each process then reads its
own shard of every batch (``process_index`` / ``process_count`` are passed to the input pipeline);
``config.batch_size`` is the global batch. The jit path assembles global arrays with
``jax.make_array_from_process_local_data``; the pmap path uses the local devices of each process.
Only process 0 writes logs and ``final_metrics.json``; orbax coordinates checkpoint writes.

Resume: the workdir's ``Checkpointer`` saves every ``config.checkpoint_every_steps`` steps
(params, optimiser state, step, dropout RNG), at every evaluation (``config.eval_every_steps``,
with its metrics) and once at the end with the final eval metrics (the best checkpoint by
``mean_iou`` is kept). A rerun with the same config restores the latest checkpoint and continues
from its step, including the data position (the input pipeline's ``start_step``), so an
interrupted run ends with the same parameters as an uninterrupted one. A workdir written with
another config is refused; the fields in ``FINGERPRINT_IGNORE`` (how, not what, is computed) may
change between runs. ``config.stop_after_steps = k`` saves at step ``k`` and returns (for
time-limited jobs and tests).

Faults: a non-finite loss, gradient or parameter stops the run with ``FloatingPointError`` naming
the step (the step counter before the failing update). So does a loss that explodes while finite
(``divergence.TrainingDivergedError``, a ``FloatingPointError``): the cross-entropy above
``config.divergence_factor`` × its median over the last 100 steps (after 10 steps; 0 = off). In
both cases the error is logged, the bad state is never saved, so the newest checkpoint is the last
good one, and the message names it. ``divergence_factor`` is not in the fingerprint: rerunning
with a larger value (or 0) resumes from that checkpoint. Config errors raise ``ValueError``
naming the field (``config.<field>``).

Outputs in ``workdir``: ``config.json``, ``checkpoints/``, ``metrics.jsonl``, ``tensorboard/``,
``curves.png`` (see ``MetricWriter``) and ``final_metrics.json`` (written atomically)::

    {"mode", "init", "dataset", "steps", "params_fingerprint", "config_fingerprint",
     "pixel_accuracy", "mean_pixel_accuracy", "mean_iou", "per_class_iou": {name: iou},
     "per_class_pixel_accuracy": {name: acc}, "class_names", "num_present_classes", "num_pixels",
     "confusion_matrix"}
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import json
import logging
import math
import os
import pathlib
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state

from drd_jax import distillation as distillation_lib
from drd_jax import input_pipeline, losses, metrics
from drd_jax.checkpointing import Checkpointer, config_fingerprint
from drd_jax.divergence import DivergenceMonitor, TrainingDivergedError
from drd_jax.files import atomic_write_text
from drd_jax.metric_writers import MetricWriter
from drd_jax.models import FEATURE_LAYERS, DeepLabVGG16, apply_with_features
from drd_jax.parallel import PARALLEL, DataParallel

__all__ = [
    "DataParallel",
    "TrainState",
    "create_train_state",
    "eval_step",
    "evaluate_run",
    "RunCheckpoint",
    "load_run",
    "load_teacher",
    "read_run_config",
    "make_learning_rate_fn",
    "make_model",
    "make_optimizer",
    "params_fingerprint",
    "train_and_evaluate",
    "train_step",
    "validate_config",
]

MODES = ("baseline", "teacher", "student")
# Distillation weights beside vtce_weight (drd_jax.distillation); > 0 switches a term on.
KD_WEIGHT_FIELDS = (
    "pixel_kd_weight",
    "pair_kd_weight",
    "holistic_kd_weight",
    "adaptation_weight",
    "affinity_weight",
)
# Every field of those methods (weights and hyper-parameters).
KD_FIELDS = (
    *KD_WEIGHT_FIELDS,
    "pair_kd_node_scale",
    "critic_learning_rate",
    "critic_gp_weight",
    "kd_feature_layer",
    "ka_code_features",
    "ka_autoencoder_steps",
    "ka_autoencoder_learning_rate",
)
INITS = ("scratch", "teacher", "imagenet")
OPTIMIZERS = ("sgd", "adam")
TEACHER_CHECKPOINTS = ("best", "latest")
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
)
FINAL_METRICS_NAME = "final_metrics.json"


class TrainState(train_state.TrainState):
    """flax ``TrainState`` plus the dropout key (raw uint32 key data; step ``s`` uses
    ``fold_in(dropout_rng, s)``) and the networks some distillation methods train beside the
    student (None when unused; see ``drd_jax.distillation``): the holistic loss's ``critic`` and
    knowledge adaptation's ``adapter`` (each a flax ``TrainState`` with its own optimiser) and
    its pre-trained, then frozen, ``autoencoder_params``."""

    dropout_rng: jax.Array
    critic: train_state.TrainState | None = None
    adapter: train_state.TrainState | None = None
    autoencoder_params: Any = None


# ----------------------------------------------------------------------------------------------
# Config validation.

_REQUIRED = (
    "dataset",
    "data_dir",
    "crop_size",
    "scale_range",
    "flip_prob",
    "color_jitter",
    "num_workers",
    "mode",
    "init",
    "teacher_workdir",
    "teacher_checkpoint",
    "pretrained_path",
    "vtce_weight",
    "beta",
    *KD_FIELDS,
    "alpha",
    "depth_aware_layers",
    "width",
    "dropout_rate",
    "optimizer",
    "learning_rate",
    "momentum",
    "weight_decay",
    "lr_power",
    "batch_size",
    "num_train_steps",
    "seed",
    "parallel",
    "num_devices",
    "stop_after_steps",
    "progress_bar",
    "write_curves",
    "divergence_factor",
    "log_every_steps",
    "eval_every_steps",
    "eval_batch_size",
    "checkpoint_every_steps",
    "max_checkpoints_to_keep",
)


def _field_error(name: str, message: str) -> ValueError:
    return ValueError(f"config.{name}: {message}")


def _check_choice(config, name: str, choices: tuple[str, ...]) -> None:
    if config[name] not in choices:
        raise _field_error(name, f"must be one of {choices}, got {config[name]!r}")


def _check_number(
    config,
    name: str,
    lo: float,
    hi: float = math.inf,
    *,
    integer=False,
    lo_open=False,
    hi_open=False,
) -> None:
    v = config[name]
    if isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating):
        raise _field_error(name, f"must be a number, got {v!r}")
    if integer and int(v) != v:
        raise _field_error(name, f"must be an integer, got {v!r}")
    if not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi):
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise _field_error(name, f"must be in {lb}{lo}, {hi}{rb}, got {v!r}")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ``ValueError`` naming the first bad field (``config.<field>: ...``)."""
    missing = [name for name in _REQUIRED if name not in config]
    if missing:
        raise ValueError(f"config is missing the fields {missing} (see experiments/configs/)")
    _check_choice(config, "mode", MODES)
    _check_choice(config, "init", INITS)
    _check_choice(config, "optimizer", OPTIMIZERS)
    _check_choice(config, "parallel", PARALLEL)
    _check_choice(config, "teacher_checkpoint", TEACHER_CHECKPOINTS)
    name = str(config.dataset).partition("/")[0]
    if not name or importlib.util.find_spec(f"tfds_builders.{name}") is None:
        raise _field_error("dataset", f"no builder tfds_builders.{name} for {config.dataset!r}")
    if config.init == "teacher" and config.mode != "student":
        raise _field_error(
            "init", f"'teacher' (parameter sharing) needs mode='student', got mode={config.mode!r}"
        )
    for field in KD_WEIGHT_FIELDS:
        _check_number(config, field, 0)
        if config[field] and config.mode != "student":
            raise _field_error(field, f"distillation needs mode='student', got {config.mode!r}")
    distills = any(config[f] for f in ("vtce_weight", *KD_WEIGHT_FIELDS))
    needs_teacher = config.mode == "student" and (config.init == "teacher" or distills)
    if needs_teacher and not config.teacher_workdir:
        raise _field_error(
            "teacher_workdir",
            "student mode with init='teacher' or a distillation weight > 0 needs the teacher "
            "run's workdir",
        )
    _check_choice(config, "kd_feature_layer", FEATURE_LAYERS)
    if config.init == "imagenet" and not config.pretrained_path:
        raise _field_error("pretrained_path", "init='imagenet' needs a VGG16 weights file")
    for field, lo, hi in (
        ("batch_size", 1, math.inf),
        ("num_train_steps", 1, math.inf),
        ("log_every_steps", 1, math.inf),
        ("checkpoint_every_steps", 1, math.inf),
        ("max_checkpoints_to_keep", 1, math.inf),
        ("eval_every_steps", 0, math.inf),
        ("eval_batch_size", 0, math.inf),
        ("stop_after_steps", 0, math.inf),
        ("num_devices", 0, math.inf),
        ("num_workers", 0, math.inf),
        ("seed", 0, 2**32 - 1),
        ("ka_code_features", 1, math.inf),
        ("ka_autoencoder_steps", 0, math.inf),
    ):
        _check_number(config, field, lo, hi, integer=True)
    _check_number(config, "learning_rate", 0, lo_open=True)
    _check_number(config, "momentum", 0, 1, hi_open=True)
    _check_number(config, "weight_decay", 0)
    _check_number(config, "lr_power", 0)
    _check_number(config, "width", 0, lo_open=True)
    _check_number(config, "alpha", 0)
    _check_number(config, "beta", 0, lo_open=True)
    _check_number(config, "vtce_weight", 0)
    _check_number(config, "divergence_factor", 0)
    if 0 < config.divergence_factor <= 1:
        raise _field_error(
            "divergence_factor", f"must be 0 (off) or > 1, got {config.divergence_factor!r}"
        )
    _check_number(config, "pair_kd_node_scale", 0, 1, lo_open=True)
    _check_number(config, "critic_learning_rate", 0, lo_open=True)
    _check_number(config, "critic_gp_weight", 0)
    _check_number(config, "ka_autoencoder_learning_rate", 0, lo_open=True)
    _check_number(config, "dropout_rate", 0, 1, hi_open=True)
    _check_number(config, "flip_prob", 0, 1)
    _check_number(config, "color_jitter", 0, 1, hi_open=True)
    for field in ("crop_size", "scale_range"):
        v = config[field]
        if not isinstance(v, list | tuple) or len(v) != 2:
            raise _field_error(field, f"must be a pair, got {v!r}")
    if not all(isinstance(v, int) and v > 0 for v in config.crop_size):
        raise _field_error("crop_size", f"must be two positive ints, got {config.crop_size!r}")


def uses_kd_methods(config) -> bool:
    """Whether a config switches on any distillation method besides VTCE (``KD_WEIGHT_FIELDS``;
    configs written before those fields existed have none)."""
    return any(config.get(f) for f in KD_WEIGHT_FIELDS)


def fingerprint(config: ml_collections.ConfigDict) -> str:
    """The config fingerprint of a run (``FINGERPRINT_IGNORE`` left out).

    A run that uses none of the ``KD_WEIGHT_FIELDS`` also leaves out every field of those methods
    (``KD_FIELDS``): they do not change what it computes, and runs written before the fields
    existed keep their fingerprint (so they are still resumed and reused).
    """
    ignore = FINGERPRINT_IGNORE
    if not uses_kd_methods(config):
        ignore = ignore + KD_FIELDS
    return config_fingerprint(config.to_dict(), ignore=ignore)


# ----------------------------------------------------------------------------------------------
# Model, optimiser, state.


def make_model(config, num_classes: int, *, depth_aware: bool | None = None) -> DeepLabVGG16:
    """The DeepLabVGG16 of ``config`` (depth-aware iff ``mode == 'teacher'`` unless given)."""
    if depth_aware is None:
        depth_aware = config.mode == "teacher"
    return DeepLabVGG16(
        num_classes=num_classes,
        width=config.width,
        depth_aware=depth_aware,
        alpha=config.alpha,
        depth_aware_layers=config.depth_aware_layers,
        dropout_rate=config.dropout_rate,
    )


def make_learning_rate_fn(config) -> optax.Schedule:
    """Poly schedule ``lr * (1 - step / num_train_steps) ** lr_power``."""
    return optax.polynomial_schedule(
        init_value=config.learning_rate,
        end_value=0.0,
        power=config.lr_power,
        transition_steps=config.num_train_steps,
    )


def make_optimizer(config) -> optax.GradientTransformation:
    """SGD (momentum, L2 weight decay added to the gradient) or Adam, on the poly schedule."""
    lr_fn = make_learning_rate_fn(config)
    if config.optimizer == "sgd":
        opt = optax.sgd(lr_fn, momentum=config.momentum or None)
    else:
        opt = optax.adam(lr_fn)
    if config.weight_decay:
        return optax.chain(optax.add_decayed_weights(config.weight_decay), opt)
    return opt


@functools.lru_cache(maxsize=8)
def _jitted_init(model: DeepLabVGG16, shape: tuple[int, ...]) -> Callable:
    return jax.jit(lambda rng: model.init(rng, jnp.zeros(shape, jnp.float32))["params"])


def _init_params(config, rng: jax.Array, num_classes: int) -> dict:
    # The teacher and the student share one param tree: initialise with the plain model (cheaper
    # to compile) whatever the mode. The jitted init is cached per (model, input shape).
    model = make_model(config, num_classes, depth_aware=False)
    h, w = config.crop_size
    return _jitted_init(model, (1, int(h), int(w), 3))(rng)


def _check_same_tree(params, like, what: str) -> None:
    a = jax.tree.map(lambda x: (tuple(np.shape(x)), str(jnp.result_type(x))), params)
    b = jax.tree.map(lambda x: (tuple(np.shape(x)), str(jnp.result_type(x))), like)
    if jax.tree.structure(a) != jax.tree.structure(b) or jax.tree.leaves(a) != jax.tree.leaves(b):
        raise ValueError(f"{what} does not have the model's param tree (another width?)")


def create_train_state(
    config,
    rng: jax.Array,
    *,
    num_classes: int,
    teacher_params: Any = None,
    pretrained: Mapping[str, Any] | None = None,
) -> TrainState:
    """A fresh (host, unreplicated) train state.

    Args:
      config: the run config.
      rng: a ``jax.random.PRNGKey``; split into the init key and the dropout key.
      num_classes: K.
      teacher_params: with ``config.init='teacher'``, the teacher's param tree (copied).
      pretrained: with ``config.init='imagenet'``, ``load_vgg16_params`` output (read from
        ``config.pretrained_path`` when None).
    """
    init_rng, dropout_rng = jax.random.split(rng)
    params = _init_params(config, init_rng, num_classes)
    if config.init == "teacher":
        if teacher_params is None:
            raise ValueError("config.init='teacher' needs teacher_params (see load_teacher)")
        _check_same_tree(teacher_params, params, "the teacher's param tree")
        params = jax.tree.map(lambda x: jnp.array(x, copy=True), teacher_params)
    elif config.init == "imagenet":
        from drd_jax import pretrained as pretrained_lib

        if pretrained is None:
            pretrained = pretrained_lib.load_vgg16_params(config.pretrained_path)
        params = pretrained_lib.merge_pretrained(params, pretrained)
    model = make_model(config, num_classes)
    tx = make_optimizer(config)
    extra = {}
    if config.mode == "student" and uses_kd_methods(config):
        distillation = distillation_lib.make_distillation(config)
        extra = distillation_lib.init_distillation_state(
            config,
            distillation,
            jax.random.fold_in(init_rng, 1),
            num_classes=num_classes,
            student_tx=tx,
        )
    return TrainState.create(
        apply_fn=model.apply, params=params, tx=tx, dropout_rng=dropout_rng, **extra
    )


def params_fingerprint(params: Any) -> str:
    """sha256 of the float32 bytes of ``jax.tree.leaves(params)``, in tree order."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(jax.device_get(params)):
        h.update(np.ascontiguousarray(np.asarray(leaf, dtype=np.float32)).tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Steps.


def _psum(x, axis_name):
    return x if axis_name is None else jax.lax.psum(x, axis_name)


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    teacher_params: Any = None,
    *,
    num_classes: int,
    use_depth: bool,
    learning_rate_fn: Callable[[Any], Any],
    distillation: distillation_lib.Distillation | None = None,
    num_train_images: int = 1,
    global_batch_size: int = 1,
    axis_name: str | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step on a batch; ``axis_name`` set under ``pmap`` (sums over devices).

    With ``distillation`` (a student with a frozen teacher, ``teacher_params``), the loss is
    ``CE + Σ weight · term`` over its active terms (``distillation.student_distillation_terms``);
    the teacher's logits (and features, codes) come from one forward pass under
    ``stop_gradient``, the student's features from the same forward pass as its logits. The
    knowledge-adaptation adapter is updated with the student; the holistic loss's critic gets
    one WGAN-GP step after them, on this step's (detached) student scores.

    Returns the new state and metrics (global, identical on every device): ``loss``, ``ce_loss``,
    ``vtce_loss`` (0 without VTCE), the other active terms (``pixel_kd_loss``, ``pair_kd_loss``,
    ``holistic_kd_loss``, ``adaptation_loss``, ``affinity_loss``; with a critic also
    ``critic_loss``, ``critic_wasserstein``, ``gradient_penalty``), ``temperature``, ``lr`` (of
    this step), ``grad_norm``, ``valid_pixels`` (global) and ``finite`` (loss, gradients and new
    params all finite).
    """
    labels = batch["label"]
    image = batch["image"]
    depth = batch["depth"]
    valid = losses.valid_label_mask(labels, num_classes=num_classes)
    count = _psum(jnp.sum(valid, dtype=jnp.int32), axis_name)
    denom = jnp.maximum(count, 1).astype(jnp.float32)
    rng = jax.random.fold_in(state.dropout_rng, state.step)
    if axis_name is not None:
        rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
    kd = distillation if distillation is not None and distillation.any_term else None
    beta = kd.beta if kd is not None else 0.9
    temperature = losses.vtce_temperature(
        state.step, num_train_images=num_train_images, batch_size=global_batch_size, beta=beta
    )
    if kd is not None:
        teacher = distillation_lib.teacher_outputs(
            kd, teacher_params, state.autoencoder_params, image, depth
        )
    adapter_params = state.adapter.params if state.adapter is not None else None

    def loss_fn(params, adapter_params):
        variables = {"params": params}
        student_depth = depth if use_depth else None
        rngs = {"dropout": rng}
        features = None
        if kd is not None and kd.needs_features:
            logits, feats = apply_with_features(
                state.apply_fn, variables, image, student_depth, train=True, rngs=rngs
            )
            features = feats[kd.feature_layer]
        else:
            logits = state.apply_fn(variables, image, student_depth, train=True, rngs=rngs)
        ce = jnp.sum(losses.segmentation_cross_entropy(logits, labels, where=valid)) / denom
        terms = {}
        if kd is not None:
            terms = distillation_lib.student_distillation_terms(
                kd,
                logits,
                features,
                teacher,
                valid=valid,
                pixel_denominator=denom,
                image_denominator=float(global_batch_size),
                temperature=temperature,
                adapter_params=adapter_params,
                critic_params=state.critic.params if state.critic is not None else None,
            )
            total = ce + distillation_lib.weighted_sum(kd, terms)
        else:
            total = ce
        return total, (ce, terms, logits)

    (loss, (ce, terms, logits)), (grads, adapter_grads) = jax.value_and_grad(
        loss_fn, argnums=(0, 1), has_aux=True
    )(state.params, adapter_params)
    grads, adapter_grads = _psum((grads, adapter_grads), axis_name)
    loss, ce, terms = _psum((loss, ce, terms), axis_name)
    new_state = state.apply_gradients(grads=grads)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite(new_state.params)
    out = {"loss": loss, "ce_loss": ce, "vtce_loss": jnp.zeros((), jnp.float32), **terms}
    if state.adapter is not None:
        new_state = new_state.replace(adapter=state.adapter.apply_gradients(grads=adapter_grads))
        finite &= _all_finite(new_state.adapter.params)
    if kd is not None and kd.holistic_weight > 0:
        (critic_loss, (wasserstein, penalty)), critic_grads = jax.value_and_grad(
            distillation_lib.critic_loss, has_aux=True
        )(
            state.critic.params,
            kd.critic,
            jax.nn.softmax(teacher[0]),
            jax.nn.softmax(logits),
            epsilon=distillation_lib.penalty_weights(
                state.dropout_rng,
                state.step,
                local_batch=image.shape[0],
                global_batch=global_batch_size,
                axis_name=axis_name,
            ),
            gp_weight=kd.gp_weight,
            image_denominator=float(global_batch_size),
        )
        critic_grads, critic_loss, wasserstein, penalty = _psum(
            (critic_grads, critic_loss, wasserstein, penalty), axis_name
        )
        new_state = new_state.replace(critic=state.critic.apply_gradients(grads=critic_grads))
        finite &= jnp.isfinite(critic_loss) & _all_finite(new_state.critic.params)
        out.update(
            critic_loss=critic_loss, critic_wasserstein=wasserstein, gradient_penalty=penalty
        )
    out.update(
        temperature=temperature.astype(jnp.float32),
        lr=jnp.asarray(learning_rate_fn(state.step), jnp.float32),
        grad_norm=grad_norm,
        valid_pixels=count,
        finite=finite,
    )
    return new_state, out


def eval_step(
    params: Any,
    batch: Mapping[str, jax.Array],
    *,
    model: DeepLabVGG16,
    num_classes: int,
    use_depth: bool,
    axis_name: str | None = None,
) -> jax.Array:
    """Confusion matrix (K, K) of a batch (padding examples, ``index < 0``, excluded)."""
    logits = model.apply(
        {"params": params}, batch["image"], batch["depth"] if use_depth else None, train=False
    )
    where = (batch["index"] >= 0)[:, None, None]
    cm = metrics.confusion_matrix(
        batch["label"], jnp.argmax(logits, axis=-1), num_classes=num_classes, where=where
    )
    return _psum(cm, axis_name)


# ----------------------------------------------------------------------------------------------
# Teacher.


class RunCheckpoint(NamedTuple):
    """A trained run read back from its workdir (see :func:`load_run`)."""

    workdir: pathlib.Path
    config: ml_collections.ConfigDict
    params: Any  # host (numpy) param tree
    class_names: list[str]
    step: int

    def make_model(self, **overrides: Any) -> DeepLabVGG16:
        """The run's model (``depth_aware`` as trained unless overridden)."""
        return make_model(self.config, len(self.class_names), **overrides)


def read_run_config(workdir: str | os.PathLike) -> tuple[ml_collections.ConfigDict, str]:
    """``(config, config_fingerprint)`` recorded in ``<workdir>/config.json`` by a training run."""
    workdir = pathlib.Path(workdir).expanduser()
    path = workdir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{workdir} is not a training run: it has no config.json (run experiments.train first)"
        )
    try:
        body = json.loads(path.read_text())
        return ml_collections.ConfigDict(body["config"]), str(body["config_fingerprint"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a drd-jax run config ({e})") from e


def load_run(workdir: str | os.PathLike, *, checkpoint: str = "best") -> RunCheckpoint:
    """Reads a run's params back: its best-by-mIoU checkpoint (else its latest), or its latest.

    Args:
      workdir: a directory written by :func:`train_and_evaluate`.
      checkpoint: ``'best'`` (falls back to the latest when no checkpoint has eval metrics) or
        ``'latest'``.

    Raises:
      FileNotFoundError: not a run directory, or no checkpoint in it.
      ValueError: a bad ``checkpoint`` value or a corrupt/mismatched ``config.json``.
    """
    if checkpoint not in TEACHER_CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {TEACHER_CHECKPOINTS}, got {checkpoint!r}")
    workdir = pathlib.Path(workdir).expanduser().absolute()
    config, config_fp = read_run_config(workdir)
    ckpt = Checkpointer(workdir, config_fingerprint=config_fp, async_save=False, read_only=True)
    try:
        step = ckpt.best_step() if checkpoint == "best" else None
        step = step if step is not None else ckpt.latest_step()
        if step is None:
            raise FileNotFoundError(f"{workdir} has no checkpoint yet")
        extra = ckpt.read_extra(step)
        class_names = extra.get("class_names")
        if not class_names:  # checkpoints written before class names were recorded
            data_dir = resolve_data_dir(config)
            source = input_pipeline.load_data_source(config.dataset, "test", data_dir=data_dir)
            class_names = dataset_class_names(config.dataset, source)
        template_config = ml_collections.ConfigDict(config.to_dict())
        template_config.init = "scratch"  # same tree; no teacher or weights file needed
        template = jax.eval_shape(
            lambda: create_train_state(
                template_config, jax.random.PRNGKey(0), num_classes=len(class_names)
            )
        )
        state, _ = ckpt.restore(step, target=template)
    finally:
        ckpt.close()
    logging.info("restored %s step %d", workdir, step)
    return RunCheckpoint(workdir, config, jax.device_get(state.params), list(class_names), step)


def load_teacher(config, num_classes: int) -> tuple[ml_collections.ConfigDict, Any]:
    """``(teacher_config, teacher_params)`` from ``config.teacher_workdir`` (host arrays)."""
    workdir = pathlib.Path(config.teacher_workdir).expanduser()
    try:
        tconfig, _ = read_run_config(workdir)
    except (FileNotFoundError, ValueError) as e:
        raise _field_error("teacher_workdir", f"{e}; train the teacher there first") from e
    if tconfig.get("mode") != "teacher":
        raise _field_error(
            "teacher_workdir", f"{workdir} is a {tconfig.get('mode')!r} run, not a teacher"
        )
    for field in ("width", "dataset"):
        if tconfig.get(field) != config[field]:
            raise _field_error(
                field,
                f"{config[field]!r} differs from the teacher's {tconfig.get(field)!r} ({workdir})",
            )
    try:
        run = load_run(workdir, checkpoint=config.teacher_checkpoint)
    except FileNotFoundError as e:
        raise _field_error("teacher_workdir", str(e)) from e
    if len(run.class_names) != num_classes:
        raise _field_error(
            "teacher_workdir",
            f"the teacher in {workdir} has {len(run.class_names)} classes, the data {num_classes}",
        )
    logging.info("teacher: %s step %d", workdir, run.step)
    return tconfig, run.params


# ----------------------------------------------------------------------------------------------
# Data.


def resolve_data_dir(config) -> str:
    """``config.data_dir``, else ``$DRD_DATA_DIR``, else ``~/tensorflow_datasets``."""
    d = config.data_dir or os.environ.get("DRD_DATA_DIR") or "~/tensorflow_datasets"
    return str(pathlib.Path(d).expanduser())


def dataset_class_names(dataset: str, source) -> list[str]:
    """Class names from the dataset's metadata (or the builder module's ``CLASS_NAMES``)."""
    info = getattr(source, "dataset_info", None)
    meta = getattr(info, "metadata", None) or {}
    if "class_names" in meta:
        return list(meta["class_names"])
    module = importlib.import_module(f"tfds_builders.{dataset.partition('/')[0]}")
    if not hasattr(module, "CLASS_NAMES"):
        raise ValueError(
            f"config.dataset: the built {dataset!r} records no class names in its metadata; "
            "rebuild it with this version of tfds_builders (python -m tfds_builders.build)"
        )
    return list(module.CLASS_NAMES)


def evaluate(eval_fn, params, eval_ds, par: DataParallel, num_classes: int) -> np.ndarray:
    """The confusion matrix of the whole eval dataset (int64, summed on the host)."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    for batch in eval_ds:
        cm += par.host(eval_fn(params, par.shard_batch(batch))).astype(np.int64)
    return cm


def evaluate_run(
    run: RunCheckpoint, *, depth_aware: bool | None = None, data_dir: str | None = None
) -> dict:
    """``metrics.compute_metrics`` plus ``"confusion_matrix"`` of a run on its test split.

    One device, full resolution, batch 1. ``depth_aware=False`` applies a teacher's params with
    plain convs and no depth: where a parameter-sharing student starts.
    """
    num_classes = len(run.class_names)
    model = run.make_model(depth_aware=depth_aware)
    source = input_pipeline.load_data_source(
        run.config.dataset, "test", data_dir=data_dir or resolve_data_dir(run.config)
    )
    par = DataParallel("jit", 1)
    eval_fn = par.compile(
        functools.partial(
            eval_step, model=model, num_classes=num_classes, use_depth=model.depth_aware
        )
    )
    eval_ds = input_pipeline.create_eval_dataset(source, num_classes=num_classes)
    cm = evaluate(eval_fn, par.put_state(run.params), eval_ds, par, num_classes)
    return {**metrics.compute_metrics(cm), "confusion_matrix": cm.tolist()}


def _summary(cm: np.ndarray) -> dict[str, float]:
    m = metrics.compute_metrics(cm)
    return {
        k: (math.nan if m[k] is None else m[k])
        for k in ("mean_iou", "mean_pixel_accuracy", "pixel_accuracy")
    }


# ----------------------------------------------------------------------------------------------
# The loop.


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Trains (resuming from ``workdir`` if it holds a checkpoint), evaluates on the test split.

    Returns the dict written to ``<workdir>/final_metrics.json``; with ``config.stop_after_steps``
    reached first, ``{"stopped_at_step", "steps", "mode"}`` (no evaluation, nothing written).
    """
    validate_config(config)
    workdir = pathlib.Path(workdir).expanduser().absolute()
    ckpt = Checkpointer(
        workdir,
        config_fingerprint=fingerprint(config),
        config=config.to_dict(),
        max_to_keep=config.max_checkpoints_to_keep,
        save_interval_steps=config.checkpoint_every_steps,
        best_metric="mean_iou",
    )
    try:
        return _train(config, workdir, ckpt)
    finally:
        ckpt.close()


_NOT_LOGGED = ("finite", "valid_pixels")


def _train_iterator(config, source, par: DataParallel, num_classes: int, *, seed, start_step):
    return input_pipeline.create_train_iterator(
        source,
        batch_size=config.batch_size,
        crop_size=tuple(config.crop_size),
        num_classes=num_classes,
        seed=seed,
        start_step=start_step,
        num_devices=par.pipeline_num_devices,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        scale_range=tuple(config.scale_range),
        flip_prob=config.flip_prob,
        color_jitter=config.color_jitter,
        num_workers=config.num_workers,
    )


def _pretrain_autoencoder(
    config,
    state: TrainState,
    distillation: distillation_lib.Distillation,
    teacher_params,
    source,
    par: DataParallel,
    num_classes: int,
    workdir: pathlib.Path,
) -> TrainState:
    """Knowledge adaptation's first stage: ``config.ka_autoencoder_steps`` Adam steps of the
    auto-encoder on the frozen teacher's features (its own data order: ``seed + 1``).

    Logged in ``<workdir>/autoencoder/`` (``metrics.jsonl``, TensorBoard, ``curves.png``):
    ``reconstruction_loss`` of each step's batch (split ``train``) and of one held-out batch
    (the stage's first, not trained on) before and after the stage (split ``eval``, steps 0 and
    the last). The stage runs only before the student's first step: a resumed run restores the
    trained auto-encoder from its checkpoint. Returns ``state`` with the trained
    ``autoencoder_params``.
    """
    steps = int(config.ka_autoencoder_steps)
    ae_state = train_state.TrainState.create(
        apply_fn=distillation.autoencoder.apply,
        params=par.unreplicate(state.autoencoder_params),
        tx=optax.adam(float(config.ka_autoencoder_learning_rate)),
    )
    ae_state = par.put_state(ae_state)
    kw = {"distillation": distillation, "global_batch_size": config.batch_size}
    step_fn = par.compile(
        functools.partial(distillation_lib.autoencoder_step, **kw), donate_state=True
    )
    eval_fn = par.compile(functools.partial(distillation_lib.autoencoder_eval, **kw))
    it = _train_iterator(config, source, par, num_classes, seed=config.seed + 1, start_step=0)
    held_out = par.shard_batch(next(it))
    writer = MetricWriter(
        workdir / "autoencoder",
        resume_step=0,
        active=jax.process_index() == 0,
        curves_on_close=bool(config.write_curves),
    )

    def log_eval(step):
        loss = float(par.host(eval_fn(ae_state.params, held_out, teacher_params)))
        writer.write_scalars(step, {"reconstruction_loss": loss}, split="eval")
        logging.info("auto-encoder %d/%d: held-out reconstruction loss %.6g", step, steps, loss)

    try:
        log_eval(0)
        for step in range(steps):
            ae_state, m = step_fn(ae_state, par.shard_batch(next(it)), teacher_params)
            if (step + 1) % config.log_every_steps == 0 or step + 1 == steps:
                loss = float(par.host(m)["reconstruction_loss"])
                if not math.isfinite(loss):
                    raise FloatingPointError(f"auto-encoder stage: non-finite loss at step {step}")
                writer.write_scalars(step + 1, {"reconstruction_loss": loss}, split="train")
        log_eval(steps)
    finally:
        writer.close()
    return state.replace(autoencoder_params=ae_state.params)


def _check_step(m, step: int, monitor: DivergenceMonitor, ckpt: Checkpointer) -> None:
    """Stops the run (before anything of this step is saved) on a non-finite or exploded step.

    Raises ``FloatingPointError`` (non-finite loss, gradients or params) or
    ``TrainingDivergedError`` (the cross-entropy exploded; see ``drd_jax.divergence``), naming the
    step and the last good checkpoint, after logging the same message.
    """
    last_good = (
        f"the state was not saved; last good checkpoint: step {ckpt.latest_step()} in "
        f"{ckpt.checkpoint_dir}"
    )
    if not bool(m["finite"]):
        message = (
            f"non-finite training loss/gradients/params at step {step} "
            f"(loss={float(m['loss'])}, grad_norm={float(m['grad_norm'])}); {last_good}"
        )
        logging.error(message)
        raise FloatingPointError(message)
    problem = monitor.check(float(m["ce_loss"]))
    if problem is not None:
        message = (
            f"training diverged at step {step}: cross-entropy {problem} "
            f"(loss={float(m['loss']):.3g}, grad_norm={float(m['grad_norm']):.3g}); {last_good}. "
            "Rerun the same command with a larger --config.divergence_factor (0 = off) to resume "
            "from it, or start a new workdir with a lower learning rate"
        )
        logging.error(message)
        raise TrainingDivergedError(message)


def _train(config, workdir: pathlib.Path, ckpt: Checkpointer) -> dict:
    is_main = jax.process_index() == 0
    data_dir = resolve_data_dir(config)
    train_source = input_pipeline.load_data_source(
        config.dataset, "train", data_dir=data_dir, prepare=True
    )
    test_source = input_pipeline.load_data_source(config.dataset, "test", data_dir=data_dir)
    class_names = dataset_class_names(config.dataset, train_source)
    num_classes = len(class_names)
    par = DataParallel(config.parallel, config.num_devices)
    if config.batch_size % par.num_devices:
        raise _field_error(
            "batch_size",
            f"{config.batch_size} must be divisible by the number of devices {par.num_devices}",
        )
    eval_batch = config.eval_batch_size or par.num_devices
    if eval_batch % par.num_devices:
        raise _field_error(
            "eval_batch_size",
            f"{eval_batch} must be divisible by the number of devices {par.num_devices}",
        )

    teacher_model, teacher_params = None, None
    if config.mode == "student" and config.teacher_workdir:
        tconfig, teacher_params = load_teacher(config, num_classes)
        teacher_model = make_model(tconfig, num_classes, depth_aware=True)

    state = create_train_state(
        config,
        jax.random.PRNGKey(config.seed),
        num_classes=num_classes,
        teacher_params=teacher_params,
    )
    start_step = 0
    if ckpt.latest_step() is not None:
        # jit: restore straight into the replicated global arrays (multi-host safe).
        template = state if par.kind == "pmap" else par.put_state(state)
        state, _ = ckpt.restore(target=template)
        start_step = int(state.step)
        logging.info("resumed %s at step %d", workdir, start_step)
    state = par.put_state(state)
    distillation = None
    if teacher_model is not None:
        distillation = distillation_lib.make_distillation(config, teacher_model)
    if distillation is not None and distillation.any_term:
        teacher_params = par.put_state(teacher_params)  # the frozen teacher, on every device
    else:  # baseline, teacher, or BL+PS (no distillation term): no teacher in the step
        distillation, teacher_params = None, None

    model = make_model(config, num_classes)
    lr_fn = make_learning_rate_fn(config)
    use_depth = config.mode == "teacher"
    p_train = par.compile(
        functools.partial(
            train_step,
            num_classes=num_classes,
            use_depth=use_depth,
            learning_rate_fn=lr_fn,
            distillation=distillation,
            num_train_images=len(train_source),
            global_batch_size=config.batch_size,
        ),
        donate_state=True,
    )
    p_eval = par.compile(
        functools.partial(eval_step, model=model, num_classes=num_classes, use_depth=use_depth)
    )
    eval_ds = input_pipeline.create_eval_dataset(
        test_source,
        num_classes=num_classes,
        batch_size=eval_batch,
        num_devices=par.pipeline_num_devices,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    train_iter = _train_iterator(
        config, train_source, par, num_classes, seed=config.seed, start_step=start_step
    )

    total = config.num_train_steps
    end = min(total, config.stop_after_steps) if config.stop_after_steps else total
    writer = MetricWriter(
        workdir, resume_step=start_step, active=is_main, curves_on_close=bool(config.write_curves)
    )
    try:
        if start_step == 0 and distillation is not None and distillation.uses_autoencoder:
            state = _pretrain_autoencoder(
                config, state, distillation, teacher_params, train_source, par, num_classes, workdir
            )
        from tqdm import tqdm

        bar = tqdm(
            total=total,
            initial=start_step,
            desc=config.mode,
            dynamic_ncols=True,
            disable=not (config.progress_bar and is_main),
        )
        last_time, last_step = time.perf_counter(), start_step
        monitor = DivergenceMonitor(float(config.divergence_factor))
        for step in range(start_step, end):
            batch = next(train_iter)
            state, step_metrics = p_train(state, par.shard_batch(batch), teacher_params)
            m = par.host(step_metrics)
            _check_step(m, step, monitor, ckpt)
            new_step = step + 1
            bar.update(1)
            if new_step % config.log_every_steps == 0 or new_step == end:
                now = time.perf_counter()
                ips = (new_step - last_step) * config.batch_size / max(now - last_time, 1e-9)
                last_time, last_step = now, new_step
                scalars = {k: float(v) for k, v in m.items() if k not in _NOT_LOGGED}
                scalars["images_per_sec"] = ips
                writer.write_scalars(new_step, scalars, split="train")
                bar.set_postfix(
                    loss=f"{scalars['loss']:.4f}", lr=f"{scalars['lr']:.2e}", img_s=f"{ips:.1f}"
                )
            if new_step == total:
                break  # the final save (with metrics) follows
            extra = {"data_step": new_step, "class_names": class_names}
            if config.eval_every_steps and new_step % config.eval_every_steps == 0:
                cm = evaluate(p_eval, state.params, eval_ds, par, num_classes)
                summary = _summary(cm)
                writer.write_scalars(new_step, summary, split="eval")
                ckpt.save(
                    new_step, par.unreplicate(state), metrics=summary, extra=extra, force=True
                )
            elif new_step == end:
                ckpt.save(new_step, par.unreplicate(state), extra=extra, force=True)
            else:
                ckpt.save(new_step, par.unreplicate(state), extra=extra)
        bar.close()
        final_step = int(par.host(state.step))
        if final_step < total:
            ckpt.wait()
            return {"stopped_at_step": final_step, "steps": final_step, "mode": config.mode}

        cm = evaluate(p_eval, state.params, eval_ds, par, num_classes)
        summary = _summary(cm)
        writer.write_scalars(total, summary, split="eval")
        ckpt.save(
            total,
            par.unreplicate(state),
            metrics=summary,
            extra={"data_step": total, "class_names": class_names},
            force=True,
        )
        m = metrics.compute_metrics(cm)
        result = {
            "mode": config.mode,
            "init": config.init,
            "dataset": config.dataset,
            "steps": total,
            "params_fingerprint": params_fingerprint(par.unreplicate(state).params),
            "config_fingerprint": fingerprint(config),
            "pixel_accuracy": m["pixel_accuracy"],
            "mean_pixel_accuracy": m["mean_pixel_accuracy"],
            "mean_iou": m["mean_iou"],
            "per_class_iou": dict(zip(class_names, m["per_class_iou"], strict=True)),
            "per_class_pixel_accuracy": dict(
                zip(class_names, m["per_class_pixel_accuracy"], strict=True)
            ),
            "class_names": class_names,
            "num_present_classes": m["num_present_classes"],
            "num_pixels": m["num_pixels"],
            "confusion_matrix": cm.tolist(),
        }
        ckpt.wait()  # final_metrics.json only once the final checkpoint is on disk
        if is_main:
            atomic_write_text(
                workdir / FINAL_METRICS_NAME, json.dumps(result, indent=2, allow_nan=False) + "\n"
            )
            logging.info(
                "final metrics: mIoU %s mPA %s PA %s\n%s",
                m["mean_iou"],
                m["mean_pixel_accuracy"],
                m["pixel_accuracy"],
                metrics.format_confusion_table(cm, class_names),
            )
        return result
    finally:
        writer.close()
