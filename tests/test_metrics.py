"""Tests for drd_jax.metrics against a plain NumPy reference (np.add.at and per-class loops)."""

import doctest
import json
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drd_jax import metrics
from drd_jax.metrics import (
    compute_metrics,
    confusion_matrix,
    format_confusion_table,
    mean_iou,
    mean_pixel_accuracy,
    per_class_iou,
    per_class_pixel_accuracy,
    pixel_accuracy,
)

K = 6
ABSENT = (2, 5)  # classes that never occur in the random ground truth


def _reference_cm(labels, preds, num_classes, ignore_index=255):
    labels = np.asarray(labels, np.int64).ravel()
    preds = np.asarray(preds, np.int64).ravel()
    keep = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
    keep &= (preds >= 0) & (preds < num_classes)
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (labels[keep], preds[keep]), 1)
    return cm


def _reference_metrics(cm):
    acc, iou = [], []
    for c in range(cm.shape[0]):
        tp = cm[c, c]
        fn = cm[c, :].sum() - tp
        fp = cm[:, c].sum() - tp
        if cm[c, :].sum() == 0:
            acc.append(math.nan)
            iou.append(math.nan)
        else:
            acc.append(tp / (tp + fn))
            iou.append(tp / (tp + fp + fn))
    present = [a for a in acc if not math.isnan(a)]
    present_iou = [v for v in iou if not math.isnan(v)]
    return {
        "acc": np.array(acc),
        "iou": np.array(iou),
        "mpa": sum(present) / len(present),
        "miou": sum(present_iou) / len(present_iou),
        "pa": np.trace(cm) / cm.sum(),
    }


def _random_maps(seed, shape):
    """Labels in 0..K-1 without the ABSENT classes, ~20% void (255), a few out-of-range (K+1);
    predictions over all K classes (so absent classes are predicted: false positives)."""
    rng = np.random.default_rng(seed)
    present = np.array([c for c in range(K) if c not in ABSENT])
    labels = rng.choice(present, size=shape).astype(np.uint8)
    labels[rng.random(shape) < 0.2] = 255
    labels[rng.random(shape) < 0.05] = K + 1
    # Predictions agree with the labels ~half of the time.
    preds = np.where(rng.random(shape) < 0.5, labels, rng.integers(0, K, shape)).astype(np.int32)
    preds = np.where(preds >= K, rng.integers(0, K, shape), preds).astype(np.int32)
    return labels, preds


def test_confusion_matrix_matches_numpy_reference():
    labels, preds = _random_maps(0, (3, 17, 23))
    want = _reference_cm(labels, preds, K)
    assert want[list(ABSENT), :].sum() == 0 and want[:, list(ABSENT)].sum() > 0
    got = jax.jit(lambda y, p: confusion_matrix(y, p, num_classes=K))(labels, preds)
    assert got.dtype == jnp.int32 and got.shape == (K, K)
    np.testing.assert_array_equal(np.asarray(got), want)
    # Eager, on NumPy inputs, too.
    np.testing.assert_array_equal(np.asarray(confusion_matrix(labels, preds, num_classes=K)), want)


def test_confusion_matrix_hand_computed_and_options():
    labels = np.array([[0, 0, 1], [1, 255, 2]], np.uint8)
    preds = np.array([[0, 1, 1], [1, 0, 1]])
    cm = np.asarray(confusion_matrix(labels, preds, num_classes=3))
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [0, 1, 0]])
    # Another void label; 255 is then out of range (K = 3) and still dropped.
    cm0 = np.asarray(confusion_matrix(labels, preds, num_classes=3, ignore_index=0))
    np.testing.assert_array_equal(cm0, [[0, 0, 0], [0, 2, 0], [0, 1, 0]])
    # where= drops the second row of pixels; out-of-range predictions are dropped.
    cmw = np.asarray(
        confusion_matrix(labels, preds, num_classes=3, where=np.array([[True], [False]]))
    )
    np.testing.assert_array_equal(cmw, [[1, 1, 0], [0, 1, 0], [0, 0, 0]])
    cmp = np.asarray(confusion_matrix(labels, np.full((2, 3), 7), num_classes=3))
    np.testing.assert_array_equal(cmp, 0)
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(labels, preds[:1], num_classes=3)


def test_confusion_matrices_sum_across_batches():
    labels, preds = _random_maps(1, (4, 9, 11))
    step = jax.jit(lambda cm, y, p: cm + confusion_matrix(y, p, num_classes=K))
    cm = jnp.zeros((K, K), jnp.int32)
    for i in range(4):
        cm = step(cm, labels[i], preds[i])
    np.testing.assert_array_equal(np.asarray(cm), _reference_cm(labels, preds, K))


def test_confusion_matrix_psum_over_devices_equals_single_device():
    n_dev = jax.local_device_count()
    assert n_dev >= 2, "tests/conftest.py forces 2 host CPU devices"
    labels, preds = _random_maps(2, (n_dev, 2, 8, 10))
    per_device = jax.pmap(
        lambda y, p: jax.lax.psum(confusion_matrix(y, p, num_classes=K), "batch"),
        axis_name="batch",
    )(labels, preds)
    assert per_device.shape == (n_dev, K, K)
    single = confusion_matrix(labels.reshape(-1, 8, 10), preds.reshape(-1, 8, 10), num_classes=K)
    for d in range(n_dev):
        np.testing.assert_array_equal(np.asarray(per_device[d]), np.asarray(single))
    np.testing.assert_array_equal(np.asarray(single), _reference_cm(labels, preds, K))


