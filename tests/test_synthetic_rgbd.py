"""synthetic_rgbd: deterministic builds, data conventions, and the depth-vs-colour design goal."""

import numpy as np
import pytest

from tfds_builders.synthetic_rgbd import CLASS_NAMES, NUM_CLASSES, Builder, scenes

TINY = {"height": 48, "width": 64, "train": 16, "test": 8}


def _build(data_dir):
    builder = Builder(config="tiny", data_dir=str(data_dir))
    builder.download_and_prepare(file_format="array_record")
    return builder


def _read_all(builder):
    out = {}
    for split in ("train", "test"):
        source = builder.as_data_source(split=split)
        out[split] = [source[i] for i in range(len(source))]
    return out


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    a = _build(tmp_path_factory.mktemp("synthetic_a"))
    b = _build(tmp_path_factory.mktemp("synthetic_b"))
    return a, _read_all(a), _read_all(b)


def test_class_constants():
    assert NUM_CLASSES == len(CLASS_NAMES) == 6
    assert scenes.VOID_LABEL == 0
    assert CLASS_NAMES[scenes.WALL - 1] == "wall" and CLASS_NAMES[scenes.CONE - 1] == "cone"


def test_two_builds_are_identical(two_builds):
    _, first, second = two_builds
    for split in ("train", "test"):
        assert len(first[split]) == len(second[split]) == TINY[split]
        for ex_a, ex_b in zip(first[split], second[split], strict=True):
            assert ex_a.keys() == ex_b.keys() == {"image", "depth", "label", "index"}
            for key in ("image", "depth", "label"):
                assert ex_a[key].tobytes() == ex_b[key].tobytes()
            assert ex_a["index"] == ex_b["index"]


def test_split_sizes_dtypes_shapes_and_metadata(two_builds):
    builder, data, _ = two_builds
    assert builder.info.splits["train"].num_examples == TINY["train"]
    assert builder.info.splits["test"].num_examples == TINY["test"]
    assert builder.info.metadata["class_names"] == list(CLASS_NAMES)
    assert builder.info.metadata["num_classes"] == NUM_CLASSES
    h, w = TINY["height"], TINY["width"]
    for split in ("train", "test"):
        for i, ex in enumerate(data[split]):
            assert ex["index"] == i  # records are stored in scene order
            assert ex["image"].dtype == np.uint8 and ex["image"].shape == (h, w, 3)
            assert ex["depth"].dtype == np.float32 and ex["depth"].shape == (h, w)
            assert ex["label"].dtype == np.uint8 and ex["label"].shape == (h, w)
            assert ex["label"].max() <= NUM_CLASSES
            assert np.isfinite(ex["depth"]).all() and ex["depth"].min() >= 0
            assert ex["depth"].max() < 8.0


def test_records_equal_the_generator_output(two_builds):
    """Record i of split s is make_example(seed, s, i): PNG/zlib storage is lossless."""
    _, data, _ = two_builds
    for split in ("train", "test"):
        for i in (0, TINY[split] - 1):
            expected = scenes.make_example(0, split, i, TINY["height"], TINY["width"])
            for key in ("image", "depth", "label"):
                np.testing.assert_array_equal(data[split][i][key], expected[key])


def test_examples_do_not_depend_on_generation_order():
    h, w = TINY["height"], TINY["width"]
    forward = [scenes.make_example(5, "train", i, h, w) for i in range(4)]
    backward = [scenes.make_example(5, "train", i, h, w) for i in reversed(range(4))][::-1]
    for a, b in zip(forward, backward, strict=True):
        for key in a:
            assert a[key].tobytes() == b[key].tobytes()
    # Different seed, split or index: a different scene.
    other = [
        scenes.make_example(6, "train", 0, h, w),
        scenes.make_example(5, "test", 0, h, w),
        scenes.make_example(5, "train", 1, h, w),
    ]
    for ex in other:
        assert ex["image"].tobytes() != forward[0]["image"].tobytes()


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        scenes.example_rng(0, "dev", 0)
    with pytest.raises(ValueError, match="seed and index"):
        scenes.example_rng(-1, "train", 0)
    with pytest.raises(ValueError, match="height and width"):
        scenes.make_scene(np.random.default_rng(0), 4, 64)


def _scenes(n, height=60, width=80, seed=3, **kwargs):
    return [scenes.make_scene(scenes.example_rng(seed, "train", i), height, width, **kwargs)
            for i in range(n)]  # fmt: skip


def test_labels_cover_all_classes_and_void():
    labels = np.stack([ex["label"] for ex in _scenes(30)])
    counts = np.bincount(labels.ravel(), minlength=NUM_CLASSES + 1)
    assert counts.size == NUM_CLASSES + 1  # nothing above K
    assert (counts > 0).all()  # void and every class occur
    assert counts[scenes.VOID_LABEL] < 0.05 * labels.size


def test_depth_has_invalid_pixels_like_a_sensor():
    depths = [ex["depth"] for ex in _scenes(20)]
    invalid = np.array([(d == 0).mean() for d in depths])
    assert (invalid > 0).mean() > 0.9  # almost every frame has holes
    assert 0.002 < invalid.mean() < 0.15
    valid = np.concatenate([d[d > 0] for d in depths])
    assert valid.min() > 0.5 and valid.max() < 6.5  # metres


