"""Segmentation and distillation losses, written in the style of ``optax.losses``.

Every loss is a pure function: arrays first, hyper-parameters keyword-only, an optional ``where``
mask, and an *unreduced* per-pixel output (logits have the classes on the last axis; the output has
the logits' shape without that axis). Reduce with :func:`masked_mean`, e.g.::

    per_pixel = vtce_loss(student_logits, teacher_logits, temperature=t, where=valid)
    loss = masked_mean(per_pixel, where=valid)

Teacher logits never carry a gradient (``jax.lax.stop_gradient`` is applied inside each loss).
Losses are computed in at least float32 (bfloat16/float16 inputs are promoted) and stay finite for
temperatures down to 1e-4 with logits up to 1e4 in magnitude, in value and in gradient.

The module is meant to grow: later distillation terms (pair-wise, affinity, knowledge adaptation)
can reuse :func:`masked_mean`, :func:`valid_label_mask` and :func:`tempered_log_softmax`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "masked_mean",
    "pixelwise_kd_loss",
    "segmentation_cross_entropy",
    "tempered_log_softmax",
    "valid_label_mask",
    "vtce_loss",
    "vtce_temperature",
]

ArrayLike = jax.typing.ArrayLike


# ---------------------------------------------------------------------------------------------
# Small reusable helpers
# ---------------------------------------------------------------------------------------------


def _is_concrete(x: Any) -> bool:
    """True when ``x`` holds a known value (not a tracer inside jit/vmap/grad/pmap)."""
    return not isinstance(x, jax.core.Tracer)


def _check_positive(name: str, value: Any, *, allow_zero: bool = False) -> None:
    """Raises ``ValueError`` when a *concrete* ``value`` is not positive; tracers pass unchecked."""
    if not _is_concrete(value):
        return
    v = np.asarray(value)
    bad = np.any(v < 0) if allow_zero else np.any(v <= 0)
    if bad or np.any(np.isnan(v)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}.")


def _float_dtype(*arrays: ArrayLike) -> jnp.dtype:
    """The float dtype the losses compute in: the inputs' float type, at least float32."""
    return jnp.promote_types(jnp.result_type(*arrays, jnp.float32), jnp.float32)


def _check_logits(student_logits: jax.Array, teacher_logits: jax.Array) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "student and teacher logits must have the same shape, got "
            f"{student_logits.shape} and {teacher_logits.shape}."
        )
    if student_logits.ndim < 1:
        raise ValueError("logits need a class axis (the last axis).")


def _apply_where(per_pixel: jax.Array, where: ArrayLike | None) -> jax.Array:
    """Zeroes masked pixels (``jnp.where``, so NaN/inf from masked pixels never leaks through)."""
    if where is None:
        return per_pixel
    where = jnp.asarray(where, dtype=bool)
    return jnp.where(where, per_pixel, jnp.zeros((), per_pixel.dtype))


def masked_mean(
    values: ArrayLike,
    where: ArrayLike | None = None,
    *,
    axis: int | tuple[int, ...] | None = None,
) -> jax.Array:
    r"""Mean of ``values`` over the entries where ``where`` is True; 0 (not NaN) when none is.

    .. math::
      \bar v = \frac{\sum_p [w_p]\, v_p}{\max(1, \sum_p [w_p])}

    Masked entries are replaced by 0 with ``jnp.where`` before summing, so NaN or inf in masked
    entries affects neither the value nor the gradient.

    Args:
      values: Array of values (e.g. an unreduced per-pixel loss).
      where: Optional boolean mask broadcastable to ``values.shape``; None means all entries.
      axis: Axis or axes to average over; None (default) averages over all of them.

    Returns:
      The masked mean, with ``axis`` reduced.

    Examples:
      >>> import jax.numpy as jnp
      >>> from drd_jax.losses import masked_mean
      >>> print(masked_mean(jnp.array([1.0, 2.0, 30.0]), jnp.array([True, True, False])))
      1.5
      >>> print(masked_mean(jnp.array([1.0, 2.0]), jnp.array([False, False])))
      0.0
    """
    values = jnp.asarray(values)
    if where is None:
        where = jnp.ones(values.shape, dtype=bool)
    else:
        where = jnp.broadcast_to(jnp.asarray(where, dtype=bool), values.shape)
    total = jnp.sum(jnp.where(where, values, jnp.zeros((), values.dtype)), axis=axis)
    count = jnp.sum(where, axis=axis, dtype=jnp.int32)
    return total / jnp.maximum(count, 1).astype(total.dtype)


