"""The distillation terms a student adds to its cross-entropy: one table, one name per term.

Every term ``t`` of :data:`TERMS` has one name everywhere: its weight is the config field and the
:class:`Distillation` field ``<t>_weight`` (> 0 switches the term on), and its value is the metric
``<t>_loss``. Adding a method means adding its loss to ``drd_jax.losses``, a row here (with the
function that applies it) and its default weight in ``experiments/configs/base.py``.

Per-pixel terms are averaged over the valid pixels of the global batch (as the cross-entropy),
per-image terms over its images, so a step's gradient does not depend on the device layout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from drd_jax import losses
from drd_jax.distillation import autoencoder as autoencoder_lib
from drd_jax.distillation import critic as critic_lib
from drd_jax.models import (
    DeepLabVGG16,
    FeatureAdapter,
    FeatureAutoEncoder,
    ScoreMapCritic,
    apply_with_feature_layer,
)

__all__ = [
    "KD_FIELDS",
    "KD_WEIGHT_FIELDS",
    "TERMS",
    "Distillation",
    "Term",
    "TermInputs",
    "make_distillation",
    "student_distillation_terms",
    "teacher_outputs",
    "uses_kd_methods",
    "weighted_sum",
]


class TermInputs(NamedTuple):
    """What a term may read, for this device's part of the batch (teacher's side detached).

    Logits (N, H, W, K); features (N, h, w, C) of ``kd_feature_layer`` (None unless a term reads
    them); codes (N, h, w, c) of knowledge adaptation (None unless it is on); ``valid`` (N, H, W)
    the non-void pixels; ``temperature`` VTCE's T of this step.
    """

    student_logits: jax.Array
    student_features: jax.Array | None
    student_code: jax.Array | None
    teacher_logits: jax.Array
    teacher_features: jax.Array | None
    teacher_code: jax.Array | None
    valid: jax.Array
    temperature: jax.Array
    critic_params: Any


@dataclasses.dataclass(frozen=True)
class Term:
    """One row of :data:`TERMS`.

    Attributes:
      name: ``t``: the weight field is ``t_weight``, the metric ``t_loss``.
      method: where it comes from (``'DRD'``: this paper; the others are the seed papers').
      reads: ``'logits'``, ``'features'`` or ``'codes'`` (codes are computed from features).
      per: ``'pixel'`` (values (N, H, W), averaged over valid pixels) or ``'image'`` ((N,)).
      values: ``(distillation, inputs) -> per-pixel or per-image values``.
    """

    name: str
    method: str
    reads: str
    per: str
    values: Callable[[Distillation, TermInputs], jax.Array]

    @property
    def weight_field(self) -> str:
        return f"{self.name}_weight"

    @property
    def metric(self) -> str:
        return f"{self.name}_loss"


def _vtce(distillation: Distillation, inputs: TermInputs) -> jax.Array:
    return losses.vtce_loss(
        inputs.student_logits,
        inputs.teacher_logits,
        temperature=inputs.temperature,
        where=inputs.valid,
    )


def _pixel_kd(distillation: Distillation, inputs: TermInputs) -> jax.Array:
    return losses.pixelwise_kd_loss(
        inputs.student_logits, inputs.teacher_logits, where=inputs.valid
    )


def _pair_kd(distillation: Distillation, inputs: TermInputs) -> jax.Array:
    return losses.pairwise_similarity_loss(
        inputs.student_features, inputs.teacher_features, node_scale=distillation.pair_kd_node_scale
    )


def _holistic_kd(distillation: Distillation, inputs: TermInputs) -> jax.Array:
    scores = distillation.critic.apply(
        {"params": inputs.critic_params}, jax.nn.softmax(inputs.student_logits)
    )
    return losses.wgan_generator_loss(scores)


def _adaptation(distillation: Distillation, inputs: TermInputs) -> jax.Array:
    return losses.knowledge_adaptation_loss(inputs.student_code, inputs.teacher_code)


def _affinity(distillation: Distillation, inputs: TermInputs) -> jax.Array:
    if (
        distillation.uses_autoencoder
    ):  # KA: affinity of the adapted student code vs the teacher's code
        return losses.affinity_distillation_loss(inputs.student_code, inputs.teacher_code)
    return losses.affinity_distillation_loss(inputs.student_features, inputs.teacher_features)


# In the order their values are added to the loss.
TERMS = (
    Term("vtce", "DRD", "logits", "pixel", _vtce),
    Term("pixel_kd", "Structured KD", "logits", "pixel", _pixel_kd),
    Term("pair_kd", "Structured KD", "features", "image", _pair_kd),
    Term("holistic_kd", "Structured KD", "logits", "image", _holistic_kd),
    Term("adaptation", "Knowledge Adaptation", "codes", "image", _adaptation),
    Term("affinity", "Knowledge Adaptation", "features", "image", _affinity),
)
# The seed papers' weights (every term but the paper's own VTCE); > 0 switches a method on.
KD_WEIGHT_FIELDS = tuple(t.weight_field for t in TERMS if t.method != "DRD")
# The Distillation's hyper-parameters (named as the config's fields).
_HYPERPARAMETERS = {"pair_kd_node_scale": float, "critic_gp_weight": float, "kd_feature_layer": str}
# Every field of those methods: weights, step hyper-parameters, the extra networks' settings.
KD_FIELDS = (
    *KD_WEIGHT_FIELDS,
    *_HYPERPARAMETERS,
    "critic_learning_rate",
    "ka_code_features",
    "ka_autoencoder_steps",
    "ka_autoencoder_learning_rate",
)


@dataclasses.dataclass(frozen=True)
class Distillation:
    """What a student step distils from its frozen teacher (static: part of the jitted step).

    Fields are named as the config's (:func:`make_distillation`). ``critic``, ``adapter`` and
    ``autoencoder`` are the modules of the state's ``critic``, ``adapter`` and
    ``autoencoder_params`` (None when unused).
    """

    teacher_model: DeepLabVGG16 | None
    vtce_weight: float
    pixel_kd_weight: float
    pair_kd_weight: float
    holistic_kd_weight: float
    adaptation_weight: float
    affinity_weight: float
    pair_kd_node_scale: float
    critic_gp_weight: float
    kd_feature_layer: str
    critic: ScoreMapCritic | None = None
    adapter: FeatureAdapter | None = None
    autoencoder: FeatureAutoEncoder | None = None

    def weight(self, term: Term) -> float:
        return getattr(self, term.weight_field)

    @property
    def active_terms(self) -> tuple[Term, ...]:
        """The terms whose weight is > 0, in :data:`TERMS` order."""
        return tuple(t for t in TERMS if self.weight(t) > 0)

    @property
    def any_term(self) -> bool:
        return bool(self.active_terms)

    @property
    def needs_features(self) -> bool:
        """Whether a term reads the intermediate features (or codes computed from them)."""
        return any(t.reads != "logits" for t in self.active_terms)

    @property
    def feature_layer_read(self) -> str | None:
        """``kd_feature_layer`` when a term reads features, else None (no features needed)."""
        return self.kd_feature_layer if self.needs_features else None

    @property
    def uses_autoencoder(self) -> bool:
        """Knowledge adaptation: codes of the pre-trained auto-encoder and the student adapter."""
        return self.adaptation_weight > 0


def uses_kd_methods(config) -> bool:
    """Whether a config switches on a seed paper's method (configs written before those fields
    existed have none)."""
    return any(config.get(f) for f in KD_WEIGHT_FIELDS)


def make_distillation(config, teacher_model: DeepLabVGG16 | None = None) -> Distillation:
    """The :class:`Distillation` of a student ``config`` (its networks sized from its width).

    ``teacher_model`` may be None where only the networks are needed (initialising a state).
    """
    fields = {t.weight_field: float(config[t.weight_field]) for t in TERMS}
    fields.update({name: cast(config[name]) for name, cast in _HYPERPARAMETERS.items()})
    width = float(config.width)
    critic = adapter = autoencoder = None
    if fields["holistic_kd_weight"] > 0:
        critic = critic_lib.make_critic(width)
    if fields["adaptation_weight"] > 0:
        autoencoder, adapter = autoencoder_lib.make_adaptation_networks(
            config.kd_feature_layer, int(config.ka_code_features), width
        )
    return Distillation(
        teacher_model=teacher_model,
        critic=critic,
        adapter=adapter,
        autoencoder=autoencoder,
        **fields,
    )


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
    logits, features = apply_with_feature_layer(
        distillation.teacher_model.apply,
        {"params": teacher_params},
        image,
        depth,
        layer=distillation.feature_layer_read,
    )
    code = None
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
    """This device's share of each active term's global-batch mean (``{metric: scalar}``).

    Per-pixel terms: sum over the device's valid pixels / ``pixel_denominator`` (the global valid
    count); per-image terms: sum over its images / ``image_denominator`` (the global batch).
    Summed over devices (``psum``) they are the global means.
    """
    student_code = None
    if distillation.uses_autoencoder:
        student_code = distillation.adapter.apply({"params": adapter_params}, student_features)
    inputs = TermInputs(
        student_logits, student_features, student_code, *teacher, valid, temperature, critic_params
    )
    denominators = {"pixel": pixel_denominator, "image": image_denominator}
    return {
        t.metric: jnp.sum(t.values(distillation, inputs)) / denominators[t.per]
        for t in distillation.active_terms
    }


_TERM_OF_METRIC = {t.metric: t for t in TERMS}


def weighted_sum(distillation: Distillation, terms: Mapping[str, jax.Array]) -> jax.Array:
    """``Σ weight · term`` over ``terms`` (``{metric: value}``; 0 when there is none)."""
    total = jnp.zeros((), jnp.float32)
    for metric, value in terms.items():
        total = total + distillation.weight(_TERM_OF_METRIC[metric]) * value
    return total
