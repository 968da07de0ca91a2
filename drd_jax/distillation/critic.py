"""The holistic KD term's WGAN-GP critic: its network, its loss and its own update.

The critic (:class:`~drd_jax.models.ScoreMapCritic` on softmax score maps) is trained in the same
jitted step as the student, right after the student's update, on that step's (detached) student
scores as "fake" and the teacher's as "real", with its own Adam optimiser
(``config.critic_learning_rate``, β = (0.9, 0.99)) and penalty weight ``config.critic_gp_weight``.
The student's term ``-mean D(softmax(z_s))`` uses the critic before that update.

Upstream differs: Structured KD's critic uses BatchNorm in training mode and is trained with SGD
with momentum (docs/method.md, "Where we differ from the official ... code").
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from drd_jax import losses
from drd_jax.divergence import all_finite
from drd_jax.models import ScoreMapCritic, scaled_width
from drd_jax.parallel import sum_over_devices

__all__ = [
    "CRITIC_FEATURES",
    "critic_loss",
    "critic_optimizer",
    "critic_step",
    "make_critic",
    "penalty_weights",
]

CRITIC_FEATURES = (64, 128, 256, 512)  # scaled by config.width


def make_critic(width: float) -> ScoreMapCritic:
    """The critic at a model ``width`` multiplier."""
    return ScoreMapCritic(features=tuple(scaled_width(f, width) for f in CRITIC_FEATURES))


def critic_optimizer(learning_rate: float) -> optax.GradientTransformation:
    """Adam with β = (0.9, 0.99) at ``learning_rate`` (Structured KD's critic uses SGD with
    momentum instead: docs/method.md)."""
    return optax.adam(float(learning_rate), b1=0.9, b2=0.99)


def critic_loss(
    critic_params: Any,
    critic: ScoreMapCritic,
    real_scores: jax.Array,
    fake_scores: jax.Array,
    *,
    epsilon: jax.Array,
    gp_weight: float,
    image_denominator: float,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """WGAN-GP critic loss, this device's share: ``(loss, (wasserstein_term, penalty))``.

    ``mean D(fake) - mean D(real) + gp_weight · mean (‖∇D(x̂)‖ - 1)²`` with per-image sums divided
    by ``image_denominator`` (the global batch). ``real_scores`` / ``fake_scores`` are softmax
    score maps (N, H, W, K), the teacher's and the student's; both are ``stop_gradient``-ed, so the
    loss trains the critic only. ``epsilon`` (N,): the penalty's interpolation weights
    (``wgan_gradient_penalty``).
    """
    real_scores = jax.lax.stop_gradient(real_scores)
    fake_scores = jax.lax.stop_gradient(fake_scores)

    def critic_fn(x):
        return critic.apply({"params": critic_params}, x)

    wasserstein = (
        jnp.sum(losses.wgan_critic_loss(critic_fn(real_scores), critic_fn(fake_scores)))
        / image_denominator
    )
    penalty = (
        jnp.sum(losses.wgan_gradient_penalty(critic_fn, real_scores, fake_scores, epsilon=epsilon))
        / image_denominator
    )
    return wasserstein + gp_weight * penalty, (wasserstein, penalty)


def penalty_weights(
    dropout_rng: jax.Array, step: jax.Array, *, local_batch: int, global_batch: int, axis_name=None
) -> jax.Array:
    """This device's ε of the WGAN-GP penalty, (local_batch,) in [0, 1).

    Drawn for the whole global batch from a key of the step (not of the device) and sliced, so
    the critic's update is the same for any device layout (jit or pmap, any device count).
    """
    key = jax.random.fold_in(jax.random.fold_in(dropout_rng, step), 1)
    eps = jax.random.uniform(key, (global_batch,))
    if axis_name is None:
        return eps
    start = jax.lax.axis_index(axis_name) * local_batch
    return jax.lax.dynamic_slice_in_dim(eps, start, local_batch)


def critic_step(
    critic_state: train_state.TrainState,
    critic: ScoreMapCritic,
    teacher_logits: jax.Array,
    student_logits: jax.Array,
    *,
    dropout_rng: jax.Array,
    step: jax.Array,
    gp_weight: float,
    global_batch_size: int,
    axis_name: str | None = None,
) -> tuple[train_state.TrainState, dict[str, jax.Array], jax.Array]:
    """One WGAN-GP update of the critic on this step's score maps.

    Args:
      critic_state: the critic's state before the update.
      teacher_logits, student_logits: (N, H, W, K) of this device (softmaxed here, detached).
      dropout_rng, step: the student state's key and step (the penalty's ε is drawn from them).
      global_batch_size: images in the global batch (per-image means are over it).
      axis_name: set under ``pmap`` (gradients and metrics are summed over devices).

    Returns:
      ``(new_critic_state, {critic_loss, critic_wasserstein, gradient_penalty}, finite)``: the
      metrics are global; ``finite`` is whether the loss and the new params are finite.
    """
    epsilon = penalty_weights(
        dropout_rng,
        step,
        local_batch=student_logits.shape[0],
        global_batch=global_batch_size,
        axis_name=axis_name,
    )
    (loss, (wasserstein, penalty)), grads = jax.value_and_grad(critic_loss, has_aux=True)(
        critic_state.params,
        critic,
        jax.nn.softmax(teacher_logits),
        jax.nn.softmax(student_logits),
        epsilon=epsilon,
        gp_weight=gp_weight,
        image_denominator=float(global_batch_size),
    )
    grads, loss, wasserstein, penalty = sum_over_devices(
        (grads, loss, wasserstein, penalty), axis_name
    )
    new_state = critic_state.apply_gradients(grads=grads)
    finite = jnp.isfinite(loss) & all_finite(new_state.params)
    metrics = {"critic_loss": loss, "critic_wasserstein": wasserstein, "gradient_penalty": penalty}
    return new_state, metrics, finite
