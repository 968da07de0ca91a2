"""Tests for drd_jax.losses: VTCE schedule and loss, void-aware cross-entropy, pixel-wise KD.

Expected values are written with ``math`` from the formulas, never by calling the code under test.
"""

import doctest
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from drd_jax import losses
from drd_jax.losses import (
    masked_mean,
    pixelwise_kd_loss,
    segmentation_cross_entropy,
    tempered_log_softmax,
    valid_label_mask,
    vtce_loss,
    vtce_temperature,
)

pytestmark = pytest.mark.usefixtures("fast_compile")  # compile-bound: see conftest

LN2 = math.log(2.0)


def _temp(e, beta=0.9):
    return math.exp(-beta * (e * e - e + 2) / 2)


# Test data comes from NumPy (no per-shape XLA compilation of PRNG ops) and most loss calls go
# through jitted wrappers: one compilation per call site is much cheaper than compiling every
# primitive eagerly. Eager use is still covered by the hand-computed tests.
_vtce = jax.jit(vtce_loss)
_kd = jax.jit(pixelwise_kd_loss)
_ce = jax.jit(segmentation_cross_entropy, static_argnames=("ignore_index",))


def _random_logits(seed, shape, scale=3.0):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _random_mask(seed, shape, p):
    return np.random.default_rng(seed).random(shape) < p


# ---------------------------------------------------------------------------------------------
# vtce_temperature
# ---------------------------------------------------------------------------------------------


def test_temperature_paper_values_at_epochs_0_to_3():
    n = 795  # NYUv2 training images; batch size 1 as in the paper
    expected = [math.exp(-0.9), math.exp(-0.9), math.exp(-1.8), math.exp(-3.6)]
    for epoch, want in enumerate(expected):
        got = vtce_temperature(epoch * n, num_train_images=n)
        np.testing.assert_allclose(float(got), want, rtol=1e-6)
        # The last iteration of the epoch still uses the same temperature.
        got_end = vtce_temperature(epoch * n + n - 1, num_train_images=n)
        np.testing.assert_allclose(float(got_end), want, rtol=1e-6)
    np.testing.assert_allclose(float(vtce_temperature(0, num_train_images=n)), 0.4066, atol=1e-4)
    np.testing.assert_allclose(
        float(vtce_temperature(3 * n, num_train_images=n)), 0.0273, atol=1e-4
    )


@pytest.mark.parametrize(
    ("step", "epoch"), [(0, 0), (2, 0), (3, 1), (4, 1), (5, 2), (7, 2), (8, 3), (10, 4)]
)
def test_temperature_batch_size_rule(step, epoch):
    # N = 10 images, B = 4 per step: e = floor(4 * step / 10).
    got = vtce_temperature(step, num_train_images=10, batch_size=4)
    np.testing.assert_allclose(float(got), _temp(epoch), rtol=1e-6)


def test_temperature_beta():
    got = vtce_temperature(2, num_train_images=1, beta=0.5)  # e = 2: exp(-0.5 * 4 / 2)
    np.testing.assert_allclose(float(got), math.exp(-1.0), rtol=1e-6)


def test_temperature_traced_step_under_jit():
    f = jax.jit(lambda step: vtce_temperature(step, num_train_images=10, batch_size=4))
    for step, epoch in [(0, 0), (3, 1), (8, 3)]:
        np.testing.assert_allclose(float(f(jnp.int32(step))), _temp(epoch), rtol=1e-6)
    # Every argument may be traced (no validation then).
    g = jax.jit(
        lambda s, n, b, beta: vtce_temperature(s, num_train_images=n, batch_size=b, beta=beta)
    )
    np.testing.assert_allclose(float(g(5, 10, 4, 0.9)), _temp(2), rtol=1e-6)
    # A float step is floored as well.
    np.testing.assert_allclose(float(f(jnp.float32(7.0))), _temp(2), rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [{"num_train_images": 0}, {"num_train_images": -5}, {"num_train_images": 10, "batch_size": 0}],
)
def test_temperature_validates_concrete_arguments(kwargs):
    with pytest.raises(ValueError, match="must be > 0"):
        vtce_temperature(3, **kwargs)


# ---------------------------------------------------------------------------------------------
# vtce_loss
# ---------------------------------------------------------------------------------------------


