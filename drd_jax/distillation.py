"""The student's distillation terms beside VTCE, and the extra networks some of them train.

A student run (``config.mode='student'``) distils from a frozen teacher with any mix of:

========================  ===============================================  ====================
term (config weight)      loss (``drd_jax.losses``)                        on
========================  ===============================================  ====================
``vtce_weight``           ``vtce_loss`` (the paper)                        logits, per pixel
``pixel_kd_weight``       ``pixelwise_kd_loss`` (Structured KD)            logits, per pixel
``pair_kd_weight``        ``pairwise_similarity_loss`` (Structured KD)     features, per image
``holistic_kd_weight``    ``wgan_generator_loss`` of a critic (SKD)        softmax scores
``adaptation_weight``     ``knowledge_adaptation_loss`` (KA)               codes, per image
``affinity_weight``       ``affinity_distillation_loss`` (KA)              codes or features
========================  ===============================================  ====================

Per-pixel terms are averaged over the valid pixels of the global batch (as the cross-entropy),
per-image terms over the images of the global batch, so a step's gradient does not depend on the
device layout. Features are those of ``config.kd_feature_layer`` (``FEATURE_LAYERS``), taken from
the same forward pass as the logits.

Networks trained alongside the student (fields of ``train.TrainState``, checkpointed with it):

* ``critic`` (holistic KD): a :class:`ScoreMapCritic` on softmax score maps, trained with WGAN-GP
  in the same jitted step, right after the student's update, on the same forward pass's (detached)
  student scores as "fake" and the teacher's as "real", with its own Adam optimiser
  (``critic_learning_rate``, β = (0.9, 0.99)) and penalty weight ``critic_gp_weight``.
  The student's term ``-mean D(softmax(z_s))`` uses the critic before that update.
* ``adapter`` (knowledge adaptation): a :class:`FeatureAdapter` that maps the student's features to
  the code space; trained jointly with the student by the student's optimiser settings.
* ``autoencoder_params`` (knowledge adaptation): a :class:`FeatureAutoEncoder` pre-trained on the
  frozen teacher's features (``ka_autoencoder_steps`` Adam steps of mean squared reconstruction
  error, before the student's first step), then frozen: its codes are the teacher's side of the
  adaptation loss and, when the auto-encoder is used, of the affinity loss.

The code keeps the feature map's resolution, so student and teacher codes align pixel for pixel.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from drd_jax import losses
from drd_jax.models import (
    DeepLabVGG16,
    FeatureAdapter,
    FeatureAutoEncoder,
    ScoreMapCritic,
    apply_with_features,
    feature_channels,
    scaled_width,
)

__all__ = [
    "CRITIC_FEATURES",
    "TERM_WEIGHTS",
    "Distillation",
    "autoencoder_eval",
    "autoencoder_step",
    "critic_loss",
    "init_distillation_state",
    "make_distillation",
    "penalty_weights",
    "reconstruction_loss",
    "student_distillation_terms",
    "teacher_outputs",
    "weighted_sum",
]

CRITIC_FEATURES = (64, 128, 256, 512)  # scaled by config.width
# The metric of each term -> its ``Distillation`` weight field.
TERM_WEIGHTS = {
    "vtce_loss": "vtce_weight",
    "pixel_kd_loss": "pixel_weight",
    "pair_kd_loss": "pair_weight",
    "holistic_kd_loss": "holistic_weight",
    "adaptation_loss": "adaptation_weight",
    "affinity_loss": "affinity_weight",
}


@dataclasses.dataclass(frozen=True)
class Distillation:
    """What a student step distils from its frozen teacher (static: part of the jitted step).

    Weights of 0 switch a term off. ``critic``, ``adapter`` and ``autoencoder`` are the modules of
    the state's ``critic``, ``adapter`` and ``autoencoder_params`` (None when unused).
    """

    teacher_model: DeepLabVGG16 | None
    vtce_weight: float = 0.0
    beta: float = 0.9
    pixel_weight: float = 0.0
    pair_weight: float = 0.0
    pair_node_scale: float = 0.5
    holistic_weight: float = 0.0
    gp_weight: float = 10.0
    adaptation_weight: float = 0.0
    affinity_weight: float = 0.0
    feature_layer: str = "fc7"
    critic: ScoreMapCritic | None = None
    adapter: FeatureAdapter | None = None
    autoencoder: FeatureAutoEncoder | None = None

    @property
    def needs_features(self) -> bool:
        """Whether a term reads the intermediate features."""
        return self.pair_weight > 0 or self.adaptation_weight > 0 or self.affinity_weight > 0

    @property
    def uses_autoencoder(self) -> bool:
        """Knowledge adaptation: codes of the pre-trained auto-encoder and the student adapter."""
        return self.adaptation_weight > 0

    @property
    def any_term(self) -> bool:
        """Whether any term is switched on."""
        return any(getattr(self, field) > 0 for field in TERM_WEIGHTS.values())


def distillation_weights(config) -> dict[str, float]:
    """The config's weight of every distillation term (``Distillation`` field -> value)."""
    return {
        "vtce_weight": float(config.vtce_weight),
        "pixel_weight": float(config.pixel_kd_weight),
        "pair_weight": float(config.pair_kd_weight),
        "holistic_weight": float(config.holistic_kd_weight),
        "adaptation_weight": float(config.adaptation_weight),
        "affinity_weight": float(config.affinity_weight),
    }


