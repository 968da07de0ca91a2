"""Knowledge adaptation's networks and its first stage: the auto-encoder of the teacher's features.

* ``autoencoder_params`` (a :class:`~drd_jax.models.FeatureAutoEncoder`) is pre-trained on the
  frozen teacher's features (``config.ka_autoencoder_steps`` Adam steps of mean squared
  reconstruction error, before the student's first step: :func:`pretrain_autoencoder`), then
  frozen: its codes are the teacher's side of the adaptation loss and, when it is used, of the
  affinity loss.
* ``adapter`` (a :class:`~drd_jax.models.FeatureAdapter`) maps the student's features to the code
  space; it is trained jointly with the student, by the student's optimiser settings.

The code keeps the feature map's resolution, so student and teacher codes align pixel for pixel.
"""

from __future__ import annotations

import functools
import logging
import pathlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from drd_jax import loop
from drd_jax.divergence import all_finite
from drd_jax.metric_writers import MetricWriter
from drd_jax.models import (
    FeatureAdapter,
    FeatureAutoEncoder,
    apply_with_features,
    feature_channels,
    scaled_width,
)
from drd_jax.parallel import DataParallel, sum_over_devices

if TYPE_CHECKING:
    from drd_jax.distillation.terms import Distillation

__all__ = [
    "autoencoder_eval",
    "autoencoder_step",
    "make_adaptation_networks",
    "pretrain_autoencoder",
    "reconstruction_loss",
]


def make_adaptation_networks(
    feature_layer: str, code_features: int, width: float
) -> tuple[FeatureAutoEncoder, FeatureAdapter]:
    """``(autoencoder, adapter)`` for the features of ``feature_layer`` at a model ``width``
    (``code_features`` code channels at full width, scaled by ``width``)."""
    channels = feature_channels(feature_layer, width)
    code = scaled_width(int(code_features), width)
    return FeatureAutoEncoder(features=channels, code_features=code), FeatureAdapter(features=code)


def reconstruction_loss(
    autoencoder_params: Any,
    distillation: Distillation,
    batch: Mapping[str, jax.Array],
    teacher_params: Any,
    *,
    global_batch_size: int,
) -> jax.Array:
    """This device's share of the auto-encoder's loss on the frozen teacher's features.

    Mean over the global batch's feature elements of ``(reconstruction - features)²`` (the
    features of ``distillation.kd_feature_layer``, computed with depth; no gradient to the
    teacher).
    """
    _, teacher_features = apply_with_features(
        distillation.teacher_model.apply,
        {"params": teacher_params},
        batch["image"],
        batch["depth"],
        train=False,
    )
    features = jax.lax.stop_gradient(teacher_features[distillation.kd_feature_layer])
    count = features.size * (global_batch_size // features.shape[0])
    reconstruction, _ = distillation.autoencoder.apply({"params": autoencoder_params}, features)
    return jnp.sum(jnp.square(reconstruction - features)) / count


def autoencoder_step(
    ae_state: train_state.TrainState,
    batch: Mapping[str, jax.Array],
    teacher_params: Any,
    *,
    distillation: Distillation,
    global_batch_size: int,
    axis_name: str | None = None,
) -> tuple[train_state.TrainState, dict[str, jax.Array]]:
    """One Adam step of the auto-encoder (:func:`reconstruction_loss`).

    Returns the new state and ``{'reconstruction_loss'}`` (before the update, global) with
    ``finite`` (the loss and the new params).
    """
    loss, grads = jax.value_and_grad(reconstruction_loss)(
        ae_state.params, distillation, batch, teacher_params, global_batch_size=global_batch_size
    )
    loss, grads = sum_over_devices((loss, grads), axis_name)
    new_state = ae_state.apply_gradients(grads=grads)
    finite = jnp.isfinite(loss) & all_finite(new_state.params)
    return new_state, {"reconstruction_loss": loss, "finite": finite}


def autoencoder_eval(
    autoencoder_params: Any,
    batch: Mapping[str, jax.Array],
    teacher_params: Any,
    *,
    distillation: Distillation,
    global_batch_size: int,
    axis_name: str | None = None,
) -> jax.Array:
    """:func:`reconstruction_loss` of a batch (global), without an update."""
    loss = reconstruction_loss(
        autoencoder_params, distillation, batch, teacher_params, global_batch_size=global_batch_size
    )
    return sum_over_devices(loss, axis_name)


def _require_finite(metrics: Mapping[str, np.ndarray], step: int) -> None:
    if not bool(metrics["finite"]):
        raise FloatingPointError(f"auto-encoder stage: non-finite loss at step {step}")


def pretrain_autoencoder(
    autoencoder_params: Any,
    distillation: Distillation,
    teacher_params: Any,
    batches: Iterator[Mapping[str, np.ndarray]],
    par: DataParallel,
    *,
    steps: int,
    learning_rate: float,
    global_batch_size: int,
    log_every_steps: int,
    workdir: pathlib.Path,
    write_curves: bool = True,
) -> Any:
    """Knowledge adaptation's first stage: ``steps`` Adam steps of the auto-encoder.

    Args:
      autoencoder_params: its initialisation, placed by ``par`` (as the student state's).
      teacher_params: the frozen teacher's, placed by ``par``.
      batches: the stage's own training batches (the trainer gives it the order of ``seed + 1``);
        the first is held out, not trained on.

    Logged in ``<workdir>/autoencoder/`` (``metrics.jsonl``, TensorBoard, ``curves.png``):
    ``reconstruction_loss`` of each step's batch (split ``train``, every ``log_every_steps``) and
    of the held-out batch before and after the stage (split ``eval``, steps 0 and ``steps``).
    Returns the trained params, placed by ``par``.
    """
    ae_state = train_state.TrainState.create(
        apply_fn=distillation.autoencoder.apply,
        params=par.unreplicate(autoencoder_params),
        tx=optax.adam(float(learning_rate)),
    )
    ae_state = par.put_state(ae_state)
    kw = {"distillation": distillation, "global_batch_size": global_batch_size}
    step_fn = par.compile(functools.partial(autoencoder_step, **kw), donate_state=True)
    eval_fn = par.compile(functools.partial(autoencoder_eval, **kw))
    held_out = par.shard_batch(next(batches))
    writer = MetricWriter(
        workdir / "autoencoder",
        resume_step=0,
        active=jax.process_index() == 0,
        curves_on_close=bool(write_curves),
    )

    def log_eval(step, params):
        loss = float(par.host(eval_fn(params, held_out, teacher_params)))
        writer.write_scalars(step, {"reconstruction_loss": loss}, split="eval")
        logging.info("auto-encoder %d/%d: held-out reconstruction loss %.6g", step, steps, loss)

    log = loop.TrainLog(
        writer, log_every_steps=log_every_steps, end_step=steps, batch_size=global_batch_size
    )
    try:
        log_eval(0, ae_state.params)
        pending = loop.PendingMetrics()
        for step in range(steps):
            batch = par.shard_batch(next(batches))
            ae_state, metrics = step_fn(ae_state, batch, teacher_params)
            pending.add(step, metrics)
            log.tick()
            if log.due(step + 1):  # a sync step: one host transfer, every step checked in order
                for pending_step, host_metrics in pending.to_host(par):
                    _require_finite(host_metrics, pending_step)
                log.write(step + 1, host_metrics)
        log_eval(steps, ae_state.params)
    finally:
        writer.close()
    return ae_state.params