def test_vtce_hand_computed_values():
    # Pixel a, T = 1: q^t = (1/2, 1/2), log q^s = (1 - log(1+e), -log(1+e)).
    want_a = -(0.5 * (1.0 - math.log(1.0 + math.e)) + 0.5 * (-math.log(1.0 + math.e)))
    got_a = _vtce(jnp.array([1.0, 0.0]), jnp.array([0.0, 0.0]), temperature=1.0)
    np.testing.assert_allclose(float(got_a), want_a, rtol=1e-6)

    # Pixel b, T = 1/2: z/T gives q^s = (1/4, 3/4) and q^t = (3/4, 1/4).
    t = 0.5
    zs = jnp.array([0.0, t * math.log(3.0)])
    zt = jnp.array([t * math.log(3.0), 0.0])
    want_b = -t * (0.75 * math.log(0.25) + 0.25 * math.log(0.75))
    np.testing.assert_allclose(float(_vtce(zs, zt, temperature=t)), want_b, rtol=1e-6)

    # Pixel c, three classes, T = 2: q^s = (1/4, 1/4, 1/2), q^t = (1/2, 1/4, 1/4).
    t = 2.0
    zs = jnp.array([0.0, 0.0, t * LN2])
    zt = jnp.array([t * LN2, 0.0, 0.0])
    want_c = -t * (0.5 * math.log(0.25) + 0.25 * math.log(0.25) + 0.25 * math.log(0.5))
    np.testing.assert_allclose(float(_vtce(zs, zt, temperature=t)), want_c, rtol=1e-6)


def test_vtce_shape_and_batched_values():
    zs = jnp.array([[[1.0, 0.0], [0.0, 0.0]]])  # (1, 2, 2): N=1, P=2 pixels, K=2 classes
    zt = jnp.array([[[0.0, 0.0], [5.0, 5.0]]])
    got = _vtce(zs, zt, temperature=1.0)
    assert got.shape == (1, 2)
    want = [math.log(1.0 + math.e) - 0.5, LN2]
    np.testing.assert_allclose(np.asarray(got)[0], want, rtol=1e-6)


def test_vtce_per_pixel_temperature_array():
    zs = jnp.zeros((2, 3))
    zt = jnp.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    got = _vtce(zs, zt, temperature=jnp.array([1.0, 0.5]))
    # Uniform q^s and q^t: -T * log(1/3).
    np.testing.assert_allclose(np.asarray(got), [math.log(3.0), 0.5 * math.log(3.0)], rtol=1e-6)


def test_vtce_gradient_is_qs_minus_qt():
    t = 0.5
    zs = jnp.array([0.0, t * math.log(3.0)])  # q^s = (1/4, 3/4)
    zt = jnp.array([t * math.log(3.0), 0.0])  # q^t = (3/4, 1/4)
    g = jax.grad(lambda s: vtce_loss(s, zt, temperature=t))(zs)
    np.testing.assert_allclose(np.asarray(g), [0.25 - 0.75, 0.75 - 0.25], atol=1e-6)


def test_vtce_where_equals_unmasked_subset():
    zs = _random_logits(0, (2, 3, 4, 5))
    zt = _random_logits(1, (2, 3, 4, 5))
    mask = _random_mask(2, (2, 3, 4), 0.6)
    full = np.asarray(_vtce(zs, zt, temperature=0.4))
    masked = np.asarray(_vtce(zs, zt, temperature=0.4, where=mask))
    m = mask
    np.testing.assert_array_equal(masked[m], full[m])
    np.testing.assert_array_equal(masked[~m], 0.0)
    np.testing.assert_allclose(float(jax.jit(masked_mean)(masked, mask)), full[m].mean(), rtol=1e-6)
    # The same on a gathered subset of pixels.
    sub = np.asarray(_vtce(zs[mask], zt[mask], temperature=0.4))
    np.testing.assert_allclose(sub, full[m], rtol=1e-6)


def test_vtce_check_grads_wrt_student():
    zs = _random_logits(3, (2, 3, 4), scale=1.0)
    zt = _random_logits(4, (2, 3, 4), scale=1.0)
    f = jax.jit(lambda s, t: vtce_loss(s, zt, temperature=t).sum())
    for t in (1.0, 0.4066):
        check_grads(
            lambda s, t=t: f(s, t),
            (zs,),
            order=1,
            modes=("fwd", "rev"),
            eps=1e-2,
            atol=1e-2,
            rtol=1e-2,
        )


