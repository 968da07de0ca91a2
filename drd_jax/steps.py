"""The jitted steps: one train step for every mode, the eval step and prediction.

Loss: ``CE + Σ weight · term`` over the active distillation terms (``drd_jax.distillation``);
per-pixel losses are averaged over the valid (non-void) pixels of the whole *global* batch (sum
over every device's pixels / global count), so one step gives the same gradient whatever the
device layout. VTCE's temperature: ``losses.vtce_temperature(state.step, num_train_images=N,
batch_size=global batch, beta=config.beta)``.

Under ``pmap`` the steps get ``axis_name`` and sum gradients and metrics over devices; under
``jit`` their arrays are global (``drd_jax.parallel``). Dropout: the key of step ``s`` is
``fold_in(state.dropout_rng, s)``, under pmap further folded with the device index (so dropout
masks differ between the two paths; their results agree with ``dropout_rate=0``).

Train-step metrics (global, identical on every device): ``loss``, ``ce_loss``, ``vtce_loss`` (0
without VTCE), the other active terms' ``<t>_loss``, with a critic ``critic_loss``,
``critic_wasserstein`` and ``gradient_penalty``, then ``temperature``, ``lr`` (of this step),
``grad_norm``, ``valid_pixels`` (global) and ``finite`` (loss, gradients and every new param).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from drd_jax import distillation as distillation_lib
from drd_jax import losses, metrics
from drd_jax.divergence import all_finite
from drd_jax.models import DeepLabVGG16, apply_with_feature_layer
from drd_jax.parallel import sum_over_devices
from drd_jax.state import TrainState, make_learning_rate_fn

__all__ = ["eval_step", "jitted_predict", "make_train_step", "predict", "train_step"]


def _loss(
    params,
    adapter_params,
    *,
    state: TrainState,
    batch: Mapping[str, jax.Array],
    use_depth: bool,
    rng: jax.Array,
    valid: jax.Array,
    pixel_denominator: jax.Array,
    distillation: distillation_lib.Distillation | None,
    teacher_outputs: tuple | None,  # (logits, features, code): distillation.teacher_outputs
    temperature: jax.Array,
    global_batch_size: int,
):
    """``(loss, (ce, {metric: term}, logits))``: this device's share of the global-batch loss."""
    logits, features = apply_with_feature_layer(
        state.apply_fn,
        {"params": params},
        batch["image"],
        batch["depth"] if use_depth else None,
        layer=None if distillation is None else distillation.feature_layer_read,
        train=True,
        rngs={"dropout": rng},
    )
    ce_values = losses.segmentation_cross_entropy(logits, batch["label"], where=valid)
    ce = jnp.sum(ce_values) / pixel_denominator
    if distillation is None:
        return ce, (ce, {}, logits)
    terms = distillation_lib.student_distillation_terms(
        distillation,
        logits,
        features,
        teacher_outputs,
        valid=valid,
        pixel_denominator=pixel_denominator,
        image_denominator=float(global_batch_size),
        temperature=temperature,
        adapter_params=adapter_params,
        critic_params=state.critic.params if state.critic is not None else None,
    )
    return ce + distillation_lib.weighted_sum(distillation, terms), (ce, terms, logits)


