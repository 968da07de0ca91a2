"""Tests for the feature-map and adversarial distillation terms of drd_jax.losses.

Covers cosine_affinity, pairwise_similarity_loss (Structured KD), affinity_distillation_loss and
knowledge_adaptation_loss (Knowledge Adaptation) and the WGAN-GP pieces of the holistic term.
Expected values are written by hand or with independent NumPy code (explicit loops), never by
calling the code under test.
"""

import doctest
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from drd_jax.losses import (
    affinity_distillation_loss,
    cosine_affinity,
    knowledge_adaptation_loss,
    pairwise_similarity_loss,
    wgan_critic_loss,
    wgan_generator_loss,
    wgan_gradient_penalty,
)

R = 1.0 / math.sqrt(2.0)

# Jitted wrappers: one compilation per call site and shape (test data comes from NumPy).
_aff = jax.jit(cosine_affinity)
_pair = jax.jit(pairwise_similarity_loss, static_argnames=("node_scale", "node_window"))
_ad = jax.jit(affinity_distillation_loss)
_ka = jax.jit(knowledge_adaptation_loss)


def _randn(seed, shape, scale=1.0):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _distinct(seed, shape, gap=0.2):
    """Values that differ pairwise by >= ``gap`` (so finite differences never flip a max)."""
    size = int(np.prod(shape))
    values = (np.random.default_rng(seed).permutation(size) - size / 2.0) * gap
    return values.reshape(shape).astype(np.float32)


def _check_grads(f, args):
    check_grads(f, args, order=1, modes=("fwd", "rev"), eps=1e-2, atol=1e-2, rtol=1e-2)


# ---------------------------------------------------------------------------------------------
# Independent NumPy references (float64, explicit loops)
# ---------------------------------------------------------------------------------------------


def _np_affinity(features):
    f = np.asarray(features, np.float64)
    n, h, w, _ = f.shape
    out = np.zeros((n, h * w, h * w))
    for b in range(n):
        pixels = [f[b, y, x] for y in range(h) for x in range(w)]  # row-major
        for i, fi in enumerate(pixels):
            for j, fj in enumerate(pixels):
                ni = max(math.sqrt(float(fi @ fi)), 1e-8)
                nj = max(math.sqrt(float(fj @ fj)), 1e-8)
                out[b, i, j] = float(fi @ fj) / (ni * nj)
    return out


def _np_max_pool_ceil(features, kh, kw):
    f = np.asarray(features, np.float64)
    n, h, w, c = f.shape
    nh, nw = math.ceil(h / kh), math.ceil(w / kw)
    out = np.empty((n, nh, nw, c))
    for i in range(nh):
        for j in range(nw):
            # Slicing past the end keeps the partial last window.
            out[:, i, j] = f[:, i * kh : (i + 1) * kh, j * kw : (j + 1) * kw].max(axis=(1, 2))
    return out


def _np_pairwise(student, teacher, node_scale=0.5, node_window=None):
    h, w = student.shape[1:3]
    if node_window is None:
        node_window = (max(1, int(h * node_scale)), max(1, int(w * node_scale)))
    a_s = _np_affinity(_np_max_pool_ceil(student, *node_window))
    a_t = _np_affinity(_np_max_pool_ceil(teacher, *node_window))
    p = a_s.shape[-1]
    return ((a_t - a_s) ** 2).sum(axis=(1, 2)) / p**2


def _np_affinity_distillation(student, teacher):
    a_s, a_t = _np_affinity(student), _np_affinity(teacher)
    return ((a_s - a_t) ** 2).mean(axis=(1, 2))


def _np_knowledge_adaptation(student, teacher):
    out = []
    for s, t in zip(np.asarray(student, np.float64), np.asarray(teacher, np.float64), strict=True):
        s, t = s.ravel(), t.ravel()
        s = s / max(np.linalg.norm(s), 1e-8)
        t = t / max(np.linalg.norm(t), 1e-8)
        out.append(np.abs(s - t).sum() / s.size)
    return np.array(out)


# ---------------------------------------------------------------------------------------------
# cosine_affinity
# ---------------------------------------------------------------------------------------------