def test_vtce_no_gradient_to_teacher():
    zs = _random_logits(5, (2, 3, 4))
    zt = _random_logits(6, (2, 3, 4))
    g = jax.grad(lambda t: vtce_loss(zs[0, 0], t, temperature=0.5).sum())(zt[0, 0])  # eager
    assert np.all(np.asarray(g) == 0.0)
    g_jit = jax.jit(jax.grad(lambda t: vtce_loss(zs, t, temperature=0.5).sum()))(zt)
    assert np.all(np.asarray(g_jit) == 0.0)


def test_vtce_extreme_temperature_and_logits_are_finite():
    zs = jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 5.0], [3.0, 2.0, 1.0]])
    zt = jnp.array([[-1e4, 1e4, 0.0], [-1e4, 1e4, -1e4], [1e4, 1e4, -1e4]])
    value_and_grad = jax.jit(jax.value_and_grad(lambda s, t: vtce_loss(s, zt, temperature=t).sum()))
    for t in (1e-4, 1e-3, 1.0, 1e4):
        val, grad = value_and_grad(zs, t)
        per_pixel = _vtce(zs, zt, temperature=t)
        assert np.all(np.isfinite(np.asarray(per_pixel))), t
        assert np.isfinite(float(val)), t
        assert np.all(np.isfinite(np.asarray(grad))), t
    # At T = 1e-4 both distributions are one-hot: the loss is max(z_s) - z_s[argmax z_t] and the
    # gradient is onehot(argmax z_s) - onehot(argmax z_t).
    per_pixel = _vtce(zs, zt, temperature=1e-4)
    np.testing.assert_allclose(np.asarray(per_pixel)[:2], [2e4, 0.0], atol=1e-2)
    _, grad = value_and_grad(zs, 1e-4)
    np.testing.assert_allclose(np.asarray(grad)[:2], [[1.0, -1.0, 0.0], [0.0, 0.0, 0.0]], atol=1e-6)


def test_vtce_underflowed_schedule_temperature_is_finite():
    t = vtce_temperature(40 * 795, num_train_images=795)  # e = 40: exp(-702) -> 0 in float32
    assert float(t) == 0.0
    zs = _random_logits(7, (4, 6), scale=100.0)
    zt = _random_logits(8, (4, 6), scale=100.0)
    val, grad = jax.jit(jax.value_and_grad(lambda s: vtce_loss(s, zt, temperature=t).sum()))(zs)
    assert np.isfinite(float(val))
    assert np.all(np.isfinite(np.asarray(grad)))


# The temperatures of the paper's schedule (β = 0.9): 0.4 at epoch 0, 1e-31 at epoch 13, 1.1e-36 at
# 14, a subnormal at 15 and 0 (float32 underflow) from 16; and the scales of the cotangent that
# reaches the loss in a training step (the loss weight times 1/valid pixels, or smaller).
TEMPERATURE_GRID = (1.0, 0.4, 1e-4, 1e-20, 1e-31, 1e-34, 1e-36, 3e-40, 0.0)
UPSTREAM_SCALES = (1.0, 1e-5, 1e-8)
_GRID_SHAPE = (8, 96, 128, 6)  # the reproduction: about 1e5 pixels, 6 classes


def _softmax64(z, t):
    """softmax(z / t) in float64; for t = 0 the limit (tied maxima share equally)."""
    z = np.asarray(z, np.float64)
    d = z - z.max(-1, keepdims=True)
    if t == 0.0:
        top = (d == 0.0).astype(np.float64)
        return top / top.sum(-1, keepdims=True)
    e = np.exp(d / t)
    return e / e.sum(-1, keepdims=True)


def _vtce64(zs, zt, t):
    """VTCE per pixel in float64: T·logsumexp(d_s / T) − Σ q^t d_s (its T → 0 limit for t = 0)."""
    zs = np.asarray(zs, np.float64)
    ds = zs - zs.max(-1, keepdims=True)
    tail = 0.0
    if t > 0.0:
        s = ds / t
        tail = t * np.log(np.exp(s).sum(-1))
    return tail - (_softmax64(zt, t) * ds).sum(-1)