def valid_label_mask(
    labels: ArrayLike,
    *,
    num_classes: int,
    ignore_index: int | None = 255,
    where: ArrayLike | None = None,
) -> jax.Array:
    """Boolean mask of the pixels whose label is a real class: ``0 <= label < num_classes``.

    Void pixels (``ignore_index``) and any other out-of-range label are False; so are pixels where
    the optional ``where`` mask is False.

    Examples:
      >>> import jax.numpy as jnp
      >>> from drd_jax.losses import valid_label_mask
      >>> print(valid_label_mask(jnp.array([0, 2, 255, 3]), num_classes=3))
      [ True  True False False]
    """
    labels = jnp.asarray(labels).astype(jnp.int32)
    valid = (labels >= 0) & (labels < num_classes)
    if ignore_index is not None:
        valid = valid & (labels != ignore_index)
    if where is not None:
        valid = valid & jnp.asarray(where, dtype=bool)
    return valid


def tempered_log_softmax(
    logits: ArrayLike, *, temperature: ArrayLike
) -> tuple[jax.Array, jax.Array]:
    r"""``log softmax(z / T)`` and ``T · log softmax(z / T)`` over the last axis, safe for tiny T.

    With :math:`d = z - \max_j z_j` (the max is a constant for autodiff: the result is
    shift-invariant) and :math:`s = d / T`,

    .. math::
      \log q = s - \operatorname{logsumexp}(s), \qquad
      T \log q = d - T \operatorname{logsumexp}(s).

    The second form never divides the logits by T in the result, so it stays finite (between
    :math:`-(\max z - \min z) - T\log K` and 0) for any T > 0, and its gradient is bounded.
    Temperatures below the smallest normal float (including 0) are clamped to it (the T → 0
    limit). ``temperature`` may be a scalar or an array broadcastable to ``logits.shape[:-1]``.

    Returns:
      ``(log_q, t_log_q)``, both of ``logits``' shape. ``log_q`` can reach -inf for T near the
      clamp; ``t_log_q`` is always finite for finite logits.
    """
    logits = jnp.asarray(logits)
    dtype = _float_dtype(logits)
    logits = logits.astype(dtype)
    t = jnp.asarray(temperature, dtype=dtype)
    t = jnp.maximum(t, jnp.finfo(dtype).tiny)[..., None]
    d = logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    s = d / t
    lse = jax.nn.logsumexp(s, axis=-1, keepdims=True)
    return s - lse, d - t * lse


# ---------------------------------------------------------------------------------------------
# Variable Temperature Cross Entropy (Depth Removal Distillation, eqs. 9-11)
# ---------------------------------------------------------------------------------------------


def vtce_temperature(
    step: ArrayLike,
    *,
    num_train_images: ArrayLike,
    batch_size: ArrayLike = 1,
    beta: ArrayLike = 0.9,
) -> jax.Array:
    r"""The VTCE temperature schedule of Depth Removal Distillation (eq. 10).

    .. math::
      T = \exp\!\left(-\beta\, \frac{e^2 - e + 2}{2}\right), \qquad
      e = \left\lfloor \frac{\lambda \cdot B}{N} \right\rfloor

    where λ is the iteration (``step``), N the number of training images and B the batch size (the
    paper trains with B = 1, so e is the epoch). T(e=0) = T(e=1) = e^{-β}, T(e=2) = e^{-2β},
    T(e=3) = e^{-4β}. T decays very fast: in float32 it underflows to 0 from e = 16 with β = 0.9;
    :func:`vtce_loss` treats that as the T → 0 limit.

    Works with Python numbers and with traced scalars (inside ``jax.jit``); ``num_train_images``
    and ``batch_size`` are checked to be positive when their values are known.

    Args:
      step: Iteration number λ (0-based), a Python int or an integer/float (traced) scalar.
      num_train_images: N, the number of training images.
      batch_size: B, images per iteration (default 1, as in the paper).
      beta: β (default 0.9, the paper's value).

    Returns:
      The temperature, a float scalar ``jax.Array``.

    Examples:
      >>> from drd_jax.losses import vtce_temperature
      >>> [round(float(vtce_temperature(e * 795, num_train_images=795)), 4) for e in range(4)]
      [0.4066, 0.4066, 0.1653, 0.0273]

    References:
      Fang, Liang, Shao, Dong and Li, "Depth Removal Distillation for RGB-D Semantic
      Segmentation", Section 2.3, eq. (10).
    """
    _check_positive("num_train_images", num_train_images)
    _check_positive("batch_size", batch_size)
    # Integer floor division when everything is an integer (exact for Python ints, jnp floor
    # division otherwise; a float step is floored as well).
    epoch = (step * batch_size) // num_train_images
    e = jnp.asarray(epoch).astype(jnp.result_type(float))
    return jnp.exp(-beta * (e * e - e + 2.0) / 2.0)


