"""Semantic-segmentation metrics from one confusion matrix (docs/method.md, Metrics).

Accumulate a confusion matrix on device, batch after batch (and across devices with
``jax.lax.psum``), then read every metric from it once at the end of the test set::

    cm = cm + confusion_matrix(labels, jnp.argmax(logits, -1), num_classes=K)  # inside jit/pmap
    ...
    print(format_confusion_table(cm, class_names))
    json.dump(compute_metrics(cm), f)

Convention: rows are ground truth, columns are predictions. A class whose ground-truth row is
empty (it never occurs in the labels) has NaN per-class accuracy and IoU and is left out of the
means (mPA, mIoU) — even if it was predicted somewhere.

The metric functions accept NumPy or JAX arrays: NumPy in → NumPy float64 out (no device work);
JAX in → JAX out (jit-able). They never emit warnings for absent classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "compute_metrics",
    "confusion_matrix",
    "format_confusion_table",
    "mean_iou",
    "mean_pixel_accuracy",
    "per_class_iou",
    "per_class_pixel_accuracy",
    "pixel_accuracy",
]


def confusion_matrix(
    labels: jax.typing.ArrayLike,
    predictions: jax.typing.ArrayLike,
    *,
    num_classes: int,
    ignore_index: int | None = 255,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """Confusion matrix of a batch, computed on device; ``cm[g, p]`` counts pixels of class g
    predicted as p.

    Pixels are counted only when ``0 <= label < num_classes``, ``label != ignore_index`` (void),
    ``0 <= prediction < num_classes`` and the optional ``where`` mask is True (e.g. False for the
    padding examples of the last eval batch). Matrices of different batches add up (``cm1 + cm2``)
    and so do those of different devices (``jax.lax.psum(cm, axis_name)``).

    The counts are int32: one matrix holds at most 2**31 - 1 pixels per cell. To accumulate a very
    large test set, sum the per-batch matrices on the host as int64.

    Args:
      labels: Integer ground truth of any shape (e.g. ``[N, H, W]``, uint8 works); a float or
        bool dtype raises ``ValueError`` (at trace time under ``jit``), as in ``drd_jax.losses``:
        a label such as 1.7 would otherwise be truncated to class 1.
      predictions: Integer predictions of the same shape (e.g. ``argmax`` of the logits); the
        same dtype rule.
      num_classes: K (static).
      ignore_index: The void label (default 255); None to drop only out-of-range labels.
      where: Optional boolean mask broadcastable to ``labels.shape``.

    Returns:
      int32 array of shape ``(num_classes, num_classes)``: rows = ground truth, cols = prediction.

    Examples:
      >>> import jax.numpy as jnp
      >>> from drd_jax.metrics import confusion_matrix
      >>> labels = jnp.array([[0, 0, 1], [1, 255, 2]], dtype=jnp.uint8)
      >>> preds = jnp.array([[0, 1, 1], [1, 0, 1]])
      >>> print(confusion_matrix(labels, preds, num_classes=3))
      [[1 1 0]
       [0 2 0]
       [0 1 0]]
    """
    num_classes = int(num_classes)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    labels = jnp.asarray(labels)
    predictions = jnp.asarray(predictions)
    for name, array in (("labels", labels), ("predictions", predictions)):
        if not jnp.issubdtype(array.dtype, jnp.integer):
            raise ValueError(
                f"{name} must have an integer dtype (class ids, e.g. uint8 or int32), got "
                f"{array.dtype}; round or cast them explicitly if they are whole numbers"
            )
    if labels.shape != predictions.shape:
        raise ValueError(
            f"labels and predictions must have the same shape, got {labels.shape} and "
            f"{predictions.shape}."
        )
    labels = labels.astype(jnp.int32)
    predictions = predictions.astype(jnp.int32)
    valid = (labels >= 0) & (labels < num_classes) & (predictions >= 0)
    valid = valid & (predictions < num_classes)
    if ignore_index is not None:
        valid = valid & (labels != ignore_index)
    if where is not None:
        valid = valid & jnp.broadcast_to(jnp.asarray(where, dtype=bool), labels.shape)
    flat_index = jnp.where(valid, labels * num_classes + predictions, 0).reshape(-1)
    counts = jnp.zeros(num_classes * num_classes, dtype=jnp.int32)
    counts = counts.at[flat_index].add(valid.reshape(-1).astype(jnp.int32))
    return counts.reshape(num_classes, num_classes)


# ---------------------------------------------------------------------------------------------
# Metrics read from a confusion matrix
# ---------------------------------------------------------------------------------------------


def _backend(cm: Any) -> tuple[Any, Any]:
    """(array module, float cm): NumPy float64 for NumPy/list input, jnp otherwise."""
    if isinstance(cm, jax.Array):
        xp = jnp
        cm = cm.astype(jnp.result_type(float))
    else:
        xp = np
        cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"a confusion matrix must be square (K, K), got shape {cm.shape}.")
    return xp, cm


def _safe_ratio(xp: Any, num: Any, den: Any, keep: Any) -> Any:
    """num / den where ``keep``, NaN elsewhere; never divides by zero (no warnings)."""
    return xp.where(keep, num / xp.where(keep, den, 1.0), xp.nan)


def _present_mean(xp: Any, values: Any, present: Any) -> Any:
    """Mean of ``values`` over ``present`` entries; NaN (without a warning) when none is."""
    count = xp.sum(present)
    total = xp.sum(xp.where(present, values, 0.0))
    return xp.where(count > 0, total / xp.maximum(count, 1), xp.nan)


def per_class_pixel_accuracy(cm: Any) -> Any:
    """Per-class pixel accuracy TP / (TP + FN) (recall); NaN for classes absent from the ground
    truth.

    Examples:
      >>> import numpy as np
      >>> from drd_jax.metrics import per_class_pixel_accuracy
      >>> print(per_class_pixel_accuracy(np.array([[3, 0, 1], [0, 2, 0], [0, 0, 0]])))
      [0.75 1.    nan]
    """
    xp, cm = _backend(cm)
    gt = cm.sum(axis=1)
    return _safe_ratio(xp, xp.diagonal(cm), gt, gt > 0)


def per_class_iou(cm: Any) -> Any:
    """Per-class intersection over union TP / (TP + FP + FN); NaN for classes absent from the
    ground truth (even if predicted).

    Examples:
      >>> import numpy as np
      >>> from drd_jax.metrics import per_class_iou
      >>> print(per_class_iou(np.array([[3, 0, 1], [0, 2, 0], [0, 0, 0]])))
      [0.75 1.    nan]
    """
    xp, cm = _backend(cm)
    tp = xp.diagonal(cm)
    gt = cm.sum(axis=1)
    return _safe_ratio(xp, tp, gt + cm.sum(axis=0) - tp, gt > 0)


def mean_pixel_accuracy(cm: Any) -> Any:
    """mPA: mean of :func:`per_class_pixel_accuracy` over the classes present in the ground truth
    (NaN if there is none)."""
    xp, cm = _backend(cm)
    return _present_mean(xp, per_class_pixel_accuracy(cm), cm.sum(axis=1) > 0)


def mean_iou(cm: Any) -> Any:
    """mIoU: mean of :func:`per_class_iou` over the classes present in the ground truth (NaN if
    there is none).

    Examples:
      >>> import numpy as np
      >>> from drd_jax.metrics import mean_iou
      >>> print(mean_iou(np.array([[3, 0, 1], [0, 2, 0], [0, 0, 0]])))
      0.875
    """
    xp, cm = _backend(cm)
    return _present_mean(xp, per_class_iou(cm), cm.sum(axis=1) > 0)


def pixel_accuracy(cm: Any) -> Any:
    """Overall pixel accuracy: trace / total over all counted pixels (NaN for an empty matrix)."""
    xp, cm = _backend(cm)
    total = cm.sum()
    return _safe_ratio(xp, xp.trace(cm), total, total > 0)


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------


def _counts(cm: Any) -> np.ndarray:
    """``cm`` as an int64 NumPy (K, K) matrix of counts, or a ``ValueError`` naming ``cm``: it
    must be square, of an integer dtype (or whole-number floats) and >= 0 everywhere."""
    cm = np.asarray(jax.device_get(cm))
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"cm must be a square (K, K) confusion matrix, got shape {cm.shape}.")
    if cm.dtype == np.bool_ or not np.issubdtype(cm.dtype, np.number):
        raise ValueError(f"cm must hold counts (an integer dtype), got dtype {cm.dtype}.")
    if not np.issubdtype(cm.dtype, np.integer):
        whole = np.isfinite(cm) & (cm == np.round(cm))
        if not whole.all():
            raise ValueError(
                f"cm must hold whole-number counts, got {cm[~whole].flat[0].item()!r}."
            )
    if (cm < 0).any():
        where = tuple(int(i) for i in np.argwhere(cm < 0)[0])
        raise ValueError(
            f"cm must hold counts >= 0, got {cm[where].item()!r} at [{where[0]}, {where[1]}]."
        )
    return cm.astype(np.int64)


def _to_float_or_none(x: Any) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x


def compute_metrics(cm: Any) -> dict[str, Any]:
    """All metrics as plain Python values (JSON-serialisable; fractions in [0, 1]).

    NaN (absent class, or empty matrix) is written as None so the dict is strict JSON.

    Args:
      cm: a (K, K) confusion matrix of counts (NumPy, JAX or nested lists): an integer dtype or
        whole-number floats, every entry >= 0.

    Raises:
      ValueError: ``cm`` is not square, not counts (float fractions, NaN, bool) or has a negative
        entry (which would make the metrics NaN or meaningless), naming it.

    Returns:
      ``{"pixel_accuracy", "mean_pixel_accuracy", "mean_iou"}`` floats (or None),
      ``"per_class_pixel_accuracy"`` and ``"per_class_iou"`` lists of K floats (None for absent
      classes), ``"num_present_classes"`` and ``"num_pixels"`` ints.

    Examples:
      >>> import numpy as np
      >>> from drd_jax.metrics import compute_metrics
      >>> m = compute_metrics(np.array([[3, 0, 1], [0, 2, 0], [0, 0, 0]]))
      >>> m["mean_iou"], m["per_class_iou"], m["num_present_classes"]
      (0.875, [0.75, 1.0, None], 2)
    """
    cm = _counts(cm)
    return {
        "pixel_accuracy": _to_float_or_none(pixel_accuracy(cm)),
        "mean_pixel_accuracy": _to_float_or_none(mean_pixel_accuracy(cm)),
        "mean_iou": _to_float_or_none(mean_iou(cm)),
        "per_class_pixel_accuracy": [_to_float_or_none(v) for v in per_class_pixel_accuracy(cm)],
        "per_class_iou": [_to_float_or_none(v) for v in per_class_iou(cm)],
        "num_present_classes": int(np.sum(cm.sum(axis=1) > 0)),
        "num_pixels": int(cm.sum()),
    }


def format_confusion_table(cm: Any, class_names: Sequence[str] | None = None) -> str:
    """A printable per-class table (pixel accuracy, IoU and ground-truth pixels, in %) with the
    means underneath. Classes absent from the ground truth show ``-`` and are not in the means.

    Args:
      cm: A (K, K) confusion matrix of counts (NumPy or JAX), checked as in
        :func:`compute_metrics`.
      class_names: K names; default ``class_0`` … ``class_{K-1}``.

    Examples:
      >>> import numpy as np
      >>> from drd_jax.metrics import format_confusion_table
      >>> print(format_confusion_table(np.array([[3, 1], [0, 0]]), ["wall", "floor"]))
        # class      acc (%)   IoU (%)   GT pixels
        0 wall         75.00     75.00           4
        1 floor            -         -           0
      mPA 75.00 | mIoU 75.00 | pixel acc 75.00 (1 of 2 classes present, 4 pixels)
    """
    cm = _counts(cm)
    m = compute_metrics(cm)
    k = cm.shape[0]
    if class_names is None:
        class_names = [f"class_{i}" for i in range(k)]
    class_names = [str(name) for name in class_names]
    if len(class_names) != k:
        raise ValueError(f"got {len(class_names)} class names for a {k}-class matrix.")

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100.0 * x:.2f}"

    name_w = max(8, *(len(n) for n in class_names))
    idx_w = max(3, len(str(k - 1)))
    gt_pixels = cm.sum(axis=1)
    lines = [f"{'#':>{idx_w}} {'class':<{name_w}} {'acc (%)':>9} {'IoU (%)':>9} {'GT pixels':>11}"]
    for i, name in enumerate(class_names):
        acc, iou = m["per_class_pixel_accuracy"][i], m["per_class_iou"][i]
        lines.append(
            f"{i:>{idx_w}} {name:<{name_w}} {pct(acc):>9} {pct(iou):>9} {gt_pixels[i]:>11d}"
        )
    lines.append(
        f"mPA {pct(m['mean_pixel_accuracy'])} | mIoU {pct(m['mean_iou'])} | "
        f"pixel acc {pct(m['pixel_accuracy'])} ({m['num_present_classes']} of {k} classes "
        f"present, {m['num_pixels']} pixels)"
    )
    return "\n".join(lines)