@functools.cache
def _grid_case():
    """Student/teacher logits ~ N(0, 4²) of ``_GRID_SHAPE`` and a mask with ~10 % void pixels."""
    zs = _random_logits(40, _GRID_SHAPE, scale=4.0)
    zt = _random_logits(41, _GRID_SHAPE, scale=4.0)
    valid = _random_mask(42, _GRID_SHAPE[:-1], 0.9)
    return zs, zt, valid


def _training_reduction(loss_fn):
    """``(value, grad)`` of ``scale · Σ loss(where=valid) / #valid`` w.r.t. the student logits,
    jitted: the reduction of ``train_step`` (global valid-pixel mean, times the term's weight)."""

    def reduced(zs, zt, valid, t, scale):
        per_pixel = loss_fn(zs, zt, temperature=t, where=valid)
        count = jnp.maximum(jnp.sum(valid, dtype=jnp.int32), 1).astype(jnp.float32)
        return scale * jnp.sum(per_pixel) / count

    return jax.jit(jax.value_and_grad(reduced))


_vtce_value_and_grad = _training_reduction(vtce_loss)
_kd_value_and_grad = _training_reduction(pixelwise_kd_loss)


@pytest.mark.parametrize("scale", UPSTREAM_SCALES)
@pytest.mark.parametrize("t", TEMPERATURE_GRID)
def test_vtce_value_and_gradient_match_closed_form_on_the_schedule_grid(t, scale):
    """The gradient is scale · (q^s − q^t) / #valid on valid pixels and 0 on void ones, at every
    temperature of the schedule, including T·(tiny cotangent) products that underflow."""
    zs, zt, valid = _grid_case()
    value, grad = _vtce_value_and_grad(zs, zt, valid, jnp.float32(t), jnp.float32(scale))
    count = valid.sum()
    want_grad = scale * (_softmax64(zs, t) - _softmax64(zt, t)) * valid[..., None] / count
    got = np.asarray(grad, np.float64)
    assert np.all(np.isfinite(got))
    # Relative to the largest entry: near T = 1e-4 a few pixels have classes within 1e-4 of each
    # other, where float32 logits shift q by ~1e-3; everywhere else the agreement is ~1e-7.
    err = np.abs(got - want_grad).max() / np.abs(want_grad).max()
    assert err < 2e-3, (t, scale, err)
    want_value = scale * _vtce64(zs, zt, t)[valid].mean()
    np.testing.assert_allclose(float(value), want_value, rtol=1e-4)


@pytest.mark.parametrize("t", TEMPERATURE_GRID)
def test_vtce_bfloat16_logits_value_and_gradient_on_the_schedule_grid(t):
    """bfloat16 logits (e.g. a bf16 network): computed in float32, the gradient comes back in
    bfloat16 and equals the closed form of the bf16-rounded logits up to bf16 rounding."""
    zs, zt, valid = _grid_case()
    zs, zt = zs.astype(jnp.bfloat16), zt.astype(jnp.bfloat16)  # many ties between classes now
    for scale in (1.0, 1e-8):
        value, grad = _vtce_value_and_grad(zs, zt, valid, jnp.float32(t), jnp.float32(scale))
        assert grad.dtype == jnp.bfloat16
        zs32, zt32 = np.asarray(zs, np.float32), np.asarray(zt, np.float32)
        want = scale * (_softmax64(zs32, t) - _softmax64(zt32, t)) * valid[..., None] / valid.sum()
        got = np.asarray(grad, np.float64)
        assert np.all(np.isfinite(got))
        assert np.abs(got - want).max() / np.abs(want).max() < 1e-2, (t, scale)
        want_value = scale * _vtce64(zs32, zt32, t)[valid].mean()
        np.testing.assert_allclose(float(value), want_value, rtol=1e-4)


@pytest.mark.parametrize("scale", UPSTREAM_SCALES)
@pytest.mark.parametrize("t", [t for t in TEMPERATURE_GRID if t >= 1e-36])
def test_kd_gradient_matches_closed_form_at_small_temperatures(t, scale):
    """Pixel-wise KD's gradient scale · (p^s − p^t) / (T · #valid) stays exact down to T = 1e-36
    (it is huge there, as it should be; T must be > 0 for this loss)."""
    zs, zt, valid = _grid_case()
    _, grad = _kd_value_and_grad(zs, zt, valid, jnp.float32(t), jnp.float32(scale))
    want = (scale / t) * (_softmax64(zs, t) - _softmax64(zt, t)) * valid[..., None] / valid.sum()
    got = np.asarray(grad, np.float64)
    assert np.all(np.isfinite(got))
    assert np.abs(got - want).max() / np.abs(want).max() < 2e-3, (t, scale)