def test_metrics_match_numpy_reference_on_numpy_and_jax_inputs():
    labels, preds = _random_maps(3, (2, 31, 29))
    cm_np = _reference_cm(labels, preds, K)
    ref = _reference_metrics(cm_np)
    assert np.isnan(ref["acc"][list(ABSENT)]).all()
    for cm in (cm_np, jnp.asarray(cm_np, jnp.int32)):
        np.testing.assert_allclose(np.asarray(per_class_pixel_accuracy(cm)), ref["acc"], rtol=1e-6)
        np.testing.assert_allclose(np.asarray(per_class_iou(cm)), ref["iou"], rtol=1e-6)
        np.testing.assert_allclose(float(mean_pixel_accuracy(cm)), ref["mpa"], rtol=1e-6)
        np.testing.assert_allclose(float(mean_iou(cm)), ref["miou"], rtol=1e-6)
        np.testing.assert_allclose(float(pixel_accuracy(cm)), ref["pa"], rtol=1e-6)
    # NumPy in -> NumPy float64 out; JAX in -> JAX out, and jit-able.
    assert isinstance(mean_iou(cm_np), np.floating | np.ndarray)
    assert per_class_iou(cm_np).dtype == np.float64
    cm_j = jnp.asarray(cm_np, jnp.int32)
    assert isinstance(per_class_iou(cm_j), jax.Array)
    jitted = jax.jit(lambda c: (mean_iou(c), mean_pixel_accuracy(c), per_class_iou(c)))(cm_j)
    np.testing.assert_allclose(float(jitted[0]), ref["miou"], rtol=1e-6)
    np.testing.assert_allclose(float(jitted[1]), ref["mpa"], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(jitted[2]), ref["iou"], rtol=1e-6)


def test_metrics_hand_computed():
    # Class 0: 4 GT pixels, 3 right, one predicted as 2; class 1: 2/2; class 2 absent from GT.
    cm = np.array([[3, 0, 1], [0, 2, 0], [0, 0, 0]])
    np.testing.assert_allclose(per_class_pixel_accuracy(cm), [0.75, 1.0, np.nan])
    np.testing.assert_allclose(per_class_iou(cm), [3 / 4, 2 / 2, np.nan])
    assert mean_pixel_accuracy(cm) == pytest.approx(0.875)
    assert mean_iou(cm) == pytest.approx(0.875)
    assert pixel_accuracy(cm) == pytest.approx(5 / 6)
    # A predicted-but-absent class lowers the IoU of the class it was confused with.
    cm2 = np.array([[2, 2], [0, 0]])
    np.testing.assert_allclose(per_class_iou(cm2), [0.5, np.nan])


def test_no_warnings_for_absent_classes_or_empty_matrix():
    cm = np.array([[3, 0, 1], [0, 2, 0], [0, 0, 0]])
    empty = np.zeros((3, 3), np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        per_class_pixel_accuracy(cm)
        per_class_iou(cm)
        assert np.isnan(mean_iou(empty)) and np.isnan(mean_pixel_accuracy(empty))
        assert np.isnan(pixel_accuracy(empty))
        assert bool(jnp.isnan(mean_iou(jnp.zeros((3, 3), jnp.int32))))
        m = compute_metrics(empty)
    assert m["mean_iou"] is None and m["pixel_accuracy"] is None
    assert m["per_class_iou"] == [None, None, None]


def test_compute_metrics_is_plain_json():
    labels, preds = _random_maps(4, (2, 13, 7))
    cm = confusion_matrix(labels, preds, num_classes=K)
    ref = _reference_metrics(_reference_cm(labels, preds, K))
    m = compute_metrics(cm)
    text = json.dumps(m, allow_nan=False)  # strict JSON: no NaN
    back = json.loads(text)
    assert back["mean_iou"] == pytest.approx(ref["miou"])
    assert back["mean_pixel_accuracy"] == pytest.approx(ref["mpa"])
    assert back["pixel_accuracy"] == pytest.approx(ref["pa"])
    assert len(back["per_class_iou"]) == K
    for c in range(K):
        if c in ABSENT:
            assert back["per_class_iou"][c] is None
            assert back["per_class_pixel_accuracy"][c] is None
        else:
            assert back["per_class_iou"][c] == pytest.approx(ref["iou"][c])
            assert back["per_class_pixel_accuracy"][c] == pytest.approx(ref["acc"][c])
    assert back["num_present_classes"] == K - len(ABSENT)
    assert back["num_pixels"] == int(np.asarray(cm).sum())
    assert all(type(v) is float for v in (m["mean_iou"], m["mean_pixel_accuracy"]))


def test_format_confusion_table():
    cm = np.array([[3, 0, 1], [0, 2, 0], [0, 0, 0]])
    table = format_confusion_table(jnp.asarray(cm), ["wall", "floor", "ceiling"])
    lines = table.splitlines()
    assert len(lines) == 1 + 3 + 1
    assert "wall" in lines[1] and "75.00" in lines[1] and lines[1].split()[-1] == "4"
    assert "floor" in lines[2] and "100.00" in lines[2]
    assert "ceiling" in lines[3] and lines[3].split()[2:4] == ["-", "-"]
    assert "mPA 87.50" in lines[-1] and "mIoU 87.50" in lines[-1]
    assert "pixel acc 83.33" in lines[-1] and "2 of 3 classes" in lines[-1]
    default = format_confusion_table(cm)
    assert "class_0" in default and "class_2" in default
    with pytest.raises(ValueError, match="class names"):
        format_confusion_table(cm, ["a", "b"])


@pytest.mark.parametrize("module", [metrics])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0
