"""Segmentation and distillation losses, written in the style of ``optax.losses``.

Every loss is a pure function: arrays first, hyper-parameters keyword-only, and an *unreduced*
output. The pixel-wise losses take an optional ``where`` mask and return one value per pixel
(logits have the classes on the last axis; the output has the logits' shape without that axis).
Reduce with :func:`masked_mean`, e.g.::

    per_pixel = vtce_loss(student_logits, teacher_logits, temperature=t, where=valid)
    loss = masked_mean(per_pixel, where=valid)

Teacher logits and temperatures never carry a gradient (``jax.lax.stop_gradient`` is applied
inside each loss). Losses are computed in at least float32 (bfloat16/float16 inputs are promoted,
and gradients come back in the input's dtype). VTCE's value and gradient are exact for every
temperature T ≥ 0, including the schedule's float32 underflow to 0, and under any upstream
scale: its derivative is written out (:func:`tempered_log_softmax`) rather than formed as
``T · (cotangent / T)``, which underflows for T below about 1e-30. An invalid temperature
(negative, NaN, ±inf) raises ``ValueError`` when its value is known, and makes the loss NaN when
it is traced (under ``jit``); labels must be integers (a float dtype raises at trace time), and
a ``temperature`` or ``where`` must broadcast to the per-pixel shape (``logits.shape[:-1]``; another
shape raises ``ValueError`` naming it, at trace time too).

Contents:

* pixel-wise terms (per-pixel output): :func:`segmentation_cross_entropy`, :func:`vtce_loss` with
  its schedule :func:`vtce_temperature`, and :func:`pixelwise_kd_loss` (Structured KD);
* feature-map terms on NHWC features (per-example output, shape ``(N,)``; teacher features get
  ``stop_gradient`` too): :func:`pairwise_similarity_loss` (Structured KD),
  :func:`affinity_distillation_loss` and :func:`knowledge_adaptation_loss` (Knowledge
  Adaptation), built on :func:`cosine_affinity`;
* the holistic (adversarial) term of Structured KD as WGAN-GP pieces: :func:`wgan_critic_loss`,
  :func:`wgan_generator_loss` and :func:`wgan_gradient_penalty`;
* helpers: :func:`masked_mean`, :func:`valid_label_mask` and :func:`tempered_log_softmax`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "affinity_distillation_loss",
    "cosine_affinity",
    "knowledge_adaptation_loss",
    "masked_mean",
    "pairwise_similarity_loss",
    "pixelwise_kd_loss",
    "segmentation_cross_entropy",
    "tempered_log_softmax",
    "valid_label_mask",
    "vtce_loss",
    "vtce_temperature",
    "wgan_critic_loss",
    "wgan_generator_loss",
    "wgan_gradient_penalty",
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


def _check_temperature(temperature: Any, *, allow_zero: bool) -> None:
    """Raises ``ValueError`` naming ``temperature`` when a *concrete* value (any entry) is not a
    finite number ``>= 0`` (``> 0`` without ``allow_zero``); tracers pass (see
    :func:`_nan_where_invalid_temperature`)."""
    if not _is_concrete(temperature):
        return
    t = np.asarray(temperature, dtype=np.float64)
    ok = np.isfinite(t) & ((t >= 0) if allow_zero else (t > 0))
    if not np.all(ok):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"temperature must be a finite number {bound}, got {temperature!r}.")


def _check_pixel_shape(name: str, value: Any, pixels: tuple[int, ...]) -> None:
    """Raises ``ValueError`` naming ``name`` unless ``value`` (None passes) broadcasts to the
    per-pixel shape ``pixels`` without enlarging it (static: also under ``jit``)."""
    if value is None:
        return
    shape = tuple(np.shape(value))
    try:
        fits = jnp.broadcast_shapes(shape, pixels) == pixels
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(
            f"{name} of shape {shape} must broadcast to the per-pixel shape {pixels} (the logits' "
            "shape without the class axis): a scalar, one value per pixel, or a broadcastable shape"
        )


def _check_nonnegative(name: str, value: Any) -> None:
    """Raises ``ValueError`` naming ``name`` when a *concrete* ``value`` is not a finite number
    >= 0; tracers pass (the result is made NaN instead, see :func:`vtce_temperature`)."""
    if not _is_concrete(value):
        return
    v = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(v) & (v >= 0)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")


def _nan_where_invalid_temperature(per_pixel: jax.Array, temperature: ArrayLike) -> jax.Array:
    """``per_pixel`` with NaN wherever the temperature is negative, NaN or infinite.

    Under ``jit`` a traced temperature cannot be refused by value, and the clamp in
    :func:`tempered_log_softmax` would silently turn T < 0 into T → 0 (and T = inf gives inf):
    NaN makes the loss non-finite, which the trainer reports as a non-finite loss at that step.
    ``temperature`` broadcasts to ``per_pixel``'s shape (one value per pixel, or a scalar).
    """
    t = jax.lax.stop_gradient(jnp.asarray(temperature, dtype=per_pixel.dtype))
    valid = jnp.isfinite(t) & (t >= 0)
    return jnp.where(valid, per_pixel, jnp.full((), jnp.nan, per_pixel.dtype))


def _check_labels(labels: jax.Array) -> None:
    """Raises ``ValueError`` (at trace time: the dtype is static) unless ``labels`` has an
    integer dtype; a float label such as 1.7 would otherwise be truncated to class 1."""
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(
            f"labels must have an integer dtype (class ids, e.g. uint8 or int32), got "
            f"{labels.dtype}; round or cast them explicitly if they are whole numbers"
        )


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

    Raises:
      ValueError: a ``where`` that does not broadcast to ``values.shape``, naming it.

    Examples:
      >>> import jax.numpy as jnp
      >>> from drd_jax.losses import masked_mean
      >>> print(masked_mean(jnp.array([1.0, 2.0, 30.0]), jnp.array([True, True, False])))
      1.5
      >>> print(masked_mean(jnp.array([1.0, 2.0]), jnp.array([False, False])))
      0.0
    """
    values = jnp.asarray(values)
    _check_pixel_shape("where", where, values.shape)
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
    the optional ``where`` mask (broadcastable to ``labels.shape``) is False. ``labels`` must have
    an integer dtype, and ``where`` a shape that broadcasts to theirs (``ValueError`` otherwise,
    at trace time under ``jit``).

    Examples:
      >>> import jax.numpy as jnp
      >>> from drd_jax.losses import valid_label_mask
      >>> print(valid_label_mask(jnp.array([0, 2, 255, 3]), num_classes=3))
      [ True  True False False]
    """
    labels = jnp.asarray(labels)
    _check_labels(labels)
    _check_pixel_shape("where", where, labels.shape)
    labels = labels.astype(jnp.int32)
    valid = (labels >= 0) & (labels < num_classes)
    if ignore_index is not None:
        valid = valid & (labels != ignore_index)
    if where is not None:
        valid = valid & jnp.asarray(where, dtype=bool)
    return valid


@jax.custom_jvp
def _scaled_log_softmax(shifted: jax.Array, temperature: jax.Array) -> jax.Array:
    r"""``T · log softmax(d / T)`` of max-shifted logits ``d`` (``max d = 0``), T a constant.

    The derivative is written out (:math:`\partial f_i / \partial d_j = \delta_{ij} - q_j`, no T
    in it): differentiating ``d - T · logsumexp(d / T)`` by the chain rule multiplies the
    cotangent by T and divides it by T again, and for T below about 1e-30 the product underflows
    (to 0, or to a subnormal that XLA flushes to 0), which drops the :math:`q` part of the
    gradient. ``temperature`` (broadcastable to ``shifted.shape[:-1] + (1,)``, a normal float)
    must not carry a tangent: callers ``stop_gradient`` it.
    """
    lse = jax.nn.logsumexp(shifted / temperature, axis=-1, keepdims=True)
    return shifted - temperature * lse


@_scaled_log_softmax.defjvp
def _scaled_log_softmax_jvp(primals, tangents):
    shifted, temperature = primals
    shifted_dot, _ = tangents  # the temperature is a constant (see above)
    s = shifted / temperature
    lse = jax.nn.logsumexp(s, axis=-1, keepdims=True)
    q = jnp.exp(s - lse)
    out = shifted - temperature * lse
    return out, shifted_dot - jnp.sum(q * shifted_dot, axis=-1, keepdims=True)


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
    :math:`-(\max z - \min z) - T\log K` and 0) for any T ≥ 0, and its derivative is the exact
    :math:`\partial (T \log q_i) / \partial z_j = \delta_{ij} - q_j` (a custom JVP: no product
    with T is formed, so nothing underflows at tiny T or under a tiny upstream cotangent).
    Temperatures below the smallest normal float (including 0) are clamped to it (the T → 0
    limit: :math:`q` one-hot on the argmax, shared equally between tied maxima).
    ``temperature`` may be a scalar or an array broadcastable to ``logits.shape[:-1]`` (another
    shape raises ``ValueError`` naming it); it is a constant for autodiff (``stop_gradient``: a
    schedule or hyper-parameter, never trained).

    Returns:
      ``(log_q, t_log_q)``, both of ``logits``' shape. ``log_q`` can reach -inf for T near the
      clamp (its derivative scales as 1/T); ``t_log_q`` is always finite for finite logits.
    """
    logits = jnp.asarray(logits)
    _check_pixel_shape("temperature", temperature, logits.shape[:-1])
    dtype = _float_dtype(logits)
    logits = logits.astype(dtype)
    t = jax.lax.stop_gradient(jnp.asarray(temperature, dtype=dtype))
    t = jnp.maximum(t, jnp.finfo(dtype).tiny)[..., None]
    d = logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    s = d / t
    log_q = s - jax.nn.logsumexp(s, axis=-1, keepdims=True)
    return log_q, _scaled_log_softmax(d, t)


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

    Works with Python numbers and with traced scalars (inside ``jax.jit``). ``num_train_images``
    and ``batch_size`` must be positive, ``step`` (so the epoch) and ``beta`` finite and >= 0:
    ``ValueError`` naming the argument when its value is known; a traced ``step`` or ``beta``
    that is negative (or NaN, ±inf) gives a NaN temperature, which makes the loss non-finite.

    Args:
      step: Iteration number λ (0-based), a Python int or an integer/float (traced) scalar.
      num_train_images: N, the number of training images.
      batch_size: B, images per iteration (default 1, as in the paper).
      beta: β ≥ 0 (default 0.9, the paper's value; 0 gives T = 1 throughout).

    Returns:
      The temperature, a float scalar ``jax.Array``.

    Raises:
      ValueError: a known ``num_train_images`` or ``batch_size`` that is not > 0, or ``step`` or
        ``beta`` that is not a finite number >= 0, naming it.

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
    _check_nonnegative("step", step)
    _check_nonnegative("beta", beta)
    # Integer floor division when everything is an integer (exact for Python ints, jnp floor
    # division otherwise; a float step is floored as well).
    epoch = (step * batch_size) // num_train_images
    e = jnp.asarray(epoch).astype(jnp.result_type(float))
    t = jnp.exp(-beta * (e * e - e + 2.0) / 2.0)
    if _is_concrete(step) and _is_concrete(beta):
        return t
    # A traced step or beta cannot be refused by value: NaN, as an invalid traced temperature.
    valid = (jnp.asarray(step) >= 0) & jnp.isfinite(beta) & (jnp.asarray(beta) >= 0)
    return jnp.where(valid, t, jnp.full((), jnp.nan, t.dtype))


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
    :func:`tempered_log_softmax`, whose derivative contains no T: value and gradient are exact for
    every T ≥ 0 and any upstream scale (a mean over 1e5 pixels times a small weight included).
    The paper's schedule reaches T ≈ 1e-36 at epoch 14 and 0 (float32 underflow) from epoch 16;
    T = 0 (or any T below the smallest normal float) gives the T → 0 limit: value
    :math:`\max_j z^s_j - z^s_{\arg\max z^t}`, gradient
    :math:`\mathrm{onehot}(\arg\max z^s) - \mathrm{onehot}(\arg\max z^t)` (tied maxima share
    equally). The temperature gets no gradient.

    Args:
      student_logits: Student scores, shape ``[..., num_classes]`` (e.g. ``[N, H, W, K]``).
      teacher_logits: Teacher scores, same shape.
      temperature: T ≥ 0, a scalar (Python or traced, e.g. from :func:`vtce_temperature`) or an
        array broadcastable to ``logits.shape[:-1]``.
      where: Optional boolean mask of shape ``logits.shape[:-1]`` (broadcastable); masked pixels
        give 0.

    Returns:
      The unreduced loss, shape ``logits.shape[:-1]``. Average it over valid pixels with
      :func:`masked_mean` (the paper's reduction). Where a traced temperature is invalid
      (negative, NaN or ±inf) the loss is NaN (masked pixels still give 0), so a training step
      stops as non-finite instead of computing T = 0's (or inf's) value.

    Raises:
      ValueError: a concrete temperature (any entry) that is negative, NaN or ±inf, naming it;
        a ``temperature`` or ``where`` whose shape does not broadcast to ``logits.shape[:-1]``
        (checked under ``jit`` too: shapes are static), naming it; logits of different shapes.

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
    _check_pixel_shape("temperature", temperature, student_logits.shape[:-1])
    _check_pixel_shape("where", where, student_logits.shape[:-1])
    _check_temperature(temperature, allow_zero=True)
    _, t_log_qs = tempered_log_softmax(student_logits, temperature=temperature)
    log_qt, _ = tempered_log_softmax(teacher_logits, temperature=temperature)
    qt = jnp.exp(log_qt)  # exactly 0 where log_qt = -inf, so the product below stays finite
    per_pixel = -jnp.sum(qt * t_log_qs, axis=-1)
    return _apply_where(_nan_where_invalid_temperature(per_pixel, temperature), where)


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
      labels: Integer labels (any integer dtype, e.g. uint8; a float or bool dtype raises
        ``ValueError``, at trace time under ``jit``), shape ``logits.shape[:-1]``.
      ignore_index: The void label (default 255); None to ignore only out-of-range labels.
      where: Optional boolean mask of shape ``logits.shape[:-1]`` (broadcastable; another shape
        raises ``ValueError`` naming it); False pixels give 0.

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
    _check_labels(labels)
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
    Terms with :math:`p^t_i = 0` contribute 0. The gradient is :math:`(p^s - p^t)/T`: exact
    (tested down to T = 1e-36 under upstream scales down to 1e-8) but it grows as 1/T, and the
    value grows as 1/T where the two argmaxes differ, so small temperatures are rarely useful
    here. Temperatures below the smallest normal float are clamped to it; T gets no gradient.

    Args:
      student_logits: Student scores, shape ``[..., num_classes]``.
      teacher_logits: Teacher scores, same shape.
      temperature: T > 0 (default 1), scalar or broadcastable to ``logits.shape[:-1]``.
      where: Optional boolean mask of shape ``logits.shape[:-1]``; masked pixels give 0.

    Returns:
      The unreduced loss, shape ``logits.shape[:-1]``; SKD averages it over pixels
      (:func:`masked_mean`). NaN where a traced temperature is negative, NaN or ±inf (as
      :func:`vtce_loss`).

    Raises:
      ValueError: a concrete temperature that is not a finite number > 0, naming it; a
        ``temperature`` or ``where`` whose shape does not broadcast to ``logits.shape[:-1]``,
        naming it.

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
    _check_pixel_shape("temperature", temperature, student_logits.shape[:-1])
    _check_pixel_shape("where", where, student_logits.shape[:-1])
    _check_temperature(temperature, allow_zero=False)
    log_ps, _ = tempered_log_softmax(student_logits, temperature=temperature)
    log_pt, _ = tempered_log_softmax(teacher_logits, temperature=temperature)
    pt = jnp.exp(log_pt)
    terms = jnp.where(pt > 0, pt * (log_pt - log_ps), jnp.zeros((), pt.dtype))
    per_pixel = jnp.sum(terms, axis=-1)
    return _apply_where(_nan_where_invalid_temperature(per_pixel, temperature), where)


# ---------------------------------------------------------------------------------------------
# Feature-map distillation: cosine affinities (Structured KD pair-wise, Knowledge Adaptation)
# ---------------------------------------------------------------------------------------------

_NORM_EPS = 1e-8  # safe-norm floor: x / max(||x||, eps)


def _safe_l2_normalize(x: jax.Array, axis: int | tuple[int, ...]) -> jax.Array:
    """``x / max(‖x‖₂, eps)`` along ``axis``; zero vectors give 0, with a finite gradient.

    The square root is only taken of sums above ``eps²`` (double ``jnp.where``), so the
    derivative of the norm (infinite at 0) never enters the computation.
    """
    sq = jnp.sum(x * x, axis=axis, keepdims=True)
    small = sq <= _NORM_EPS**2
    norm = jnp.where(small, jnp.asarray(_NORM_EPS, x.dtype), jnp.sqrt(jnp.where(small, 1.0, sq)))
    return x / norm


def _cosine_gram(vectors: jax.Array) -> jax.Array:
    """Cosine similarities of the rows of each example: ``(N, P, C) -> (N, P, P)``."""
    unit = _safe_l2_normalize(vectors, axis=-1)
    return jnp.einsum("npc,nqc->npq", unit, unit, precision=jax.lax.Precision.HIGHEST)


def _check_nhwc(name: str, features: jax.Array) -> None:
    if features.ndim != 4:
        raise ValueError(
            f"{name} must be NHWC, i.e. of rank 4 (N, H, W, C), got shape {features.shape}."
        )


def _check_feature_pair(student: jax.Array, teacher: jax.Array) -> None:
    """Both NHWC with the same N, H, W (the channel counts may differ)."""
    _check_nhwc("student features", student)
    _check_nhwc("teacher features", teacher)
    if student.shape[:3] != teacher.shape[:3]:
        raise ValueError(
            "student and teacher features must have the same N, H, W (channels may differ), got "
            f"{student.shape} and {teacher.shape}."
        )


def _affinity_mse(student_vectors: jax.Array, teacher_vectors: jax.Array) -> jax.Array:
    """Per-example mean over (i, j) of the squared difference of the two cosine Grams."""
    diff = _cosine_gram(teacher_vectors) - _cosine_gram(student_vectors)
    return jnp.mean(diff * diff, axis=(1, 2))


def cosine_affinity(features: ArrayLike) -> jax.Array:
    r"""Pixel × pixel cosine affinity of NHWC features, per example.

    .. math::
      a_{ij} = \frac{f_i^\top f_j}{\max(\lVert f_i \rVert_2, \epsilon)\,
      \max(\lVert f_j \rVert_2, \epsilon)}, \qquad \epsilon = 10^{-8}

    where :math:`f_i \in \mathbb{R}^C` is the feature vector of pixel i, the pixels of each
    example taken in row-major order (i = h·W + w). An all-zero feature vector gives a row and a
    column of zeros (not NaN), and the gradient stays finite there.

    Args:
      features: Feature map of shape ``(N, H, W, C)``.

    Returns:
      The affinities, shape ``(N, H*W, H*W)``, in at least float32.

    Examples:
      >>> import jax.numpy as jnp
      >>> from drd_jax.losses import cosine_affinity
      >>> features = jnp.array([[[[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]]])  # (1, 1, 3, 2)
      >>> with jnp.printoptions(precision=4):
      ...     print(cosine_affinity(features))
      [[[1.     0.7071 0.    ]
        [0.7071 1.     0.    ]
        [0.     0.     0.    ]]]
    """
    features = jnp.asarray(features)
    _check_nhwc("features", features)
    n, h, w, c = features.shape
    features = features.astype(_float_dtype(features))
    return _cosine_gram(features.reshape(n, h * w, c))


def _node_window(
    height: int,
    width: int,
    node_scale: float,
    node_window: Sequence[int] | None,
) -> tuple[int, int]:
    """The max-pooling window (= stride) of :func:`pairwise_similarity_loss`, validated."""
    if node_window is not None:
        window = tuple(node_window)
        if len(window) != 2 or not all(
            isinstance(k, int | np.integer) and not isinstance(k, bool) for k in window
        ):
            raise ValueError(f"node_window must be a pair of ints (h, w), got {node_window!r}.")
        if window[0] < 1 or window[1] < 1:
            raise ValueError(f"node_window entries must be >= 1, got {node_window!r}.")
        if window[0] > height or window[1] > width:
            raise ValueError(
                f"node_window {window} is larger than the feature map ({height}, {width})."
            )
        return int(window[0]), int(window[1])
    if not _is_concrete(node_scale) or not np.isscalar(node_scale):
        raise ValueError(f"node_scale must be a static Python number, got {node_scale!r}.")
    if not 0.0 < node_scale <= 1.0:
        raise ValueError(f"node_scale must be in (0, 1], got {node_scale!r}.")
    return max(1, int(height * node_scale)), max(1, int(width * node_scale))


def _max_pool_ceil(features: jax.Array, window: tuple[int, int]) -> jax.Array:
    """Max pooling with window = stride, keeping partial last windows ('ceil mode')."""
    n, h, w, c = features.shape
    kh, kw = window
    nh, nw = -(-h // kh), -(-w // kw)
    padded = jnp.pad(
        features,
        ((0, 0), (0, nh * kh - h), (0, nw * kw - w), (0, 0)),
        constant_values=-jnp.inf,
    )
    return jnp.max(padded.reshape(n, nh, kh, nw, kw, c), axis=(2, 4))


def pairwise_similarity_loss(
    student_features: ArrayLike,
    teacher_features: ArrayLike,
    *,
    node_scale: float = 0.5,
    node_window: Sequence[int] | None = None,
) -> jax.Array:
    r"""Pair-wise distillation of Structured KD, per example.

    The features are max-pooled into a coarse grid of "nodes" (window = stride), then

    .. math::
      L_{pa} = \frac{1}{P^2} \sum_{i=1}^{P} \sum_{j=1}^{P} \left(a^t_{ij} - a^s_{ij}\right)^2

    with :math:`a_{ij}` the cosine similarity of nodes i and j (:func:`cosine_affinity`) and P
    the number of nodes. The pooling window is ``node_window`` if given, else
    ``(max(1, int(H * node_scale)), max(1, int(W * node_scale)))`` as the upstream code computes
    it from the feature size; like upstream's ``MaxPool2d(..., ceil_mode=True)``, a partial last
    window is pooled too (padding with -inf). The default ``node_scale=0.5`` gives 2 × 2 nodes
    when H and W are even. With ``node_window=(1, 1)`` this is
    :func:`affinity_distillation_loss`.

    The teacher is a constant (``stop_gradient``). Upstream detaches the feature norm in the
    normalisation; here the true gradient of the normalised features is used. Upstream sums over
    the batch and divides by N (so it averages this per-example value) and weights the term by
    λ = 0.5 in its training script; no weight is applied here.

    Args:
      student_features: Student features, shape ``(N, H, W, Cs)``.
      teacher_features: Teacher features, shape ``(N, H, W, Ct)``; Ct may differ from Cs.
      node_scale: Window size as a fraction of the feature size, a static number in (0, 1]
        (default 0.5, upstream's value). Ignored when ``node_window`` is given.
      node_window: Optional static pair ``(h, w)`` of ints, the pooling window and stride.

    Returns:
      The loss per example, shape ``(N,)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from drd_jax.losses import pairwise_similarity_loss
      >>> student = jnp.array([[[[1.0, 0.0], [0.0, 1.0]]]])  # (1, 1, 2, 2): a^s = I
      >>> teacher = jnp.array([[[[2.0, 0.0, 0.0], [1.0, 0.0, 0.0]]]])  # a^t = all ones
      >>> print(pairwise_similarity_loss(student, teacher, node_window=(1, 1)))  # 2 / 2**2
      [0.5]

    References:
      Liu et al., `Structured Knowledge Distillation for Semantic Segmentation
      <https://arxiv.org/abs/1903.04197>`_, CVPR 2019, and the upstream code
      (``CriterionPairWiseforWholeFeatAfterPool``).
    """
    student = jnp.asarray(student_features)
    teacher = jax.lax.stop_gradient(jnp.asarray(teacher_features))
    _check_feature_pair(student, teacher)
    window = _node_window(student.shape[1], student.shape[2], node_scale, node_window)
    dtype = _float_dtype(student, teacher)
    nodes_s = _max_pool_ceil(student.astype(dtype), window)
    nodes_t = _max_pool_ceil(teacher.astype(dtype), window)
    n = student.shape[0]
    return _affinity_mse(
        nodes_s.reshape(n, -1, nodes_s.shape[-1]), nodes_t.reshape(n, -1, nodes_t.shape[-1])
    )


def affinity_distillation_loss(
    student_features: ArrayLike,
    teacher_features: ArrayLike,
) -> jax.Array:
    r"""Affinity distillation of Knowledge Adaptation, per example.

    .. math::
      L_{af} = \frac{1}{(HW)^2} \sum_{i=1}^{HW} \sum_{j=1}^{HW}
      \left(A^s_{ij} - A^t_{ij}\right)^2

    with :math:`A_{ij}` the cosine similarity of the feature vectors of pixels i and j
    (:func:`cosine_affinity`): the spatial, pixel × pixel affinity of the paper. (One public
    port, torchdistill's ``AffinityLoss``, instead normalises each channel over the pixels and
    compares per-channel outer products; that is not what is computed here.) The teacher is a
    constant (``stop_gradient``). The memory is O(N (HW)²): apply it to small feature maps.

    Args:
      student_features: Student (adapted) features, shape ``(N, H, W, Cs)``.
      teacher_features: Teacher features, shape ``(N, H, W, Ct)``; Ct may differ from Cs.

    Returns:
      The loss per example, shape ``(N,)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from drd_jax.losses import affinity_distillation_loss
      >>> student = jnp.array([[[[1.0, 0.0], [0.0, 1.0]]]])  # (1, 1, 2, 2): A^s = I
      >>> teacher = jnp.array([[[[2.0, 0.0, 0.0], [1.0, 0.0, 0.0]]]])  # A^t = all ones
      >>> print(affinity_distillation_loss(student, teacher))  # (0 + 1 + 1 + 0) / 4
      [0.5]

    References:
      He, Shen, Tian, Gong, Sun and Yan, `Knowledge Adaptation for Efficient Semantic
      Segmentation <https://arxiv.org/abs/1903.04688>`_, CVPR 2019 (affinity distillation).
    """
    student = jnp.asarray(student_features)
    teacher = jax.lax.stop_gradient(jnp.asarray(teacher_features))
    _check_feature_pair(student, teacher)
    dtype = _float_dtype(student, teacher)
    n, h, w = student.shape[:3]
    return _affinity_mse(
        student.astype(dtype).reshape(n, h * w, -1), teacher.astype(dtype).reshape(n, h * w, -1)
    )


def knowledge_adaptation_loss(student_adapted: ArrayLike, teacher_code: ArrayLike) -> jax.Array:
    r"""Knowledge adaptation loss: mean absolute difference of the L2-normalised codes, per example.

    .. math::
      L_{adapt} = \frac{1}{HWC} \left\lVert \frac{s}{\max(\lVert s \rVert_2, \epsilon)}
      - \frac{t}{\max(\lVert t \rVert_2, \epsilon)} \right\rVert_1, \qquad \epsilon = 10^{-8}

    where s is the student's adapted feature and t the teacher's compressed code (the
    auto-encoder's output), each flattened over the whole (H, W, C) tensor of an example and
    L2-normalised, as torchdistill's KTAAD port does. The L1 distance is averaged over the H·W·C
    elements, as that port's ``l1_loss(..., reduction='mean')`` does, so that its weight of 50
    means the same here (averaging this output over the batch gives the port's value; no weight
    is applied here). The teacher is a constant (``stop_gradient``). The value is in
    [0, 2/sqrt(HWC)] and 0 when s is a positive multiple of t.

    Args:
      student_adapted: Adapted student features, shape ``(N, H, W, C)``.
      teacher_code: Teacher code, the same shape.

    Returns:
      The loss per example, shape ``(N,)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from drd_jax.losses import knowledge_adaptation_loss
      >>> student = jnp.array([[[[3.0, 4.0]]]])  # normalised: (0.6, 0.8)
      >>> teacher = jnp.array([[[[2.0, 0.0]]]])  # normalised: (1, 0)
      >>> print(round(float(knowledge_adaptation_loss(student, teacher)[0]), 4))  # (0.4 + 0.8) / 2
      0.6

    References:
      He, Shen, Tian, Gong, Sun and Yan, `Knowledge Adaptation for Efficient Semantic
      Segmentation <https://arxiv.org/abs/1903.04688>`_, CVPR 2019 (knowledge adaptation).
    """
    student = jnp.asarray(student_adapted)
    teacher = jax.lax.stop_gradient(jnp.asarray(teacher_code))
    _check_nhwc("student_adapted", student)
    _check_nhwc("teacher_code", teacher)
    if student.shape != teacher.shape:
        raise ValueError(
            "student_adapted and teacher_code must have the same shape, got "
            f"{student.shape} and {teacher.shape}."
        )
    dtype = _float_dtype(student, teacher)
    n = student.shape[0]
    s = _safe_l2_normalize(student.astype(dtype).reshape(n, -1), axis=1)
    t = _safe_l2_normalize(teacher.astype(dtype).reshape(n, -1), axis=1)
    return jnp.mean(jnp.abs(s - t), axis=1)


# ---------------------------------------------------------------------------------------------
# Holistic (adversarial) distillation of Structured KD: WGAN-GP pieces
# ---------------------------------------------------------------------------------------------


def wgan_critic_loss(real_scores: ArrayLike, fake_scores: ArrayLike) -> jax.Array:
    r"""Wasserstein critic loss, unreduced: :math:`D(\text{fake}) - D(\text{real})`.

    The critic (discriminator) minimises the mean of this (it raises the teacher's scores and
    lowers the student's); add :func:`wgan_gradient_penalty` times λ_gp. In Structured KD the
    "real" inputs are the teacher's segmentation maps and the "fake" ones the student's. The
    scores are not ``stop_gradient``-ed: differentiate only w.r.t. the critic's parameters (or
    pass the student's output through ``jax.lax.stop_gradient`` before scoring it).

    Args:
      real_scores: Critic scores of real (teacher) inputs, e.g. shape ``(N,)``.
      fake_scores: Critic scores of fake (student) inputs, the same shape.

    Returns:
      ``fake_scores - real_scores``, the same shape, in at least float32.

    Examples:
      >>> import jax.numpy as jnp
      >>> from drd_jax.losses import wgan_critic_loss
      >>> print(wgan_critic_loss(jnp.array([2.0, 1.0]), jnp.array([0.5, 1.5])))
      [-1.5  0.5]

    References:
      Arjovsky, Chintala and Bottou, `Wasserstein GAN <https://arxiv.org/abs/1701.07875>`_, 2017;
      Liu et al., Structured Knowledge Distillation for Semantic Segmentation, CVPR 2019.
    """
    real = jnp.asarray(real_scores)
    fake = jnp.asarray(fake_scores)
    if real.shape != fake.shape:
        raise ValueError(
            f"real_scores and fake_scores must have the same shape, got {real.shape} and "
            f"{fake.shape}."
        )
    dtype = _float_dtype(real, fake)
    return fake.astype(dtype) - real.astype(dtype)


def wgan_generator_loss(fake_scores: ArrayLike) -> jax.Array:
    r"""Wasserstein generator (student) loss, unreduced: :math:`-D(\text{fake})`.

    The student minimises the mean of this, i.e. raises the critic's scores of its own outputs;
    the upstream Structured KD script weights the holistic term by λ_d = 0.1 (not applied here).

    Args:
      fake_scores: Critic scores of the student's outputs, any shape (e.g. ``(N,)``).

    Returns:
      ``-fake_scores``, the same shape, in at least float32.

    Examples:
      >>> import jax.numpy as jnp
      >>> from drd_jax.losses import wgan_generator_loss
      >>> print(wgan_generator_loss(jnp.array([0.5, -2.0])))
      [-0.5  2. ]

    References:
      Liu et al., `Structured Knowledge Distillation for Semantic Segmentation
      <https://arxiv.org/abs/1903.04197>`_, CVPR 2019 (holistic distillation).
    """
    fake = jnp.asarray(fake_scores)
    return -fake.astype(_float_dtype(fake))


def wgan_gradient_penalty(
    critic_fn: Callable[[jax.Array], jax.Array],
    real: ArrayLike,
    fake: ArrayLike,
    *,
    key: jax.Array | None = None,
    epsilon: ArrayLike | None = None,
) -> jax.Array:
    r"""WGAN-GP gradient penalty, per example.

    .. math::
      \hat x = \varepsilon\, x_{real} + (1 - \varepsilon)\, x_{fake}, \quad
      \varepsilon \sim U[0, 1), \qquad
      L_{gp} = \left(\lVert \nabla_{\hat x} D(\hat x) \rVert_2 - 1\right)^2

    with one ε per example (drawn from ``key``, or given as ``epsilon``; broadcast over the other
    axes) and the norm over
    all of an example's non-batch axes, computed as :math:`\sqrt{\sum g^2 + 10^{-12}}` so the
    penalty's own gradient is finite even where :math:`\nabla D = 0`. The input gradient is taken
    of :math:`\sum_n D(\hat x)_n` in one backward pass, which equals the per-example gradients
    only because examples are independent: ``critic_fn`` must not mix examples (no batch norm in
    training mode, no batch statistics). ``real`` and ``fake`` are constants
    (``stop_gradient``): the penalty trains only the critic, whose parameters receive gradients
    through ``critic_fn``'s closure (double backpropagation). The critic minimises
    ``mean(wgan_critic_loss(...)) + λ_gp · mean(penalty)``; λ_gp = 10 upstream (not applied here).
    In Structured KD the critic also sees the image: close over it in ``critic_fn``.

    Args:
      critic_fn: Maps a batch ``(N, ...)`` (the shape of ``real``) to per-example scores ``(N,)``.
      real: Real (teacher) inputs, shape ``(N, ...)``.
      fake: Fake (student) inputs, the same shape.
      key: PRNG key for ε (give ``key`` or ``epsilon``).
      epsilon: The interpolation weights ε, shape ``(N,)``, instead of drawing them (e.g. a
        slice of weights drawn for a global batch, so the penalty does not depend on how the
        batch is split over devices).

    Returns:
      The penalty per example, shape ``(N,)``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from drd_jax.losses import wgan_gradient_penalty
      >>> w = jnp.array([3.0, 4.0])  # linear critic: the gradient is w everywhere, ‖w‖ = 5
      >>> real, fake = jnp.ones((2, 2)), jnp.zeros((2, 2))
      >>> print(wgan_gradient_penalty(lambda x: x @ w, real, fake, key=jax.random.key(0)))
      [16. 16.]

    References:
      Gulrajani, Ahmed, Arjovsky, Dumoulin and Courville, `Improved Training of Wasserstein GANs
      <https://arxiv.org/abs/1704.00028>`_, NeurIPS 2017, eq. (3); Liu et al., Structured
      Knowledge Distillation for Semantic Segmentation, CVPR 2019.
    """
    real = jax.lax.stop_gradient(jnp.asarray(real))
    fake = jax.lax.stop_gradient(jnp.asarray(fake))
    if real.shape != fake.shape:
        raise ValueError(
            f"real and fake must have the same shape, got {real.shape} and {fake.shape}."
        )
    if real.ndim < 1:
        raise ValueError("real and fake need a batch axis (the first axis).")
    dtype = _float_dtype(real, fake)
    n = real.shape[0]
    if (key is None) == (epsilon is None):
        raise ValueError("give exactly one of key and epsilon.")
    if epsilon is None:
        eps = jax.random.uniform(key, (n,) + (1,) * (real.ndim - 1), dtype=dtype)
    else:
        epsilon = jax.lax.stop_gradient(jnp.asarray(epsilon, dtype))
        if epsilon.shape != (n,):
            raise ValueError(f"epsilon must have shape {(n,)}, got {epsilon.shape}.")
        eps = epsilon.reshape((n,) + (1,) * (real.ndim - 1))
    x_hat = eps * real.astype(dtype) + (1.0 - eps) * fake.astype(dtype)

    def total_score(x: jax.Array) -> jax.Array:
        scores = jnp.asarray(critic_fn(x))
        if scores.shape != (n,):
            raise ValueError(
                f"critic_fn must return one score per example, shape {(n,)}, got {scores.shape}."
            )
        return jnp.sum(scores.astype(dtype))

    grads = jax.grad(total_score)(x_hat)
    sq = jnp.sum(grads * grads, axis=tuple(range(1, grads.ndim)))
    norm = jnp.sqrt(sq + 1e-12)
    return (norm - 1.0) ** 2