def test_tempered_log_softmax_derivative_has_no_temperature_factor():
    """d(T log q_i)/dz_j = δ_ij − q_j exactly, forward and reverse mode, at T = 0.5 and 1e-36
    under a cotangent of 1e-12 (its product with T would underflow)."""
    z = _random_logits(43, (5,), scale=2.0)
    for t in (0.5, 1e-36):
        q = _softmax64(z, t)
        jac = np.eye(5) - q[None, :]
        rev = jax.jacrev(lambda x, t=t: tempered_log_softmax(x, temperature=t)[1])(z)
        fwd = jax.jacfwd(lambda x, t=t: tempered_log_softmax(x, temperature=t)[1])(z)
        np.testing.assert_allclose(np.asarray(rev), jac, atol=1e-6)
        np.testing.assert_allclose(np.asarray(fwd), jac, atol=1e-6)
        _, vjp = jax.vjp(lambda x, t=t: tempered_log_softmax(x, temperature=t)[1], z)
        (g,) = vjp(jnp.full((5,), 1e-12, jnp.float32))
        np.testing.assert_allclose(np.asarray(g), 1e-12 * (1.0 - 5.0 * q), rtol=1e-5, atol=1e-19)


def test_losses_give_the_temperature_no_gradient():
    zs = _random_logits(44, (3, 4))
    zt = _random_logits(45, (3, 4))
    for loss in (vtce_loss, pixelwise_kd_loss):
        g = jax.grad(lambda t, loss=loss: loss(zs, zt, temperature=t).sum())(0.7)
        assert float(g) == 0.0


def test_vtce_rejects_negative_temperature_and_shape_mismatch():
    with pytest.raises(ValueError, match="temperature"):
        vtce_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)), temperature=-1.0)
    with pytest.raises(ValueError, match="same shape"):
        vtce_loss(jnp.zeros((2, 3)), jnp.zeros((2, 4)), temperature=1.0)


def test_vtce_jit_vmap_match_eager():
    zs = _random_logits(9, (2, 3, 4, 5))
    zt = _random_logits(10, (2, 3, 4, 5))
    mask = _random_mask(11, (2, 3, 4), 0.7)
    eager = vtce_loss(zs[:1], zt[:1], temperature=0.3, where=mask[:1])

    @jax.jit
    def f(s, t, step, m):
        temp = vtce_temperature(step, num_train_images=10)  # traced step, e = 2 at step 25
        return vtce_loss(s, t, temperature=temp, where=m)

    np.testing.assert_allclose(
        np.asarray(f(zs, zt, jnp.int32(25), mask)),
        np.asarray(_vtce(zs, zt, temperature=_temp(2), where=mask)),
        rtol=1e-5,
    )
    jitted = _vtce(zs, zt, temperature=0.3, where=mask)
    np.testing.assert_allclose(np.asarray(jitted)[:1], np.asarray(eager), rtol=1e-6)
    vmapped = jax.jit(jax.vmap(lambda s, t, m: vtce_loss(s, t, temperature=0.3, where=m)))(
        zs, zt, mask
    )
    np.testing.assert_allclose(np.asarray(vmapped), np.asarray(jitted), rtol=1e-6)


def test_losses_inside_pmap():
    n_dev = jax.local_device_count()
    assert n_dev >= 2, "tests/conftest.py forces 2 host CPU devices"
    zs = _random_logits(12, (n_dev, 2, 3, 4))
    zt = _random_logits(13, (n_dev, 2, 3, 4))
    labels = np.random.default_rng(14).integers(0, 4, (n_dev, 2, 3))
    labels[:, 0, 0] = 255
    steps = jnp.full((n_dev,), 25, dtype=jnp.int32)

    def per_device(s, t, y, step):
        temp = vtce_temperature(step, num_train_images=10)
        valid = valid_label_mask(y, num_classes=4)
        total = (
            segmentation_cross_entropy(s, y, where=valid)
            + vtce_loss(s, t, temperature=temp, where=valid)
            + pixelwise_kd_loss(s, t, where=valid)
        )
        # Global mean over the valid pixels of all devices.
        return jax.lax.psum(jnp.sum(total), "d") / jax.lax.psum(jnp.sum(valid), "d")

    got = jax.pmap(per_device, axis_name="d")(zs, zt, labels, steps)
    valid = np.asarray(labels) != 255
    eager_total = _ce(zs, labels) + _vtce(zs, zt, temperature=_temp(2)) + _kd(zs, zt)
    want = np.asarray(eager_total)[valid].mean()
    np.testing.assert_allclose(np.asarray(got), np.full((n_dev,), want), rtol=1e-5)


