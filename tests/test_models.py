"""DeepLabVGG16: teacher and student share one param tree; constant depth makes them agree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drd_jax.models import DeepLabVGG16, depth_aware_layer_names

pytestmark = pytest.mark.usefixtures("fast_compile")

NUM_CLASSES = 5
TINY = dict(num_classes=NUM_CLASSES, width=1 / 16)


def _batch(n=2, h=32, w=40):
    k_img, k_depth = jax.random.split(jax.random.PRNGKey(3))
    image = jax.random.normal(k_img, (n, h, w, 3))
    # Two planes at 1 m and 3 m with a sharp edge, and a few invalid (0) readings.
    depth = jnp.where(jnp.arange(w)[None, None, :] < w // 2, 1.0, 3.0) * jnp.ones((n, h, w))
    depth = depth + 0.05 * jax.random.uniform(k_depth, (n, h, w))
    depth = depth.at[:, 0, :3].set(0.0)
    return image, depth


@pytest.fixture(scope="module")
def tiny_teacher_variables():
    """``jit`` of the teacher's ``init``: one compile instead of one per operation."""
    image, depth = _batch()
    return jax.jit(DeepLabVGG16(depth_aware=True, **TINY).init)(jax.random.PRNGKey(0), image, depth)


def test_teacher_and_student_param_trees_are_identical():
    image, depth = _batch()
    teacher = DeepLabVGG16(depth_aware=True, **TINY)
    student = DeepLabVGG16(depth_aware=False, **TINY)
    t_shapes = jax.eval_shape(teacher.init, jax.random.PRNGKey(0), image, depth)
    s_shapes = jax.eval_shape(student.init, jax.random.PRNGKey(0), image)
    assert jax.tree.structure(t_shapes) == jax.tree.structure(s_shapes)
    assert jax.tree.leaves(jax.tree.map(lambda a, b: a.shape == b.shape, t_shapes, s_shapes))
    assert set(t_shapes["params"]) == {
        *(
            f"conv{b}_{i}"
            for b, n in [(1, 2), (2, 2), (3, 3), (4, 3), (5, 3)]
            for i in range(1, n + 1)
        ),
        "fc6",
        "fc7",
        "fc8",
    }


def test_output_is_at_input_resolution(tiny_teacher_variables):
    image, depth = _batch(h=33, w=47)
    apply = jax.jit(DeepLabVGG16(depth_aware=True, **TINY).apply)
    logits = apply(tiny_teacher_variables, image, depth)
    assert logits.shape == (2, 33, 47, NUM_CLASSES)
    assert bool(jnp.all(jnp.isfinite(logits)))


def test_parameter_sharing_and_constant_depth_equivalence(tiny_teacher_variables):
    image, _ = _batch()
    teacher = DeepLabVGG16(depth_aware=True, **TINY)
    student = DeepLabVGG16(depth_aware=False, **TINY)
    # Parameter sharing is one line: the student applies the teacher's variables.
    student_logits = student.apply(tiny_teacher_variables, image)
    flat_depth = jnp.full(image.shape[:3], 2.5)
    teacher_logits = teacher.apply(tiny_teacher_variables, image, flat_depth)
    np.testing.assert_allclose(teacher_logits, student_logits, rtol=1e-5, atol=1e-5)


def test_depth_changes_the_teacher_output(tiny_teacher_variables):
    image, depth = _batch()
    teacher = DeepLabVGG16(depth_aware=True, **TINY)
    with_edges = teacher.apply(tiny_teacher_variables, image, depth)
    flat = teacher.apply(tiny_teacher_variables, image, jnp.full_like(depth, 2.0))
    assert float(jnp.max(jnp.abs(with_edges - flat))) > 1e-4


@pytest.mark.parametrize("option", ["block_first", "pool", "nearest"])
def test_teacher_options_reduce_to_the_student_for_constant_depth(tiny_teacher_variables, option):
    image, depth = _batch()
    kwargs = {
        "block_first": dict(depth_aware_layers="block_first"),
        "pool": dict(pool5a=True, depth_aware_pooling=True),
        "nearest": dict(depth_pool_method="nearest"),
    }[option]
    teacher = DeepLabVGG16(depth_aware=True, **TINY, **kwargs)
    student = DeepLabVGG16(depth_aware=False, **TINY, **kwargs)
    flat = teacher.apply(tiny_teacher_variables, image, jnp.full_like(depth, 1.7))
    np.testing.assert_allclose(flat, student.apply(tiny_teacher_variables, image), atol=1e-5)
    full = DeepLabVGG16(depth_aware=True, **TINY).apply(tiny_teacher_variables, image, depth)
    assert float(jnp.max(jnp.abs(teacher.apply(tiny_teacher_variables, image, depth) - full))) > 0