def test_cosine_affinity_hand_values_row_major_and_scale_invariant():
    # Pixels (0,0), (0,1), (1,0), (1,1) hold e1, e2, e1 + e2, -e1.
    f = np.array([[[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [-1.0, 0.0]]]], np.float32)
    want = np.array(
        [
            [1.0, 0.0, R, -1.0],
            [0.0, 1.0, R, 0.0],
            [R, R, 1.0, -R],
            [-1.0, 0.0, -R, 1.0],
        ]
    )
    scaled = f * np.array([2.0, 0.5, 3.0, 7.0], np.float32).reshape(1, 2, 2, 1)
    got = np.asarray(_aff(np.concatenate([f, scaled])))
    assert got.shape == (2, 4, 4)
    np.testing.assert_allclose(got[0], want, atol=1e-6)
    np.testing.assert_allclose(got[1], want, atol=1e-6)  # positive per-pixel scale: unchanged


def test_cosine_affinity_matches_numpy_and_is_float32():
    f = _randn(0, (2, 3, 2, 4))
    np.testing.assert_allclose(np.asarray(_aff(f)), _np_affinity(f), atol=1e-5)
    assert _aff(f.astype(jnp.bfloat16)).dtype == jnp.float32


def test_cosine_affinity_zero_vector_gives_zero_row_and_finite_gradient():
    f = np.array([[[[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]]], np.float32)  # middle pixel is 0
    got = np.asarray(_aff(f))[0]
    want = np.array([[1.0, 0.0, R], [0.0, 0.0, 0.0], [R, 0.0, 1.0]])
    np.testing.assert_allclose(got, want, atol=1e-6)
    weights = _randn(1, (1, 3, 3))
    g = jax.jit(jax.grad(lambda x: jnp.sum(cosine_affinity(x) * weights)))(f)
    assert np.all(np.isfinite(np.asarray(g)))
    # The losses built on it stay finite in value and gradient too.
    other = np.array([[[[0.0, 1.0], [1.0, 2.0], [0.0, 0.0]]]], np.float32)

    def all_losses(x):
        return jnp.stack(
            [
                affinity_distillation_loss(x, other)[0],
                knowledge_adaptation_loss(x, other)[0],
                pairwise_similarity_loss(x, other, node_window=(1, 1))[0],
            ]
        )

    values, jac = jax.jit(lambda x: (all_losses(x), jax.jacrev(all_losses)(x)))(f)
    assert np.all(np.isfinite(np.asarray(values)))
    assert np.all(np.isfinite(np.asarray(jac)))


def test_cosine_affinity_rejects_wrong_rank():
    with pytest.raises(ValueError, match="rank 4"):
        cosine_affinity(jnp.zeros((2, 3, 4)))


# ---------------------------------------------------------------------------------------------
# pairwise_similarity_loss
# ---------------------------------------------------------------------------------------------


def test_pairwise_hand_value_with_ceil_mode_partial_window():
    # H = 3, W = 2, window (2, 2): 2 x 1 nodes; the second covers only row 2 (partial window).
    student = np.array(
        [[[[1.0, -5.0], [0.0, -3.0]], [[-2.0, -1.0], [0.5, -4.0]], [[-1.0, 2.0], [-3.0, 1.0]]]],
        np.float32,
    )  # nodes (1, -1) and (-1, 2): cosine -3 / sqrt(10). Zero padding would give (0, 2).
    teacher = np.array(
        [
            [
                [[1.0, 0.0, 0.0], [0.0, -1.0, 0.0]],
                [[0.0, 0.0, 0.0], [-1.0, -2.0, 0.0]],
                [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]],
            ]
        ],
        np.float32,
    )  # 3 channels; nodes (1, 0, 0) and (1, 1, 0): cosine 1 / sqrt(2)
    d = R + 3.0 / math.sqrt(10.0)
    want = 2.0 * d**2 / 2**2
    got = _pair(student, teacher, node_window=(2, 2))
    assert got.shape == (1,)
    np.testing.assert_allclose(np.asarray(got), [want], rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(_pair(student, teacher, node_window=(2, 2))),
        _np_pairwise(student, teacher, node_window=(2, 2)),
        rtol=1e-6,
    )