def test_bfloat16_inputs_are_computed_in_float32():
    zs = _random_logits(15, (3, 4)).astype(jnp.bfloat16)
    zt = _random_logits(16, (3, 4)).astype(jnp.bfloat16)
    assert _vtce(zs, zt, temperature=0.5).dtype == jnp.float32
    assert _kd(zs, zt).dtype == jnp.float32


# ---------------------------------------------------------------------------------------------
# segmentation_cross_entropy
# ---------------------------------------------------------------------------------------------


def test_ce_hand_computed_with_void_and_out_of_range():
    logits = jnp.array([[0.0, 0.0], [0.0, 0.0], [3.0, 1.0], [1.0, 3.0], [0.0, 1.0]])
    labels = jnp.array([1, 255, 0, 0, 7], dtype=jnp.uint8)  # 255 void, 7 out of range (K=2)
    got = np.asarray(_ce(logits, labels))
    want = [LN2, 0.0, math.log(1.0 + math.exp(-2.0)), math.log(1.0 + math.exp(2.0)), 0.0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # ignore_index=None: 255 is still out of range and so still ignored.
    got_none = np.asarray(_ce(logits, labels, ignore_index=None))
    np.testing.assert_allclose(got_none, want, rtol=1e-6, atol=1e-7)
    # Another void value.
    got_0 = np.asarray(_ce(logits, labels.astype(jnp.int32), ignore_index=0))
    np.testing.assert_allclose(got_0, [LN2, 0.0, 0.0, 0.0, 0.0], atol=1e-7)


def test_ce_where_equals_unmasked_subset_and_void_gets_no_gradient():
    logits = _random_logits(17, (2, 3, 4, 5))
    labels = np.random.default_rng(18).integers(0, 5, (2, 3, 4))
    labels[_random_mask(19, labels.shape, 0.2)] = 255
    mask = _random_mask(20, (2, 3, 4), 0.6)
    full = np.asarray(_ce(logits, labels))
    masked = np.asarray(_ce(logits, labels, where=mask))
    m = mask
    np.testing.assert_array_equal(masked[m], full[m])
    np.testing.assert_array_equal(masked[~m], 0.0)
    void = labels == 255
    np.testing.assert_array_equal(full[void], 0.0)
    grad = jax.jit(jax.grad(lambda z: segmentation_cross_entropy(z, labels, where=mask).sum()))(
        logits
    )
    dropped = void | ~m
    np.testing.assert_array_equal(np.asarray(grad)[dropped], 0.0)
    assert np.any(np.asarray(grad)[~dropped] != 0.0)


def test_ce_check_grads_and_jit_vmap():
    logits = _random_logits(21, (2, 3, 4), scale=1.0)
    labels = jnp.array([[0, 255, 3], [2, 1, 0]])
    check_grads(
        jax.jit(lambda z: segmentation_cross_entropy(z, labels).sum()),
        (logits,),
        order=1,
        modes=("fwd", "rev"),
        eps=1e-2,
        atol=1e-2,
        rtol=1e-2,
    )
    jitted = _ce(logits, labels)
    want = np.stack([np.asarray(_ce(logits[i], labels[i])) for i in range(2)])
    np.testing.assert_allclose(np.asarray(jitted), want, rtol=1e-6)
    vmapped = jax.jit(jax.vmap(segmentation_cross_entropy))(logits, labels)
    np.testing.assert_allclose(np.asarray(vmapped), want, rtol=1e-6)


def test_ce_extreme_logits_finite():
    logits = jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]])
    labels = jnp.array([1, 1])
    val, grad = jax.jit(jax.value_and_grad(lambda z: segmentation_cross_entropy(z, labels).sum()))(
        logits
    )
    np.testing.assert_allclose(float(val), 2e4, rtol=1e-6)
    assert np.all(np.isfinite(np.asarray(grad)))