def test_different_classes_and_objects_are_at_distinct_depths():
    """With a noise-free sensor, every label boundary except those with the floor (which meets
    wall and objects continuously) is a depth jump of at least min_gap metres."""
    clean = scenes.DepthSensor(
        noise_a=0.0, noise_b=0.0, holes=(0, 0), border_prob=0.0, dropout=0.0, baseline=0.0
    )
    min_gap = scenes.SceneParams().min_gap
    jumps = []
    for ex in _scenes(30, sensor=clean):
        lab, d = ex["label"], ex["depth"]
        assert (d > 0).all()
        for la, lb, da, db in (
            (lab[:, :-1], lab[:, 1:], d[:, :-1], d[:, 1:]),
            (lab[:-1], lab[1:], d[:-1], d[1:]),
        ):
            boundary = (la != lb) & (la != scenes.FLOOR) & (lb != scenes.FLOOR)
            jumps.append(np.abs(da - db)[boundary])
    jumps = np.concatenate(jumps)
    assert jumps.size > 500
    assert jumps.min() >= min_gap - 0.002  # millimetre quantisation


def _edges(ex):
    """Right/down neighbour pairs: label edge, depth edge (both valid, > 0.15 m), colour step."""
    lab, d, img = ex["label"], ex["depth"], ex["image"].astype(np.float32)
    out = []
    for a, b in (((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
                 ((slice(None, -1), slice(None)), (slice(1, None), slice(None)))):  # fmt: skip
        label_edge = lab[a] != lab[b]
        depth_edge = (d[a] > 0) & (d[b] > 0) & (np.abs(d[a] - d[b]) > 0.15)
        colour = np.linalg.norm(img[a] - img[b], axis=-1)
        out.append((label_edge.ravel(), depth_edge.ravel(), colour.ravel()))
    return [np.concatenate(x) for x in zip(*out, strict=True)]


def _f1(pred, truth):
    tp = np.sum(pred & truth)
    return 2.0 * tp / max(pred.sum() + truth.sum(), 1)


def test_depth_edges_match_label_edges_better_than_colour_edges():
    # At the `default` config's resolution (at lower resolutions the floor's depth step per pixel
    # near the wall grows, and the margin shrinks).
    exs = _scenes(20, height=120, width=160)
    label_edge, depth_edge, colour = (
        np.concatenate(x) for x in zip(*[_edges(ex) for ex in exs], strict=True)
    )
    f1_depth = _f1(depth_edge, label_edge)
    # The best threshold on the colour difference, chosen with hindsight.
    f1_colour = max(_f1(colour > t, label_edge) for t in range(10, 200, 5))
    assert f1_depth > f1_colour + 0.12, (f1_depth, f1_colour)
    # Among depth edges, most are label edges (precision).
    assert np.sum(depth_edge & label_edge) / depth_edge.sum() > 0.8


def test_rgb_keeps_a_weak_colour_cue():
    """Nearest-class-mean colour beats chance on object pixels, but is far from solving them."""
    exs = _scenes(40)
    objects = list(scenes.OBJECT_CLASSES)
    pix = np.concatenate([ex["image"][ex["label"] >= objects[0]] for ex in exs]).astype(float)
    lab = np.concatenate([ex["label"][ex["label"] >= objects[0]] for ex in exs])
    means = np.stack([pix[lab == c].mean(0) for c in objects])
    pred = np.array(objects)[np.argmin(((pix[:, None] - means[None]) ** 2).sum(-1), axis=1)]
    balanced = np.mean([(pred[lab == c] == c).mean() for c in objects])
    assert 1.0 / len(objects) + 0.05 < balanced < 0.7, balanced


def test_depth_scale_shrinks_the_world_the_sensor_sees():
    """``depth_scale`` multiplies the readings (and their noise) and changes nothing else."""
    plain = scenes.make_example(0, "train", 3, 48, 64)
    small = scenes.make_example(0, "train", 3, 48, 64, scenes.SceneParams(depth_scale=0.25))
    np.testing.assert_array_equal(small["image"], plain["image"])
    np.testing.assert_array_equal(small["label"], plain["label"])
    np.testing.assert_array_equal(small["depth"] > 0, plain["depth"] > 0)  # same holes
    # Millimetre quantisation happens after the scaling: within half a millimetre.
    np.testing.assert_allclose(small["depth"], 0.25 * plain["depth"], atol=0.0005 + 1e-6)


def test_calibration_variants_are_configs_with_their_scene_overrides():
    from tfds_builders.synthetic_rgbd.synthetic_rgbd_dataset_builder import (
        CALIBRATED,
        CALIBRATION_VARIANTS,
    )

    configs = Builder.builder_configs
    assert {"default", "uncalibrated", "tiny"} <= set(configs)
    assert configs["uncalibrated"].scene_params() == scenes.SceneParams()
    assert configs["default"].scene_params() == scenes.SceneParams(**CALIBRATED)
    assert configs["default"].scene_params() != scenes.SceneParams()
    for name, overrides in CALIBRATION_VARIANTS.items():
        params = configs[name].scene_params()
        for field, value in overrides.items():
            assert getattr(params, field) == value, (name, field)
        assert (configs[name].height, configs[name].width) == (120, 160)


def test_class_colours_choice_is_checked():
    with pytest.raises(ValueError, match="class_colours"):
        scenes.make_example(0, "train", 0, 48, 64, scenes.SceneParams(class_colours="unique"))
    distinct = scenes.make_example(
        0, "train", 0, 48, 64, scenes.SceneParams(class_colours="distinct")
    )
    assert distinct["image"].shape == (48, 64, 3)