def make_distillation(config, teacher_model: DeepLabVGG16 | None = None) -> Distillation:
    """The :class:`Distillation` of a student ``config`` (modules sized from its width).

    ``teacher_model`` may be None where only the modules are needed (initialising a state).
    """
    w = distillation_weights(config)
    width = float(config.width)
    critic = adapter = autoencoder = None
    if w["holistic_weight"] > 0:
        critic = ScoreMapCritic(features=tuple(scaled_width(f, width) for f in CRITIC_FEATURES))
    if w["adaptation_weight"] > 0:
        channels = feature_channels(config.kd_feature_layer, width)
        code = scaled_width(int(config.ka_code_features), width)
        autoencoder = FeatureAutoEncoder(features=channels, code_features=code)
        adapter = FeatureAdapter(features=code)
    return Distillation(
        teacher_model=teacher_model,
        beta=float(config.beta),
        pair_node_scale=float(config.pair_kd_node_scale),
        gp_weight=float(config.critic_gp_weight),
        feature_layer=str(config.kd_feature_layer),
        critic=critic,
        adapter=adapter,
        autoencoder=autoencoder,
        **w,
    )


@functools.lru_cache(maxsize=16)
def _jitted_init(module, shape: tuple[int, ...]) -> Callable[[jax.Array], Any]:
    """``rng -> params`` of ``module`` for a zero input of ``shape``, compiled once per pair."""
    return jax.jit(lambda rng: module.init(rng, jnp.zeros(shape, jnp.float32))["params"])