def test_ce_label_shape_mismatch():
    with pytest.raises(ValueError, match="labels shape"):
        segmentation_cross_entropy(jnp.zeros((2, 3, 4)), jnp.zeros((2, 4), jnp.int32))


# ---------------------------------------------------------------------------------------------
# pixelwise_kd_loss
# ---------------------------------------------------------------------------------------------


def test_kd_hand_computed_values():
    # T = 1: p^t = (3/4, 1/4), p^s = (1/2, 1/2).
    want = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    got = _kd(jnp.array([0.0, 0.0]), jnp.array([math.log(3.0), 0.0]))
    np.testing.assert_allclose(float(got), want, rtol=1e-6)
    # T = 2 with doubled teacher logits: the same distributions, no T^2 factor.
    got_t2 = _kd(jnp.array([0.0, 0.0]), jnp.array([2.0 * math.log(3.0), 0.0]), temperature=2.0)
    np.testing.assert_allclose(float(got_t2), want, rtol=1e-6)
    # Identical logits: 0; one-hot teacher against uniform student over 4 classes: log 4.
    z = _random_logits(22, (3, 5))
    np.testing.assert_allclose(np.asarray(_kd(z, z)), 0.0, atol=1e-6)
    onehot = _kd(jnp.zeros(4), jnp.array([0.0, -1e4, -1e4, -1e4]))
    np.testing.assert_allclose(float(onehot), math.log(4.0), rtol=1e-6)


def test_kd_gradient_and_check_grads():
    zs = jnp.array([0.0, 0.0])
    zt = jnp.array([math.log(3.0), 0.0])
    g = jax.grad(lambda s: pixelwise_kd_loss(s, zt))(zs)
    np.testing.assert_allclose(np.asarray(g), [0.5 - 0.75, 0.5 - 0.25], atol=1e-6)
    g2 = jax.grad(lambda s: pixelwise_kd_loss(s, 2.0 * zt, temperature=2.0))(zs)
    np.testing.assert_allclose(np.asarray(g2), [(0.5 - 0.75) / 2, (0.5 - 0.25) / 2], atol=1e-6)
    zs = _random_logits(23, (2, 3, 4), scale=1.0)
    zt = _random_logits(24, (2, 3, 4), scale=1.0)
    check_grads(
        jax.jit(lambda s: pixelwise_kd_loss(s, zt).sum()),
        (zs,),
        order=1,
        modes=("fwd", "rev"),
        eps=1e-2,
        atol=1e-2,
        rtol=1e-2,
    )
    gt = jax.jit(jax.grad(lambda t: pixelwise_kd_loss(zs, t).sum()))(zt)
    assert np.all(np.asarray(gt) == 0.0)


def test_kd_where_and_extremes():
    zs = _random_logits(25, (2, 3, 4, 5))
    zt = _random_logits(26, (2, 3, 4, 5))
    mask = _random_mask(27, (2, 3, 4), 0.5)
    full = np.asarray(_kd(zs, zt, temperature=2.0))
    masked = np.asarray(_kd(zs, zt, temperature=2.0, where=mask))
    m = mask
    # Eager (not jitted) gives the same numbers.
    eager = np.asarray(pixelwise_kd_loss(zs[0, 0], zt[0, 0], temperature=2.0))
    np.testing.assert_allclose(eager, full[0, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(masked[m], full[m])
    np.testing.assert_array_equal(masked[~m], 0.0)
    big_s = jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 5.0]])
    big_t = jnp.array([[-1e4, 1e4, 0.0], [-1e4, 1e4, -1e4]])
    value_and_grad = jax.jit(
        jax.value_and_grad(lambda s, t: pixelwise_kd_loss(s, big_t, temperature=t).sum())
    )
    for t in (1e-4, 1.0):
        val, grad = value_and_grad(big_s, t)
        assert np.isfinite(float(val)), t
        assert np.all(np.isfinite(np.asarray(grad))), t


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def test_masked_mean():
    v = jnp.array([1.0, 2.0, 30.0, jnp.nan])
    w = jnp.array([True, True, False, False])
    assert float(masked_mean(v, w)) == 1.5
    assert float(masked_mean(jnp.array([1.0, 2.0]))) == 1.5
    assert float(masked_mean(v, jnp.zeros(4, bool))) == 0.0
    g = jax.grad(lambda x: masked_mean(x, w))(v)
    np.testing.assert_array_equal(np.asarray(g), [0.5, 0.5, 0.0, 0.0])
    g0 = jax.grad(lambda x: masked_mean(x, jnp.zeros(4, bool)))(v)
    np.testing.assert_array_equal(np.asarray(g0), 0.0)
    rows = masked_mean(
        np.array([[1.0, 3.0], [5.0, 7.0]]), np.array([[True, True], [False, True]]), axis=1
    )
    np.testing.assert_array_equal(np.asarray(rows), [2.0, 7.0])