def _four_block_features():
    """(1, 4, 4, 2) features whose 2 x 2 blocks max-pool to e1, e2, e1 + e2, -e1."""
    nodes = [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (-1.0, 0.0)]
    rng = np.random.default_rng(7)
    f = np.zeros((1, 4, 4, 2), np.float32)
    for k, node in enumerate(nodes):
        by, bx = divmod(k, 2)
        block = np.asarray(node) - 1.0 - rng.random((2, 2, 2))  # every entry below the node
        py, px = divmod(k % 4, 2)  # the node sits at a different spot in each block
        block[py, px] = node
        f[0, 2 * by : 2 * by + 2, 2 * bx : 2 * bx + 2] = block
    return f


def test_pairwise_node_scale_default_and_node_window_hand_value():
    student = _four_block_features()
    teacher = np.full((1, 4, 4, 3), 2.0, np.float32)  # every node (2, 2, 2): a^t = all ones
    # Student node affinities as in the row-major test: sum of (1 - a^s)^2 over the 4 x 4 pairs.
    want = (12.0 + 4.0 * (1.0 - R) ** 2 + 2.0 * (1.0 + R) ** 2) / 16.0
    for kwargs in ({}, {"node_scale": 0.6}, {"node_window": (2, 2)}):
        got = _pair(student, teacher, **kwargs)  # int(4 * 0.6) = 2 as well
        np.testing.assert_allclose(np.asarray(got), [want], rtol=1e-6, err_msg=str(kwargs))
    # node_window wins over node_scale.
    got = _pair(student, teacher, node_scale=0.25, node_window=(2, 2))
    np.testing.assert_allclose(np.asarray(got), [want], rtol=1e-6)


@pytest.mark.parametrize(
    ("s_shape", "t_channels", "kwargs"),
    [
        ((2, 5, 3, 4), 6, {}),  # window (2, 1): 3 x 3 nodes, partial last row
        ((1, 3, 3, 2), 2, {"node_scale": 0.2}),  # int(0.6) = 0 -> window (1, 1)
        ((2, 4, 5, 3), 2, {"node_window": (3, 2)}),  # partial windows on both axes
        ((1, 5, 5, 3), 3, {"node_scale": 1.0}),  # one node: the loss is 0
    ],
)
def test_pairwise_matches_numpy(s_shape, t_channels, kwargs):
    student = _randn(10, s_shape)
    teacher = _randn(11, s_shape[:3] + (t_channels,))
    got = _pair(student, teacher, **kwargs)
    assert got.shape == (s_shape[0],)
    np.testing.assert_allclose(np.asarray(got), _np_pairwise(student, teacher, **kwargs), atol=1e-6)


def test_pairwise_zero_when_equal_and_scale_invariance():
    f = _randn(12, (2, 4, 4, 3))
    np.testing.assert_allclose(np.asarray(_pair(f, f)), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(_pair(f, 3.0 * f)), 0.0, atol=1e-6)
    teacher = _randn(13, (2, 4, 4, 5))
    base = np.asarray(_pair(f, teacher))
    # A positive scale per example commutes with max pooling: the loss is unchanged.
    per_example = np.array([0.3, 4.0], np.float32).reshape(2, 1, 1, 1)
    np.testing.assert_allclose(np.asarray(_pair(f * per_example, teacher)), base, rtol=1e-5)
    # Per-pixel positive scales leave it unchanged only without pooling (window (1, 1)).
    per_pixel = np.exp(_randn(14, (2, 4, 4, 1)))
    base_1 = np.asarray(_pair(f, teacher, node_window=(1, 1)))
    got_1 = _pair(f * per_pixel, teacher * per_pixel[..., ::-1, :], node_window=(1, 1))
    np.testing.assert_allclose(np.asarray(got_1), base_1, rtol=1e-5)


def test_pairwise_equals_affinity_distillation_without_pooling():
    student = _randn(15, (2, 3, 2, 4))
    teacher = _randn(16, (2, 3, 2, 3))
    np.testing.assert_allclose(
        np.asarray(_pair(student, teacher, node_window=(1, 1))),
        np.asarray(_ad(student, teacher)),
        rtol=1e-6,
    )


