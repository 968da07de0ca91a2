"""Argument checks of the library APIs: each bad argument is a ``ValueError`` naming it and what
was expected; shape and dtype checks also hold under ``jit`` (they are static), a traced value
that cannot be checked makes the result NaN instead (as the losses' temperature checks)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drd_jax import losses, metrics
from drd_jax.models import DeepLabVGG16

LOGITS = jnp.zeros((2, 3, 4, 5))  # (N, H, W, K): the per-pixel output has shape (2, 3, 4)


# -- losses: temperature and where shapes ------------------------------------------------------


@pytest.mark.parametrize("loss", [losses.vtce_loss, losses.pixelwise_kd_loss])
@pytest.mark.parametrize(
    "shape",
    [
        (3,),  # not broadcastable to (2, 3, 4): was a broadcasting error naming nothing
        (2, 3, 5),
        (7, 1, 1, 1),  # broadcastable, but would silently give a (7, 2, 3, 4) loss
        (2, 3, 4, 5),  # one per class: a temperature is one per pixel at most
    ],
)
def test_a_temperature_of_the_wrong_shape_names_the_argument(loss, shape):
    with pytest.raises(ValueError, match=r"temperature .*shape .*\(2, 3, 4\)"):
        loss(LOGITS, LOGITS, temperature=jnp.ones(shape))
    with pytest.raises(ValueError, match=r"temperature .*shape"):  # static: also under jit
        jax.jit(lambda t: loss(LOGITS, LOGITS, temperature=t))(jnp.ones(shape))


@pytest.mark.parametrize("loss", [losses.vtce_loss, losses.pixelwise_kd_loss])
@pytest.mark.parametrize("shape", [(3,), (2, 3, 5), (9, 2, 3, 4), (2, 3, 4, 5)])
def test_a_where_mask_of_the_wrong_shape_names_the_argument(loss, shape):
    with pytest.raises(ValueError, match=r"where .*shape .*\(2, 3, 4\)"):
        loss(LOGITS, LOGITS, temperature=1.0, where=jnp.ones(shape, bool))


def test_where_and_temperature_shapes_that_broadcast_to_the_pixels_are_kept():
    for t_shape, w_shape in [((), (2, 3, 4)), ((2, 1, 1), (3, 4)), ((2, 3, 4), (1, 3, 1))]:
        out = losses.vtce_loss(
            LOGITS, LOGITS, temperature=jnp.ones(t_shape), where=jnp.ones(w_shape, bool)
        )
        assert out.shape == (2, 3, 4)
    labels = jnp.zeros((2, 3, 4), jnp.int32)
    with pytest.raises(ValueError, match=r"where .*shape"):
        losses.segmentation_cross_entropy(LOGITS, labels, where=jnp.ones((3,), bool))
    with pytest.raises(ValueError, match=r"where .*shape"):
        losses.masked_mean(jnp.ones((2, 3)), jnp.ones((4,), bool))


# -- losses: the VTCE schedule -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"step": -795}, "step"),
        ({"step": -1}, "step"),
        ({"beta": -0.9}, "beta"),
        ({"beta": math.nan}, "beta"),
        ({"beta": math.inf}, "beta"),
    ],
)
def test_vtce_temperature_refuses_a_negative_epoch_or_beta(kwargs, name):
    kwargs = {"step": 0, "num_train_images": 795, **kwargs}
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        losses.vtce_temperature(**kwargs)


def test_vtce_temperature_is_nan_for_a_traced_negative_step_or_beta():
    def schedule(step, beta):
        return losses.vtce_temperature(step, num_train_images=10, beta=beta)

    jitted = jax.jit(schedule)
    assert math.isnan(float(jitted(-5, 0.9))) and math.isnan(float(jitted(5, -0.9)))
    assert float(jitted(25, 0.9)) == pytest.approx(math.exp(-0.9 * 2))  # epoch 2
    assert float(schedule(0, 0.0)) == 1.0  # beta = 0: a constant T = 1


# -- metrics ------------------------------------------------------------------------------------


def test_confusion_matrix_refuses_float_labels_and_predictions():
    ints = jnp.array([0, 1, 1])
    with pytest.raises(ValueError, match=r"^labels must have an integer dtype.*float32"):
        metrics.confusion_matrix(jnp.array([0.0, 1.7, 1.0]), ints, num_classes=2)
    with pytest.raises(ValueError, match=r"^predictions must have an integer dtype"):
        metrics.confusion_matrix(ints, jnp.array([0.0, 1.0, 1.0]), num_classes=2)
    with pytest.raises(ValueError, match=r"^labels must have an integer dtype"):  # at trace time
        jax.jit(lambda x: metrics.confusion_matrix(x, ints, num_classes=2))(ints.astype(float))
    np.testing.assert_array_equal(
        metrics.confusion_matrix(ints.astype(jnp.uint8), ints, num_classes=2), [[1, 0], [0, 2]]
    )


@pytest.mark.parametrize(
    "cm, message",
    [
        (np.array([[3, -1], [0, 2]]), r"cm must hold counts >= 0, got -1 at \[0, 1\]"),
        (np.array([[3, 0, 1], [0, 2, 0]]), r"cm must be a square \(K, K\) .*\(2, 3\)"),
        (np.array([1, 2]), r"cm must be a square"),
        (np.array([[1.5, 0.0], [0.0, 2.0]]), r"cm must hold whole-number counts, got 1.5"),
        (np.array([[1.0, np.nan], [0.0, 2.0]]), r"cm must hold whole-number counts, got nan"),
        (np.array([[True, False], [False, True]]), r"cm must hold counts.*bool"),
    ],
)
def test_compute_metrics_refuses_a_matrix_that_is_not_counts(cm, message):
    with pytest.raises(ValueError, match=message):
        metrics.compute_metrics(cm)
    with pytest.raises(ValueError, match=message):
        metrics.format_confusion_table(cm)


def test_compute_metrics_accepts_counts_of_any_integer_type_and_whole_floats():
    cm = [[3, 0, 1], [0, 2, 0], [0, 0, 0]]
    expected = metrics.compute_metrics(np.array(cm))
    assert metrics.compute_metrics(jnp.array(cm, jnp.int32)) == expected
    assert metrics.compute_metrics(np.array(cm, np.float64)) == expected
    assert metrics.compute_metrics(cm) == expected


# -- the model -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_classes": 0}, r"num_classes must be an integer >= 1, got 0"),
        ({"num_classes": -3}, r"num_classes must be an integer >= 1"),
        ({"num_classes": 2.5}, r"num_classes must be an integer >= 1, got 2.5"),
        ({"num_classes": True}, r"num_classes must be an integer >= 1"),
        ({"num_classes": 5, "width": 0.0}, r"width must be a finite number > 0, got 0.0"),
        ({"num_classes": 5, "width": -1.0}, r"width must be a finite number > 0"),
        ({"num_classes": 5, "width": math.nan}, r"width must be a finite number > 0"),
    ],
)
def test_deeplab_refuses_a_bad_width_or_class_count_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=rf"^DeepLabVGG16: {message}"):
        DeepLabVGG16(**kwargs)


def test_deeplab_with_good_arguments_still_builds_and_clones():
    model = DeepLabVGG16(num_classes=np.int64(3), width=1 / 32)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
    assert shapes["params"]["fc8"]["kernel"].shape[-1] == 3
    assert model.clone(width=1 / 16).width == 1 / 16