def test_tempered_log_softmax_matches_log_softmax():
    z = _random_logits(28, (3, 6))
    log_q, t_log_q = tempered_log_softmax(z, temperature=0.7)
    ref = np.asarray(z, np.float64) / 0.7
    ref = ref - ref.max(-1, keepdims=True)
    ref = ref - np.log(np.exp(ref).sum(-1, keepdims=True))
    np.testing.assert_allclose(np.asarray(log_q), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(t_log_q), 0.7 * ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("module", [losses])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


# ---------------------------------------------------------------------------------------------
# Invalid temperatures and float labels are never silent
# ---------------------------------------------------------------------------------------------

BAD_TEMPERATURES = (-1.0, -1e-30, math.inf, -math.inf, math.nan)


@pytest.mark.parametrize("t", BAD_TEMPERATURES)
@pytest.mark.parametrize("loss", [vtce_loss, pixelwise_kd_loss], ids=["vtce", "kd"])
def test_an_invalid_concrete_temperature_raises_naming_it(loss, t):
    z = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match=r"temperature must be a finite number"):
        loss(z, z, temperature=t)
    with pytest.raises(ValueError, match="temperature"):
        loss(z, z, temperature=jnp.array([1.0, t]))  # one bad entry of a per-pixel array


@pytest.mark.parametrize("loss", [_vtce, _kd], ids=["vtce", "kd"])
def test_an_invalid_traced_temperature_gives_nan_where_it_applies(loss):
    """Under jit the values are unknown: NaN (not T = 0's or inf's number) on every valid pixel."""
    zs = _random_logits(60, (5, 4))
    zt = _random_logits(61, (5, 4))
    for t in BAD_TEMPERATURES:
        assert np.all(np.isnan(np.asarray(loss(zs, zt, temperature=t)))), t
        mean = jax.jit(lambda s, t: masked_mean(loss(s, zt, temperature=t)))(zs, t)
        assert math.isnan(float(mean)), t  # what the trainer's finiteness check sees
    per_pixel_t = np.array([0.5, -1.0, 0.5, math.inf, 0.5], np.float32)
    got = np.asarray(loss(zs, zt, temperature=per_pixel_t))
    assert np.isnan(got[[1, 3]]).all() and np.isfinite(got[[0, 2, 4]]).all()
    np.testing.assert_allclose(got[0], np.asarray(loss(zs, zt, temperature=0.5))[0], rtol=1e-6)
    masked = np.asarray(loss(zs, zt, temperature=-1.0, where=np.zeros(5, bool)))
    np.testing.assert_array_equal(masked, np.zeros(5))  # masked pixels stay 0


def test_vtce_valid_tiny_and_underflowed_temperatures_are_not_invalid():
    zs = _random_logits(62, (4, 6), scale=100.0)
    zt = _random_logits(63, (4, 6), scale=100.0)
    for t in (1e-36, 3e-40, 0.0, jnp.float32(0.0)):
        assert np.isfinite(np.asarray(vtce_loss(zs, zt, temperature=t))).all(), t
        assert np.isfinite(np.asarray(_vtce(zs, zt, temperature=t))).all(), t


@pytest.mark.parametrize("dtype", [np.float32, np.float16, jnp.bfloat16, bool])
def test_labels_of_a_non_integer_dtype_are_refused_at_trace_time(dtype):
    logits = np.zeros((2, 3), np.float32)
    labels = np.array([1.7, 0.0]).astype(dtype)
    for fn in (
        lambda y: segmentation_cross_entropy(logits, y),
        lambda y: valid_label_mask(y, num_classes=3),
    ):
        with pytest.raises(ValueError, match=r"labels must have an integer dtype.*got"):
            fn(labels)
        with pytest.raises(ValueError, match=r"labels must have an integer dtype"):
            jax.jit(fn)(labels)
