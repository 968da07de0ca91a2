"""The student's distillation terms and the extra networks some of them train.

A student run (``config.mode='student'``) distils from a frozen teacher with any mix of the terms
of :data:`TERMS` (``terms.py``); each has one name: config weight ``<t>_weight``, metric
``<t>_loss``.

==================  ===============================================  ==========================
term ``t``          loss (``drd_jax.losses``)                        on
==================  ===============================================  ==========================
``vtce``            ``vtce_loss`` (the paper)                        logits, per pixel
``pixel_kd``        ``pixelwise_kd_loss`` (Structured KD)            logits, per pixel
``pair_kd``         ``pairwise_similarity_loss`` (Structured KD)     features, per image
``holistic_kd``     ``wgan_generator_loss`` of a critic (SKD)        softmax scores, per image
``adaptation``      ``knowledge_adaptation_loss`` (KA)               codes, per image
``affinity``        ``affinity_distillation_loss`` (KA)              codes or features
==================  ===============================================  ==========================

Features are those of ``config.kd_feature_layer`` (``FEATURE_LAYERS``), taken from the same
forward pass as the logits. Networks trained beside the student are fields of
``drd_jax.state.TrainState`` and are checkpointed with it: the holistic term's ``critic``
(``critic.py``: trained with WGAN-GP in the same jitted step) and knowledge adaptation's
``adapter`` and pre-trained, then frozen, ``autoencoder_params`` (``autoencoder.py``).
"""

from drd_jax.distillation.autoencoder import (
    autoencoder_eval,
    autoencoder_step,
    make_adaptation_networks,
    pretrain_autoencoder,
    reconstruction_loss,
)
from drd_jax.distillation.critic import (
    CRITIC_FEATURES,
    critic_loss,
    critic_optimizer,
    critic_step,
    make_critic,
    penalty_weights,
)
from drd_jax.distillation.terms import (
    KD_FIELDS,
    KD_WEIGHT_FIELDS,
    TERMS,
    Distillation,
    Term,
    TermInputs,
    make_distillation,
    student_distillation_terms,
    teacher_outputs,
    uses_kd_methods,
    weighted_sum,
)

__all__ = [
    "CRITIC_FEATURES",
    "KD_FIELDS",
    "KD_WEIGHT_FIELDS",
    "TERMS",
    "Distillation",
    "Term",
    "TermInputs",
    "autoencoder_eval",
    "autoencoder_step",
    "critic_loss",
    "critic_optimizer",
    "critic_step",
    "make_adaptation_networks",
    "make_critic",
    "make_distillation",
    "penalty_weights",
    "pretrain_autoencoder",
    "reconstruction_loss",
    "student_distillation_terms",
    "teacher_outputs",
    "uses_kd_methods",
    "weighted_sum",
]
