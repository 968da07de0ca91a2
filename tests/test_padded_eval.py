"""Evaluation on images of mixed sizes: padded into one canvas, compiled once, and predicting on
each image's real part what the unpadded image gives."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drd_jax import input_pipeline as ip
from drd_jax import loop, ops
from drd_jax.models import DeepLabVGG16
from drd_jax.parallel import DataParallel
from drd_jax.steps import eval_step
from tfds_builders.synthetic_rgbd import NUM_CLASSES, scenes

K = NUM_CLASSES
# Odd sizes (none a multiple of 8): each pooling level and the final upsampling then differ
# between the unpadded image and the canvas unless the network handles the padding.
SIZES = [(37, 45), (29, 51), (40, 33), (24, 32)]


@pytest.fixture(scope="module")
def variables():
    """Variables of the tiny network (K classes), for every option below: teacher and student,
    with or without pool5a, share one param tree. ``jit`` of ``init``: one compile instead of
    one per operation."""
    model = DeepLabVGG16(num_classes=K, width=1 / 16)
    return jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))


def _random_image(rng, h, w):
    image = rng.normal(size=(h, w, 3)).astype(np.float32)
    depth = rng.uniform(0.5, 5.0, size=(h, w)).astype(np.float32)
    depth[:3, :4] = 0  # some pixels without a reading
    return image, depth


@pytest.mark.parametrize(
    "options",
    [
        dict(depth_aware=False),
        dict(depth_aware=True),
        dict(depth_aware=True, depth_pool_method="nearest"),
        dict(depth_aware=False, pool5a=True),
        dict(depth_aware=True, pool5a=True, depth_aware_pooling=True),
    ],
    ids=["student", "teacher", "teacher-nearest", "student-pool5a", "teacher-dpool5a"],
)
def test_padded_canvas_gives_the_unpadded_logits(variables, options):
    model = DeepLabVGG16(num_classes=K, width=1 / 16, **options)
    apply = jax.jit(functools.partial(model.apply, variables))
    rng = np.random.default_rng(0)
    sizes = SIZES[:3]
    canvas = np.full((len(sizes), 44, 56, 3), 7.0, np.float32)  # garbage outside the images
    depth_canvas = np.full((len(sizes), 44, 56), 3.0, np.float32)
    expected = []
    for i, (h, w) in enumerate(sizes):
        image, depth = _random_image(rng, h, w)
        canvas[i, :h, :w], depth_canvas[i, :h, :w] = image, depth
        expected.append(np.asarray(apply(image[None], depth[None]))[0])
    got = np.asarray(apply(canvas, depth_canvas, image_size=np.array(sizes)))
    for i, (h, w) in enumerate(sizes):
        scale = np.abs(expected[i]).max()
        np.testing.assert_allclose(got[i, :h, :w], expected[i], atol=1e-5 * scale, rtol=0)
        assert (got[i, h:] == 0).all() and (got[i, :, w:] == 0).all()


def test_image_size_must_be_one_pair_per_image(variables):
    model = DeepLabVGG16(num_classes=K, width=1 / 16)
    with pytest.raises(ValueError, match="image_size"):
        model.apply(variables, jnp.zeros((2, 16, 16, 3)), image_size=np.array([[16, 16]]))


@pytest.mark.parametrize(
    "size,canvas", [((1, 1), (3, 2)), ((17, 5), (20, 9)), ((64, 48), (64, 48))]
)
def test_resize_to_sizes_matches_jax_image_resize(size, canvas):
    h, w = size
    small = (-(-h // 8), -(-w // 8))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, *canvas, 4)).astype(np.float32)
    out = ops.resize_bilinear_to_sizes(
        jnp.asarray(x), jnp.array([small]), jnp.array([size]), (h + 3, w + 2)
    )
    expected = jax.image.resize(x[0, : small[0], : small[1]], (h, w, 4), "bilinear")
    np.testing.assert_allclose(np.asarray(out)[0, :h, :w], expected, atol=1e-6)
    assert (np.asarray(out)[0, h:] == 0).all() and (np.asarray(out)[0, :, w:] == 0).all()


def test_valid_mask_and_pooled_sizes():
    mask = np.asarray(ops.valid_mask(jnp.array([[2, 3], [1, 1]]), (3, 4)))
    assert mask.shape == (2, 3, 4, 1)
    assert mask[0, ..., 0].sum() == 6 and mask[0, :2, :3].all() and mask[1, ..., 0].sum() == 1
    np.testing.assert_array_equal(ops.pooled_sizes(jnp.array([[5, 8], [1, 2]])), [[3, 4], [1, 1]])


def test_depth_aware_avg_pool_where_is_like_padding():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1, 7, 9, 3)).astype(np.float32)
    depth = rng.uniform(1, 3, size=(1, 7, 9)).astype(np.float32)
    small = ops.depth_aware_avg_pool(x[:, :5, :6], depth[:, :5, :6], padding=((1, 1), (1, 1)))
    where = np.asarray(ops.valid_mask(jnp.array([[5, 6]]), (7, 9)))
    padded = ops.depth_aware_avg_pool(
        np.where(where, x, 0), depth, padding=((1, 1), (1, 1)), where=where
    )
    np.testing.assert_allclose(np.asarray(padded)[:, :5, :6], small, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="where"):
        ops.depth_aware_avg_pool(x, depth, where=where[:, :5])


@pytest.fixture(scope="module")
def mixed_source():
    """Eight synthetic test scenes in four sizes (a SUN RGB-D-like mix, scaled down)."""
    return [scenes.make_example(0, "test", i, *SIZES[i % 4]) for i in range(8)]


def test_eval_pad_size(mixed_source):
    assert ip.eval_pad_size(mixed_source) == (40, 51)
    assert ip.eval_pad_size(mixed_source[:1] * 3) is None  # one size: nothing padded
    assert ip.eval_pad_size(mixed_source, (48, 64)) == (48, 64)  # given: nothing is read
    with pytest.raises(ValueError, match="pad_to"):
        ip.eval_pad_size(mixed_source, (48,))
    (batch,) = list(ip.create_eval_dataset(mixed_source[:2], num_classes=K, batch_size=2))
    np.testing.assert_array_equal(batch["size"], [SIZES[0], SIZES[1]])


@pytest.mark.parametrize("depth_aware", [False, True], ids=["student", "teacher"])
def test_padded_evaluation_compiles_once_and_counts_the_same(variables, mixed_source, depth_aware):
    model = DeepLabVGG16(num_classes=K, width=1 / 16, depth_aware=depth_aware)
    params = variables["params"]
    par = DataParallel("jit", 1)

    def confusion(pad_to, batch_size):
        step = functools.partial(eval_step, model=model, num_classes=K, padded=pad_to is not None)
        compiled = jax.jit(step)
        ds = ip.create_eval_dataset(
            mixed_source, num_classes=K, batch_size=batch_size, pad_to=pad_to
        )
        cm = loop.evaluate(compiled, params, ds, par, K)
        return cm, compiled._cache_size()

    per_size, compiles_per_size = confusion(None, 1)
    assert compiles_per_size == 4  # one program per image size
    pad_to = ip.eval_pad_size(mixed_source)
    for batch_size in (1, 3):
        padded, compiles = confusion(pad_to, batch_size)
        assert compiles == 1
        np.testing.assert_array_equal(padded, per_size)
    assert per_size.sum() == sum((ex["label"] > 0).sum() for ex in mixed_source)