def init_distillation_state(
    config,
    distillation: Distillation,
    rng: jax.Array,
    *,
    num_classes: int,
    student_tx: optax.GradientTransformation,
) -> dict[str, Any]:
    """``{'critic', 'adapter', 'autoencoder_params'}`` for ``train.TrainState`` (None if unused).

    The auto-encoder's params here are its initialisation; :func:`autoencoder_step` trains them.
    """
    h, w = (int(s) for s in config.crop_size)
    critic_rng, adapter_rng, ae_rng = jax.random.split(rng, 3)
    out: dict[str, Any] = {"critic": None, "adapter": None, "autoencoder_params": None}
    if distillation.critic is not None:
        params = _jitted_init(distillation.critic, (1, h, w, num_classes))(critic_rng)
        out["critic"] = train_state.TrainState.create(
            apply_fn=distillation.critic.apply,
            params=params,
            tx=optax.adam(float(config.critic_learning_rate), b1=0.9, b2=0.99),
        )
    if distillation.autoencoder is not None:
        fh, fw = -(-h // 8), -(-w // 8)  # the stride-8 feature map (ceil at each pooling)
        shape = (1, fh, fw, distillation.autoencoder.features)  # student features: same network
        out["autoencoder_params"] = _jitted_init(distillation.autoencoder, shape)(ae_rng)
        params = _jitted_init(distillation.adapter, shape)(adapter_rng)
        out["adapter"] = train_state.TrainState.create(
            apply_fn=distillation.adapter.apply, params=params, tx=student_tx
        )
    return out


def teacher_outputs(
    distillation: Distillation,
    teacher_params: Any,
    autoencoder_params: Any,
    image: jax.Array,
    depth: jax.Array,
) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
    """``(logits, features, code)`` of the frozen teacher (all ``stop_gradient``).

    ``features`` is None unless a term needs them, ``code`` unless knowledge adaptation is on.
    """
    variables = {"params": teacher_params}
    features = code = None
    if distillation.needs_features:
        logits, feats = apply_with_features(
            distillation.teacher_model.apply, variables, image, depth, train=False
        )
        features = feats[distillation.feature_layer]
    else:
        logits = distillation.teacher_model.apply(variables, image, depth, train=False)
    if distillation.uses_autoencoder:
        code = distillation.autoencoder.apply(
            {"params": autoencoder_params}, features, method=FeatureAutoEncoder.encode
        )
    return jax.tree.map(jax.lax.stop_gradient, (logits, features, code))


def student_distillation_terms(
    distillation: Distillation,
    student_logits: jax.Array,
    student_features: jax.Array | None,
    teacher: tuple[jax.Array, jax.Array | None, jax.Array | None],
    *,
    valid: jax.Array,
    pixel_denominator: jax.Array,
    image_denominator: float,
    temperature: jax.Array,
    adapter_params: Any = None,
    critic_params: Any = None,
) -> dict[str, jax.Array]:
    """This device's share of each active term's global-batch mean (``{name: scalar}``).

    Per-pixel terms: sum over the device's valid pixels / ``pixel_denominator`` (the global valid
    count); per-image terms: sum over its images / ``image_denominator`` (the global batch).
    Summed over devices (``psum``) they are the global means. Keys: ``vtce_loss``,
    ``pixel_kd_loss``, ``pair_kd_loss``, ``holistic_kd_loss``, ``adaptation_loss``,
    ``affinity_loss``, for the terms whose weight is > 0.
    """
    d = distillation
    teacher_logits, teacher_features, teacher_code = teacher
    terms: dict[str, jax.Array] = {}

    def per_pixel(values):
        return jnp.sum(values) / pixel_denominator

    def per_image(values):
        return jnp.sum(values) / image_denominator

    if d.vtce_weight > 0:
        terms["vtce_loss"] = per_pixel(
            losses.vtce_loss(student_logits, teacher_logits, temperature=temperature, where=valid)
        )
    if d.pixel_weight > 0:
        terms["pixel_kd_loss"] = per_pixel(
            losses.pixelwise_kd_loss(student_logits, teacher_logits, where=valid)
        )
    if d.pair_weight > 0:
        terms["pair_kd_loss"] = per_image(
            losses.pairwise_similarity_loss(
                student_features, teacher_features, node_scale=d.pair_node_scale
            )
        )
    if d.holistic_weight > 0:
        scores = d.critic.apply({"params": critic_params}, jax.nn.softmax(student_logits))
        terms["holistic_kd_loss"] = per_image(losses.wgan_generator_loss(scores))
    student_code = None
    if d.uses_autoencoder:
        student_code = d.adapter.apply({"params": adapter_params}, student_features)
        terms["adaptation_loss"] = per_image(
            losses.knowledge_adaptation_loss(student_code, teacher_code)
        )
    if d.affinity_weight > 0:
        if d.uses_autoencoder:  # KA: affinity of the adapted student code vs the teacher's code
            pair = (student_code, teacher_code)
        else:
            pair = (student_features, teacher_features)
        terms["affinity_loss"] = per_image(losses.affinity_distillation_loss(*pair))
    return terms


def weighted_sum(distillation: Distillation, terms: Mapping[str, jax.Array]) -> jax.Array:
    """``Σ weight · term`` over ``terms`` (0 when there is none)."""
    total = jnp.zeros((), jnp.float32)
    for name, value in terms.items():
        total = total + getattr(distillation, TERM_WEIGHTS[name]) * value
    return total


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
    features of ``distillation.feature_layer``, computed with depth; no gradient to the teacher).
    """
    _, teacher_features = apply_with_features(
        distillation.teacher_model.apply,
        {"params": teacher_params},
        batch["image"],
        batch["depth"],
        train=False,
    )
    features = jax.lax.stop_gradient(teacher_features[distillation.feature_layer])
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
    """One Adam step of the knowledge-adaptation auto-encoder (:func:`reconstruction_loss`).

    Returns the new state and ``{'reconstruction_loss'}`` (before the update, global).
    """
    loss, grads = jax.value_and_grad(reconstruction_loss)(
        ae_state.params, distillation, batch, teacher_params, global_batch_size=global_batch_size
    )
    if axis_name is not None:
        loss, grads = jax.lax.psum((loss, grads), axis_name)
    return ae_state.apply_gradients(grads=grads), {"reconstruction_loss": loss}


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
    return loss if axis_name is None else jax.lax.psum(loss, axis_name)