def test_pairwise_gradients():
    student = _distinct(17, (2, 4, 3, 2))
    teacher = _randn(18, (2, 4, 3, 3))
    f = jax.jit(lambda s, t: pairwise_similarity_loss(s, t, node_window=(2, 2)).sum())
    gs, gt = map(np.asarray, jax.jit(jax.grad(f, argnums=(0, 1)))(student, teacher))
    assert np.any(gs != 0.0)
    assert np.all(gt == 0.0)
    # Only the max of each channel in each window receives a gradient.
    assert np.count_nonzero(gs) <= 2 * 2 * 2 * 2  # N x nodes x C
    _check_grads(lambda s: f(s, teacher), (student,))


def test_pairwise_eager_equals_jit():
    student = _randn(19, (1, 3, 3, 2))
    teacher = _randn(20, (1, 3, 3, 2))
    eager = pairwise_similarity_loss(student, teacher, node_window=(2, 2))
    np.testing.assert_allclose(
        np.asarray(eager), np.asarray(_pair(student, teacher, node_window=(2, 2))), rtol=1e-6
    )


@pytest.mark.parametrize(
    ("s_shape", "t_shape", "kwargs", "match"),
    [
        ((2, 4, 4), (2, 4, 4), {}, "rank 4"),
        ((2, 4, 4, 3), (2, 4, 4, 3, 1), {}, "rank 4"),
        ((2, 4, 4, 3), (1, 4, 4, 3), {}, "same N, H, W"),
        ((2, 4, 4, 3), (2, 4, 5, 3), {}, "same N, H, W"),
        ((1, 4, 4, 3), (1, 4, 4, 3), {"node_scale": 0.0}, "node_scale"),
        ((1, 4, 4, 3), (1, 4, 4, 3), {"node_scale": -0.5}, "node_scale"),
        ((1, 4, 4, 3), (1, 4, 4, 3), {"node_scale": 1.5}, "node_scale"),
        ((1, 4, 4, 3), (1, 4, 4, 3), {"node_window": (0, 1)}, "node_window"),
        ((1, 4, 4, 3), (1, 4, 4, 3), {"node_window": (2,)}, "node_window"),
        ((1, 4, 4, 3), (1, 4, 4, 3), {"node_window": (1.5, 1)}, "node_window"),
        ((1, 4, 4, 3), (1, 4, 4, 3), {"node_window": (5, 1)}, "larger than the feature map"),
    ],
)
def test_pairwise_rejects_bad_shapes_and_hyper_parameters(s_shape, t_shape, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pairwise_similarity_loss(np.zeros(s_shape), np.zeros(t_shape), **kwargs)


# ---------------------------------------------------------------------------------------------
# affinity_distillation_loss
# ---------------------------------------------------------------------------------------------


def test_affinity_distillation_hand_values():
    # A^s = I, A^t = all ones (teacher with 3 channels): (0 + 1 + 1 + 0) / 4.
    student = np.array([[[[1.0, 0.0], [0.0, 1.0]]]], np.float32)
    teacher = np.array([[[[2.0, 0.0, 0.0], [1.0, 0.0, 0.0]]]], np.float32)
    np.testing.assert_allclose(np.asarray(_ad(student, teacher)), [0.5], rtol=1e-6)
    # Student e1, e1 + e2, e2; teacher e1, e2, -e1: off-diagonal differences r, 1, r (twice).
    student = np.array([[[[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]]], np.float32)
    teacher = np.array([[[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]]], np.float32)
    want = 2.0 * (R**2 + 1.0 + R**2) / 9.0
    np.testing.assert_allclose(np.asarray(_ad(student, teacher)), [want], rtol=1e-6)


def test_affinity_distillation_matches_numpy_and_invariances():
    student = _randn(21, (2, 3, 3, 4))
    teacher = _randn(22, (2, 3, 3, 6))
    got = np.asarray(_ad(student, teacher))
    assert got.shape == (2,)
    np.testing.assert_allclose(got, _np_affinity_distillation(student, teacher), atol=1e-6)
    # Invariant to positive per-pixel scaling of either input (cosine affinity).
    scale_s = np.exp(_randn(23, (2, 3, 3, 1)))
    scale_t = np.exp(_randn(24, (2, 3, 3, 1)))
    np.testing.assert_allclose(
        np.asarray(_ad(student * scale_s, teacher * scale_t)), got, rtol=1e-5
    )
    np.testing.assert_allclose(np.asarray(_ad(student, student)), 0.0, atol=1e-6)
    assert _ad(student.astype(jnp.bfloat16), teacher).dtype == jnp.float32


def test_affinity_distillation_gradients():
    student = _randn(25, (2, 2, 3, 3))
    teacher = _randn(26, (2, 2, 3, 2))
    f = jax.jit(lambda s, t: affinity_distillation_loss(s, t).sum())
    gs, gt = jax.jit(jax.grad(f, argnums=(0, 1)))(student, teacher)
    assert np.any(np.asarray(gs) != 0.0)
    assert np.all(np.asarray(gt) == 0.0)
    _check_grads(lambda s: f(s, teacher), (student,))


@pytest.mark.parametrize(
    ("s_shape", "t_shape", "match"),
    [
        ((2, 4, 3), (2, 4, 3), "rank 4"),
        ((2, 4, 4, 3), (2, 3, 4, 3), "same N, H, W"),
        ((2, 4, 4, 3), (3, 4, 4, 3), "same N, H, W"),
    ],
)
def test_affinity_distillation_rejects_bad_shapes(s_shape, t_shape, match):
    with pytest.raises(ValueError, match=match):
        affinity_distillation_loss(np.zeros(s_shape), np.zeros(t_shape))


# ---------------------------------------------------------------------------------------------
# knowledge_adaptation_loss
# ---------------------------------------------------------------------------------------------


def test_knowledge_adaptation_hand_values():
    # (3, 4) / 5 = (0.6, 0.8) against (1, 0): (0.4 + 0.8) / 2 elements.
    got = _ka(np.array([[[[3.0, 4.0]]]], np.float32), np.array([[[[2.0, 0.0]]]], np.float32))
    np.testing.assert_allclose(np.asarray(got), [0.6], rtol=1e-6)
    # Normalised over the whole (H, W, C) tensor: (1, 0, 0, 1) / sqrt(2) against (0, 0, 0, 1),
    # averaged over the 4 elements.
    s = np.array([[[[1.0, 0.0], [0.0, 1.0]]]], np.float32)
    t = np.array([[[[0.0, 0.0], [0.0, 2.0]]]], np.float32)
    want = (R + abs(R - 1.0)) / 4
    np.testing.assert_allclose(np.asarray(_ka(s, t)), [want], rtol=1e-6)
    # An all-zero student normalises to 0: the loss is ||t / ||t|| ||_1 / 4 = 1 / 4 here.
    np.testing.assert_allclose(np.asarray(_ka(np.zeros_like(s), t)), [0.25], rtol=1e-6)


def test_knowledge_adaptation_matches_numpy_and_invariances():
    s = _randn(27, (3, 2, 3, 4))
    t = _randn(28, (3, 2, 3, 4))
    got = np.asarray(_ka(s, t))
    assert got.shape == (3,)
    np.testing.assert_allclose(got, _np_knowledge_adaptation(s, t), rtol=1e-5)
    # Invariant to one positive scale per example (the norm is over the whole tensor)...
    scale = np.array([0.1, 2.0, 30.0], np.float32).reshape(3, 1, 1, 1)
    np.testing.assert_allclose(np.asarray(_ka(s * scale, t / scale)), got, rtol=1e-5)
    # ...but not to per-pixel scales.
    per_pixel = np.exp(_randn(29, (3, 2, 3, 1)))
    assert not np.allclose(np.asarray(_ka(s * per_pixel, t)), got, rtol=1e-3)
    np.testing.assert_allclose(np.asarray(_ka(s, s)), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(_ka(s, 4.0 * s)), 0.0, atol=1e-6)
    assert _ka(s.astype(jnp.bfloat16), t.astype(jnp.bfloat16)).dtype == jnp.float32


def test_knowledge_adaptation_gradients():
    s = _randn(30, (2, 2, 2, 3))
    t = _randn(31, (2, 2, 2, 3))
    f = jax.jit(lambda s, t: knowledge_adaptation_loss(s, t).sum())
    grad_f = jax.jit(jax.grad(f, argnums=(0, 1)))
    gs, gt = grad_f(s, t)
    assert np.any(np.asarray(gs) != 0.0)
    assert np.all(np.asarray(gt) == 0.0)
    _check_grads(lambda x: f(x, t), (s,))
    g_zero, _ = grad_f(np.zeros_like(s), t)
    assert np.all(np.isfinite(np.asarray(g_zero)))


@pytest.mark.parametrize(
    ("s_shape", "t_shape", "match"),
    [
        ((2, 3, 4), (2, 3, 4), "rank 4"),
        ((2, 3, 4, 5), (2, 3, 4, 6), "same shape"),
        ((2, 3, 4, 5), (1, 3, 4, 5), "same shape"),
    ],
)
def test_knowledge_adaptation_rejects_bad_shapes(s_shape, t_shape, match):
    with pytest.raises(ValueError, match=match):
        knowledge_adaptation_loss(np.zeros(s_shape), np.zeros(t_shape))


# ---------------------------------------------------------------------------------------------
# WGAN-GP
# ---------------------------------------------------------------------------------------------


def test_wgan_critic_and_generator_losses():
    real = np.array([2.0, 1.0, -0.5], np.float32)
    fake = np.array([0.5, 1.5, 0.25], np.float32)
    np.testing.assert_allclose(np.asarray(wgan_critic_loss(real, fake)), [-1.5, 0.5, 0.75])
    np.testing.assert_allclose(np.asarray(wgan_generator_loss(fake)), [-0.5, -1.5, -0.25])
    g_real, g_fake = jax.grad(lambda r, f: wgan_critic_loss(r, f).mean(), argnums=(0, 1))(
        real, fake
    )
    np.testing.assert_allclose(np.asarray(g_real), -np.ones(3) / 3, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(g_fake), np.ones(3) / 3, rtol=1e-6)
    assert wgan_generator_loss(fake.astype(jnp.bfloat16)).dtype == jnp.float32
    with pytest.raises(ValueError, match="same shape"):
        wgan_critic_loss(np.zeros(3), np.zeros(4))


def _linear_critic(w):
    return lambda x: jnp.sum(x * w, axis=(1, 2, 3))


_gp = jax.jit(
    lambda w, real, fake, key: wgan_gradient_penalty(_linear_critic(w), real, fake, key=key)
)


def test_gradient_penalty_linear_critic():
    w = _randn(32, (1, 2, 2, 3))
    real = _randn(33, (4, 2, 2, 3))
    fake = _randn(34, (4, 2, 2, 3))
    want = (math.sqrt(float(np.sum(np.asarray(w, np.float64) ** 2))) - 1.0) ** 2
    for seed in (0, 1):  # whatever epsilon is drawn
        got = _gp(w, real, fake, jax.random.key(seed))
        assert got.shape == (4,)
        np.testing.assert_allclose(np.asarray(got), np.full(4, want), rtol=1e-5)
    # Unit-norm weights: no penalty.
    unit = w / np.sqrt(np.sum(w.astype(np.float64) ** 2))
    got = _gp(unit.astype(np.float32), real, fake, jax.random.key(2))
    np.testing.assert_allclose(np.asarray(got), 0.0, atol=1e-10)
    # Raw uint32 keys work too.
    got = _gp(w, real, fake, jax.random.PRNGKey(3))
    np.testing.assert_allclose(np.asarray(got), np.full(4, want), rtol=1e-5)


def _quadratic_critic(c):
    return lambda x: jnp.sum(c * x * x, axis=(1, 2, 3))  # gradient 2 c x


def test_gradient_penalty_quadratic_critic_hand_values():
    c = _randn(35, (1, 2, 1, 3))
    x = _randn(36, (3, 2, 1, 3))
    key = jax.random.key(4)
    f = jax.jit(lambda c, r, fk: wgan_gradient_penalty(_quadratic_critic(c), r, fk, key=key))
    # real == fake: x_hat = x for any epsilon.
    c64, x64 = np.asarray(c, np.float64), np.asarray(x, np.float64)
    want = [(2.0 * np.linalg.norm(c64[0] * x64[n]) - 1.0) ** 2 for n in range(3)]
    np.testing.assert_allclose(np.asarray(f(c, x, x)), want, rtol=1e-5)
    # real != fake: epsilon is jax.random.uniform(key, (N, 1, 1, 1)), one per example.
    fake = _randn(37, (3, 2, 1, 3))
    eps = np.asarray(jax.random.uniform(key, (3, 1, 1, 1)), np.float64)
    assert np.all((eps >= 0.0) & (eps < 1.0)) and len(np.unique(eps)) == 3
    x_hat = eps * x64 + (1.0 - eps) * np.asarray(fake, np.float64)
    want = [(2.0 * np.linalg.norm(c64[0] * x_hat[n]) - 1.0) ** 2 for n in range(3)]
    np.testing.assert_allclose(np.asarray(f(c, x, fake)), want, rtol=1e-5)


def test_gradient_penalty_gradients():
    real = _randn(38, (3, 2, 2, 2))
    fake = _randn(39, (3, 2, 2, 2))
    key = jax.random.key(5)

    # Linear critic: d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w|| per example.
    w = _randn(40, (1, 2, 2, 2))
    gw = jax.jit(jax.grad(lambda w: _gp(w, real, fake, key).sum()))(w)
    norm = np.linalg.norm(np.asarray(w, np.float64))
    np.testing.assert_allclose(np.asarray(gw), 3 * 2.0 * (norm - 1.0) * w / norm, rtol=1e-4)
    # At w = 0 (zero input gradient) the safe norm keeps the gradient finite.
    g0 = jax.jit(jax.grad(lambda w: _gp(w, real, fake, key).sum()))(np.zeros_like(w))
    assert np.all(np.isfinite(np.asarray(g0)))

    # A small non-linear critic: the gradient w.r.t. its parameters is finite and non-zero.
    params = {"w1": _randn(41, (8, 4)), "w2": _randn(42, (4,))}

    def mlp(p, x):
        return jnp.tanh(x.reshape(x.shape[0], -1) @ p["w1"]) @ p["w2"]

    def penalty(p, r, fk):
        return wgan_gradient_penalty(lambda x: mlp(p, x), r, fk, key=key).sum()

    grads = jax.jit(jax.grad(penalty))(params, real, fake)
    for leaf in jax.tree.leaves(grads):
        assert np.all(np.isfinite(np.asarray(leaf)))
        assert np.any(np.asarray(leaf) != 0.0)
    # No gradient flows into real or fake (here the critic's input gradient depends on them).
    g_real, g_fake = jax.jit(jax.grad(penalty, argnums=(1, 2)))(params, real, fake)
    assert np.all(np.asarray(g_real) == 0.0)
    assert np.all(np.asarray(g_fake) == 0.0)
    c = _randn(43, (1, 2, 2, 2))
    g_real, g_fake = jax.jit(
        jax.grad(
            lambda r, fk: wgan_gradient_penalty(_quadratic_critic(c), r, fk, key=key).sum(),
            argnums=(0, 1),
        )
    )(real, fake)
    assert np.all(np.asarray(g_real) == 0.0)
    assert np.all(np.asarray(g_fake) == 0.0)


def test_gradient_penalty_rejects_bad_shapes():
    key = jax.random.key(0)
    critic = _linear_critic(np.ones((1, 2, 2, 1), np.float32))
    with pytest.raises(ValueError, match="same shape"):
        wgan_gradient_penalty(critic, np.zeros((2, 2, 2, 1)), np.zeros((3, 2, 2, 1)), key=key)
    with pytest.raises(ValueError, match="one score per example"):
        wgan_gradient_penalty(
            lambda x: x.reshape(2, -1), np.zeros((2, 2, 2, 1)), np.zeros((2, 2, 2, 1)), key=key
        )
    with pytest.raises(ValueError, match="batch axis"):
        wgan_gradient_penalty(lambda x: x, np.float32(0.0), np.float32(0.0), key=key)


# ---------------------------------------------------------------------------------------------
# Docstring examples of the new functions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn",
    [
        cosine_affinity,
        pairwise_similarity_loss,
        affinity_distillation_loss,
        knowledge_adaptation_loss,
        wgan_critic_loss,
        wgan_generator_loss,
        wgan_gradient_penalty,
    ],
)
def test_docstring_examples(fn):
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    tests = finder.find(fn, fn.__name__, globs={})
    assert sum(len(t.examples) for t in tests) > 0
    for t in tests:
        runner.run(t)
    result = runner.summarize(verbose=False)
    assert result.failed == 0