def test_depth_aware_layer_choices():
    assert depth_aware_layer_names("block_first") == (
        "conv1_1",
        "conv2_1",
        "conv3_1",
        "conv4_1",
        "conv5_1",
        "fc6",
    )
    assert len(depth_aware_layer_names("all")) == 14  # 13 VGG convs and fc6
    with pytest.raises(ValueError, match="depth_aware_layers"):
        depth_aware_layer_names("some")


def test_full_width_parameter_count():
    # VGG16 convs (3x3, with bias), fc6 3x3x512x1024, fc7 1x1x1024x1024, fc8 1x1x1024x40.
    trunk = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256)]
    trunk += [(256, 512)] + [(512, 512)] * 5
    expected = sum(9 * cin * cout + cout for cin, cout in trunk)
    expected += 9 * 512 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 40 + 40
    assert expected == 20_524_904
    shapes = jax.eval_shape(
        DeepLabVGG16(num_classes=40).init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3))
    )
    assert sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes)) == expected


def test_jit_grad_and_dropout(tiny_teacher_variables):
    image, depth = _batch()
    teacher = DeepLabVGG16(depth_aware=True, **TINY)

    @jax.jit
    def loss(params, rng):
        logits = teacher.apply({"params": params}, image, depth, train=True, rngs={"dropout": rng})
        return jnp.mean(logits**2)

    params = tiny_teacher_variables["params"]
    grads = jax.grad(loss)(params, jax.random.PRNGKey(1))
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert float(jnp.abs(grads["conv1_1"]["kernel"]).sum()) > 0
    assert float(loss(params, jax.random.PRNGKey(1))) != float(loss(params, jax.random.PRNGKey(2)))


def test_bfloat16_model_runs(tiny_teacher_variables):
    image, depth = _batch()
    apply = jax.jit(DeepLabVGG16(depth_aware=True, dtype=jnp.bfloat16, **TINY).apply)
    logits = apply(tiny_teacher_variables, image, depth)
    assert logits.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(logits)))


def test_bad_inputs_are_rejected(tiny_teacher_variables):
    image, depth = _batch()
    teacher = DeepLabVGG16(depth_aware=True, **TINY)
    with pytest.raises(ValueError, match="needs depth"):
        teacher.apply(tiny_teacher_variables, image)
    with pytest.raises(ValueError, match="depth must be"):
        teacher.apply(tiny_teacher_variables, image, depth[:, :-1])
    with pytest.raises(ValueError, match="image must be"):
        teacher.apply(tiny_teacher_variables, image[0], depth)
    with pytest.raises(ValueError, match="pool5a"):
        DeepLabVGG16(depth_aware=True, depth_aware_pooling=True, **TINY).apply(
            tiny_teacher_variables, image, depth
        )
    with pytest.raises(ValueError, match="depth_pool_method"):
        DeepLabVGG16(depth_aware=True, depth_pool_method="max", **TINY).apply(
            tiny_teacher_variables, image, depth
        )


@pytest.mark.parametrize(
    "options",
    [
        dict(depth_aware=True),
        dict(depth_aware=True, pool5a=True, depth_aware_pooling=True, depth_pool_method="nearest"),
        dict(depth_aware=False),
    ],
    ids=["teacher", "teacher_pool5a", "student"],
)
def test_empty_batch_gives_empty_logits_and_zero_gradients(tiny_teacher_variables, options):
    """N = 0: logits (0, H, W, K) and zero gradients of the param tree's shapes."""
    image, depth = _batch(n=0)
    model = DeepLabVGG16(**options, **TINY)
    sizes = jnp.zeros((0, 2), jnp.int32)
    for image_size in (None, sizes):
        logits = jax.jit(model.apply)(tiny_teacher_variables, image, depth, image_size=image_size)
        assert logits.shape == (0, 32, 40, NUM_CLASSES)

    def loss(params):
        rngs = {"dropout": jax.random.PRNGKey(1)}
        return model.apply({"params": params}, image, depth, train=True, rngs=rngs).sum()

    grads = jax.jit(jax.grad(loss))(tiny_teacher_variables["params"])
    for g, p in zip(jax.tree.leaves(grads), jax.tree.leaves(tiny_teacher_variables), strict=True):
        assert g.shape == p.shape and not bool(jnp.any(g))
