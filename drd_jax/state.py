"""A run's model, optimiser and train state.

The teacher and the student are one :class:`~drd_jax.models.DeepLabVGG16` applied to one param
tree: the state holds that tree whatever the mode (``make_model`` picks depth-aware convs for the
teacher). Optimiser: SGD with momentum and L2 weight decay added to the gradient
(``add_decayed_weights``, as Caffe does; biases are decayed too), or Adam; learning rate
``lr * (1 - step / num_train_steps) ** lr_power`` (poly).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax.training import train_state

from drd_jax import distillation as distillation_lib
from drd_jax.models import DeepLabVGG16

__all__ = [
    "TrainState",
    "create_train_state",
    "init_params",
    "jitted_init",
    "make_learning_rate_fn",
    "make_model",
    "make_optimizer",
    "params_fingerprint",
]


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


def make_model(config, num_classes: int, *, depth_aware: bool | None = None) -> DeepLabVGG16:
    """The DeepLabVGG16 of ``config`` (depth-aware iff ``mode == 'teacher'`` unless given),
    computing in ``config.dtype`` with float32 params."""
    if depth_aware is None:
        depth_aware = config.mode == "teacher"
    return DeepLabVGG16(
        num_classes=num_classes,
        width=config.width,
        depth_aware=depth_aware,
        alpha=config.alpha,
        depth_aware_layers=config.depth_aware_layers,
        dropout_rate=config.dropout_rate,
        # Runs recorded before the field existed computed in float32.
        dtype=jnp.bfloat16 if config.get("dtype", "float32") == "bfloat16" else None,
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


@functools.lru_cache(maxsize=16)
def jitted_init(module: nn.Module, shape: tuple[int, ...]) -> Callable[[jax.Array], Any]:
    """``rng -> params`` of ``module`` for a zero float32 input of ``shape``, compiled once per
    (module, shape)."""
    return jax.jit(lambda rng: module.init(rng, jnp.zeros(shape, jnp.float32))["params"])


def init_params(config, rng: jax.Array, num_classes: int) -> dict:
    """A fresh param tree of ``config``'s network (the same tree for every mode)."""
    # Initialised with the plain model (cheaper to compile) whatever the mode.
    model = make_model(config, num_classes, depth_aware=False)
    h, w = config.crop_size
    return jitted_init(model, (1, int(h), int(w), 3))(rng)


def _check_same_tree(params, like, what: str) -> None:
    a = jax.tree.map(lambda x: (tuple(np.shape(x)), str(jnp.result_type(x))), params)
    b = jax.tree.map(lambda x: (tuple(np.shape(x)), str(jnp.result_type(x))), like)
    if jax.tree.structure(a) != jax.tree.structure(b) or jax.tree.leaves(a) != jax.tree.leaves(b):
        raise ValueError(f"{what} does not have the model's param tree (another width?)")


def _distillation_networks(
    config, rng: jax.Array, *, num_classes: int, student_tx: optax.GradientTransformation
) -> dict[str, Any]:
    """``{'critic', 'adapter', 'autoencoder_params'}`` of a student ``config`` (None if unused).

    The auto-encoder's params are its initialisation; its own stage trains them
    (``distillation.pretrain_autoencoder``).
    """
    distillation = distillation_lib.make_distillation(config)
    h, w = (int(s) for s in config.crop_size)
    critic_rng, adapter_rng, ae_rng = jax.random.split(rng, 3)
    out: dict[str, Any] = {"critic": None, "adapter": None, "autoencoder_params": None}
    if distillation.critic is not None:
        out["critic"] = train_state.TrainState.create(
            apply_fn=distillation.critic.apply,
            params=jitted_init(distillation.critic, (1, h, w, num_classes))(critic_rng),
            tx=distillation_lib.critic_optimizer(config.critic_learning_rate),
        )
    if distillation.autoencoder is not None:
        fh, fw = -(-h // 8), -(-w // 8)  # the stride-8 feature map (ceil at each pooling)
        shape = (1, fh, fw, distillation.autoencoder.features)  # student features: same network
        out["autoencoder_params"] = jitted_init(distillation.autoencoder, shape)(ae_rng)
        out["adapter"] = train_state.TrainState.create(
            apply_fn=distillation.adapter.apply,
            params=jitted_init(distillation.adapter, shape)(adapter_rng),
            tx=student_tx,
        )
    return out


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
    params = init_params(config, init_rng, num_classes)
    if config.init == "teacher":
        if teacher_params is None:
            raise ValueError("config.init='teacher' needs teacher_params (see runs.load_teacher)")
        _check_same_tree(teacher_params, params, "the teacher's param tree")
        params = jax.tree.map(lambda x: jnp.array(x, copy=True), teacher_params)
    elif config.init == "imagenet":
        from drd_jax import pretrained as pretrained_lib

        if pretrained is None:
            pretrained = pretrained_lib.load_vgg16_params(config.pretrained_path)
        params = pretrained_lib.merge_pretrained(params, pretrained)
    tx = make_optimizer(config)
    extra = {}
    if config.mode == "student" and distillation_lib.uses_kd_methods(config):
        extra = _distillation_networks(
            config, jax.random.fold_in(init_rng, 1), num_classes=num_classes, student_tx=tx
        )
    model = make_model(config, num_classes)
    return TrainState.create(
        apply_fn=model.apply, params=params, tx=tx, dropout_rng=dropout_rng, **extra
    )


def params_fingerprint(params: Any) -> str:
    """sha256 of the float32 bytes of ``jax.tree.leaves(params)``, in tree order."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(jax.device_get(params)):
        h.update(np.ascontiguousarray(np.asarray(leaf, dtype=np.float32)).tobytes())
    return h.hexdigest()