def _update_side_networks(
    state: TrainState,
    new_state: TrainState,
    adapter_grads: Any,
    distillation: distillation_lib.Distillation | None,
    teacher_outputs: tuple | None,
    student_logits: jax.Array,
    global_batch_size: int,
    axis_name: str | None,
) -> tuple[TrainState, dict[str, jax.Array], jax.Array]:
    """Updates the networks trained beside the student: the adapter (from the student's
    backward pass) and the critic (one WGAN-GP step). Returns ``(new_state, critic metrics,
    finite)``."""
    finite = jnp.ones((), bool)
    if state.adapter is not None:
        new_state = new_state.replace(adapter=state.adapter.apply_gradients(grads=adapter_grads))
        finite &= all_finite(new_state.adapter.params)
    if distillation is None or distillation.holistic_kd_weight <= 0:
        return new_state, {}, finite
    critic, critic_metrics, critic_finite = distillation_lib.critic_step(
        state.critic,
        distillation.critic,
        teacher_outputs[0],
        student_logits,
        dropout_rng=state.dropout_rng,
        step=state.step,
        gp_weight=distillation.critic_gp_weight,
        global_batch_size=global_batch_size,
        axis_name=axis_name,
    )
    return new_state.replace(critic=critic), critic_metrics, finite & critic_finite


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    teacher_params: Any = None,
    *,
    num_classes: int,
    use_depth: bool,
    learning_rate_fn: Callable[[Any], Any],
    beta: float,
    distillation: distillation_lib.Distillation | None = None,
    num_train_images: int = 1,
    global_batch_size: int = 1,
    axis_name: str | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step on a batch (this device's part); returns the new state and metrics.

    With ``distillation`` (a student with a frozen teacher, ``teacher_params``) the teacher's
    outputs come from one forward pass under ``stop_gradient``; the student's features from the
    same pass as its logits. The adapter is updated with the student, the critic after them.
    """
    valid = losses.valid_label_mask(batch["label"], num_classes=num_classes)
    count = sum_over_devices(jnp.sum(valid, dtype=jnp.int32), axis_name)
    rng = jax.random.fold_in(state.dropout_rng, state.step)
    if axis_name is not None:
        rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
    temperature = losses.vtce_temperature(
        state.step, num_train_images=num_train_images, batch_size=global_batch_size, beta=beta
    )
    if distillation is not None and not distillation.any_term:
        distillation = None  # BL+PS: no term, no teacher in the step
    teacher_outputs = None
    if distillation is not None:
        teacher_outputs = distillation_lib.teacher_outputs(
            distillation, teacher_params, state.autoencoder_params, batch["image"], batch["depth"]
        )
    loss_fn = functools.partial(
        _loss,
        state=state,
        batch=batch,
        use_depth=use_depth,
        rng=rng,
        valid=valid,
        pixel_denominator=jnp.maximum(count, 1).astype(jnp.float32),
        distillation=distillation,
        teacher_outputs=teacher_outputs,
        temperature=temperature,
        global_batch_size=global_batch_size,
    )
    adapter_params = state.adapter.params if state.adapter is not None else None
    grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)
    (loss, (ce, terms, logits)), grads = grad_fn(state.params, adapter_params)
    (grads, adapter_grads), loss, ce, terms = sum_over_devices((grads, loss, ce, terms), axis_name)
    new_state = state.apply_gradients(grads=grads)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite(new_state.params)
    out = {"loss": loss, "ce_loss": ce, "vtce_loss": jnp.zeros((), jnp.float32), **terms}
    new_state, side_metrics, side_finite = _update_side_networks(
        state,
        new_state,
        adapter_grads,
        distillation,
        teacher_outputs,
        logits,
        global_batch_size,
        axis_name,
    )
    out.update(side_metrics)
    finite &= side_finite
    lr = jnp.asarray(learning_rate_fn(state.step), jnp.float32)
    out.update(temperature=temperature.astype(jnp.float32), lr=lr, grad_norm=grad_norm)
    return new_state, {**out, "valid_pixels": count, "finite": finite}


def make_train_step(
    config,
    *,
    num_classes: int,
    num_train_images: int,
    distillation: distillation_lib.Distillation | None = None,
) -> Callable:
    """:func:`train_step` with ``config``'s settings: ``(state, batch, teacher_params=None,
    axis_name=None) -> (state, metrics)``, to compile with ``DataParallel.compile``."""
    return functools.partial(
        train_step,
        num_classes=num_classes,
        use_depth=config.mode == "teacher",
        learning_rate_fn=make_learning_rate_fn(config),
        beta=float(config.beta),
        distillation=distillation,
        num_train_images=num_train_images,
        global_batch_size=config.batch_size,
    )


def predict(
    params: Any,
    image: jax.Array,
    depth: jax.Array | None,
    *,
    model: DeepLabVGG16,
    image_size: jax.Array | None = None,
) -> jax.Array:
    """Argmax class ids (N, H, W) int32 of normalised images (N, H, W, 3); ``depth`` (N, H, W)
    in metres is read only by a depth-aware ``model`` (may be None otherwise). ``image_size``
    (N, 2): each image's real (height, width) when padded into the canvas (``DeepLabVGG16``)."""
    logits = model.apply(
        {"params": params},
        image,
        depth if model.depth_aware else None,
        train=False,
        image_size=image_size,
    )
    return jnp.argmax(logits, axis=-1)


@functools.cache
def jitted_predict(model: DeepLabVGG16) -> Callable:
    """``jax.jit`` of :func:`predict` for ``model``: ``(params, image, depth) -> class ids``
    (compiled once per input shape)."""
    return jax.jit(functools.partial(predict, model=model))


def eval_step(
    params: Any,
    batch: Mapping[str, jax.Array],
    *,
    model: DeepLabVGG16,
    num_classes: int,
    axis_name: str | None = None,
    padded: bool = False,
) -> jax.Array:
    """Confusion matrix (K, K) of a batch (padding examples, ``index < 0``, excluded).

    ``padded``: the images may be padded into the batch's canvas (``input_pipeline.eval_pad_size``
    gave one); the network then reads each one's real ``batch["size"]`` and ignores the padding.
    """
    where = (batch["index"] >= 0)[:, None, None]
    size = batch["size"] if padded else None
    predictions = predict(params, batch["image"], batch["depth"], model=model, image_size=size)
    cm = metrics.confusion_matrix(batch["label"], predictions, num_classes=num_classes, where=where)
    return sum_over_devices(cm, axis_name)