def vtce_loss(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: ArrayLike,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Variable Temperature Cross Entropy (VTCE) of Depth Removal Distillation (eq. 11), per pixel.

    .. math::
      L_{vtce} = -\sum_{i=1}^{n} T\, q^t_i \log q^s_i, \qquad
      q_i = \frac{e^{z_i / T}}{\sum_j e^{z_j / T}}

    for the teacher (:math:`q^t`, from ``teacher_logits``, a constant: ``stop_gradient``) and the
    student (:math:`q^s`). The gradient w.r.t. the student logits is :math:`q^s - q^t`. No other
    factor is applied. Computed as :math:`-\sum_i q^t_i\,(T \log q^s_i)` with
    :func:`tempered_log_softmax`, so logits / T may be huge: finite values and gradients for
    T ≥ 1e-4 and |logits| ≤ 1e4 (and any T > 0 in practice; T = 0 gives the T → 0 limit
    :math:`\max_j z^s_j - z^s_{\arg\max z^t}`).

    Args:
      student_logits: Student scores, shape ``[..., num_classes]`` (e.g. ``[N, H, W, K]``).
      teacher_logits: Teacher scores, same shape.
      temperature: T > 0, a scalar (Python or traced, e.g. from :func:`vtce_temperature`) or an
        array broadcastable to ``logits.shape[:-1]``.
      where: Optional boolean mask of shape ``logits.shape[:-1]`` (broadcastable); masked pixels
        give 0.

    Returns:
      The unreduced loss, shape ``logits.shape[:-1]``. Average it over valid pixels with
      :func:`masked_mean` (the paper's reduction).

    Examples:
      >>> import jax.numpy as jnp
      >>> from drd_jax.losses import vtce_loss
      >>> student = jnp.array([[0.0, 0.0], [1.0, 0.0]])
      >>> teacher = jnp.array([[5.0, 5.0], [0.0, 0.0]])
      >>> loss = vtce_loss(student, teacher, temperature=1.0)  # log 2, log(1 + e) - 1/2
      >>> with jnp.printoptions(precision=4):
      ...     print(loss)
      [0.6931 0.8133]

    References:
      Fang, Liang, Shao, Dong and Li, "Depth Removal Distillation for RGB-D Semantic
      Segmentation", Section 2.3, eqs. (9)-(11).
    """
    student_logits = jnp.asarray(student_logits)
    teacher_logits = jax.lax.stop_gradient(jnp.asarray(teacher_logits))
    _check_logits(student_logits, teacher_logits)
    _check_positive("temperature", temperature, allow_zero=True)
    _, t_log_qs = tempered_log_softmax(student_logits, temperature=temperature)
    log_qt, _ = tempered_log_softmax(teacher_logits, temperature=temperature)
    qt = jnp.exp(log_qt)  # exactly 0 where log_qt = -inf, so the product below stays finite
    per_pixel = -jnp.sum(qt * t_log_qs, axis=-1)
    return _apply_where(per_pixel, where)


# ---------------------------------------------------------------------------------------------
# Pixel-wise cross-entropy with void
# ---------------------------------------------------------------------------------------------


def segmentation_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    ignore_index: int | None = 255,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Pixel-wise softmax cross-entropy with integer labels; void pixels give 0.

    .. math::
      L_{ce}(p) = -\log \frac{e^{z_{p, y_p}}}{\sum_j e^{z_{p, j}}}
      \quad\text{if } 0 \le y_p < K,\ y_p \ne \text{ignore\_index},\ w_p; \quad 0 \text{ otherwise.}

    Built on ``optax.softmax_cross_entropy_with_integer_labels``; void, out-of-range and masked
    labels are replaced by class 0 before the call (so no out-of-range gather happens) and their
    loss is then set to 0 (no gradient reaches those pixels).

    Args:
      logits: Scores, shape ``[..., num_classes]``.
      labels: Integer labels (any integer dtype, e.g. uint8), shape ``logits.shape[:-1]``.
      ignore_index: The void label (default 255); None to ignore only out-of-range labels.
      where: Optional boolean mask of shape ``logits.shape[:-1]``; False pixels give 0.

    Returns:
      The unreduced loss, shape ``logits.shape[:-1]``. Average over the valid pixels with
      ``masked_mean(loss, valid_label_mask(labels, num_classes=K))``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from drd_jax.losses import segmentation_cross_entropy
      >>> logits = jnp.array([[0.0, 0.0], [0.0, 0.0], [3.0, 1.0]])
      >>> labels = jnp.array([1, 255, 0], dtype=jnp.uint8)
      >>> # log 2, void, log(1 + exp(-2))
      >>> with jnp.printoptions(precision=4):
      ...     print(segmentation_cross_entropy(logits, labels))
      [0.6931 0.     0.1269]

    References:
      Long et al., `Fully Convolutional Networks for Semantic Segmentation
      <https://arxiv.org/abs/1411.4038>`_, CVPR 2015.
    """
    logits = jnp.asarray(logits)
    logits = logits.astype(_float_dtype(logits))
    labels = jnp.asarray(labels)
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels shape {labels.shape} must equal logits shape without the class axis "
            f"{logits.shape[:-1]}."
        )
    valid = valid_label_mask(
        labels, num_classes=logits.shape[-1], ignore_index=ignore_index, where=where
    )
    safe_labels = jnp.where(valid, labels.astype(jnp.int32), 0)
    per_pixel = optax.softmax_cross_entropy_with_integer_labels(logits, safe_labels)
    return _apply_where(per_pixel, valid)


# ---------------------------------------------------------------------------------------------
# Pixel-wise knowledge distillation (Structured KD, Liu et al.)
# ---------------------------------------------------------------------------------------------


def pixelwise_kd_loss(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: ArrayLike = 1.0,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Pixel-wise distillation of Structured KD: per-pixel KL(teacher ‖ student).

    .. math::
      L_{pi}(p) = \mathrm{KL}(p^t \,\|\, p^s) = \sum_i p^t_i (\log p^t_i - \log p^s_i), \qquad
      p = \operatorname{softmax}(z / T)

    with the teacher a constant (``stop_gradient``). Convention: **no** :math:`T^2` factor is
    applied, and the default T = 1, as in the upstream Structured KD code (whose loss weight is
    λ = 10); multiply by ``T**2`` yourself for Hinton-style gradient scaling. Upstream computes the
    soft cross-entropy :math:`-\sum_i p^t_i \log p^s_i`, which differs from this KL only by the
    teacher's entropy (a constant): same gradient, but our value is 0 when student = teacher.
    Terms with :math:`p^t_i = 0` contribute 0. Finite values and gradients for T ≥ 1e-4 and
    |logits| ≤ 1e4 (the gradient is :math:`(p^s - p^t)/T`).

    Args:
      student_logits: Student scores, shape ``[..., num_classes]``.
      teacher_logits: Teacher scores, same shape.
      temperature: T > 0 (default 1), scalar or broadcastable to ``logits.shape[:-1]``.
      where: Optional boolean mask of shape ``logits.shape[:-1]``; masked pixels give 0.

    Returns:
      The unreduced loss, shape ``logits.shape[:-1]``; SKD averages it over pixels
      (:func:`masked_mean`).

    Examples:
      >>> import jax.numpy as jnp
      >>> from drd_jax.losses import pixelwise_kd_loss
      >>> student = jnp.array([[0.0, 0.0], [2.0, -1.0]])
      >>> teacher = jnp.array([[0.0, 0.0], [2.0, -1.0]])
      >>> print(pixelwise_kd_loss(student, teacher))
      [0. 0.]
      >>> teacher = jnp.array([0.0, -1e4])  # one-hot teacher vs uniform student: log 2
      >>> print(round(float(pixelwise_kd_loss(jnp.array([0.0, 0.0]), teacher)), 4))
      0.6931

    References:
      Liu et al., `Structured Knowledge Distillation for Semantic Segmentation
      <https://arxiv.org/abs/1903.04197>`_, CVPR 2019.
    """
    student_logits = jnp.asarray(student_logits)
    teacher_logits = jax.lax.stop_gradient(jnp.asarray(teacher_logits))
    _check_logits(student_logits, teacher_logits)
    _check_positive("temperature", temperature)
    log_ps, _ = tempered_log_softmax(student_logits, temperature=temperature)
    log_pt, _ = tempered_log_softmax(teacher_logits, temperature=temperature)
    pt = jnp.exp(log_pt)
    terms = jnp.where(pt > 0, pt * (log_pt - log_ps), jnp.zeros((), pt.dtype))
    per_pixel = jnp.sum(terms, axis=-1)
    return _apply_where(per_pixel, where)
