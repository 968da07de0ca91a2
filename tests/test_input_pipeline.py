"""Input pipeline: numpy augmentations keep image/depth/label aligned; grain batches are shaped,
sharded, resumable and deterministic; evaluation sees every example exactly once."""

import os
import shutil

import numpy as np
import pytest

from drd_jax import input_pipeline as ip
from drd_jax.data import transforms as T
from tfds_builders.synthetic_rgbd import NUM_CLASSES, scenes

K = NUM_CLASSES


def _coord_example(h=30, w=40):
    """image = (row, col, 7), depth = 100 * row + col + 1 (metres; never 0), label = a pattern of
    (row, col) in 0..K-1: every map says which source pixel it came from."""
    rows, cols = np.mgrid[0:h, 0:w]
    image = np.stack([rows, cols, np.full_like(rows, 7)], -1).astype(np.float32)
    depth = (100.0 * rows + cols + 1).astype(np.float32)
    label = ((rows // 3 + cols // 2) % K).astype(np.int32)
    return {"image": image, "depth": depth, "label": label}


def _check_aligned(out, h=30, w=40, raw_image=None):
    """Every non-padding pixel: label matches the source pixel named by depth, and the bilinear
    image coordinates lie within one source pixel of it. Padding: mean colour / 0 / 255."""
    depth, label = out["depth"], out["label"]
    image = raw_image if raw_image is not None else out["image"]
    valid = depth > 0
    assert valid.any()
    src = np.rint(depth[valid]).astype(np.int64) - 1
    rows, cols = src // 100, src % 100
    assert rows.max() < h and cols.max() < w
    np.testing.assert_array_equal(label[valid], (rows // 3 + cols // 2) % K)
    assert np.abs(image[valid][:, 0] - rows).max() <= 1.0 + 1e-4
    assert np.abs(image[valid][:, 1] - cols).max() <= 1.0 + 1e-4
    # Padding.
    assert (label[~valid] == T.IGNORE_LABEL).all()
    pad_colour = np.round(T.MEAN_PIXEL) if raw_image is not None else T.MEAN_PIXEL
    np.testing.assert_allclose(image[~valid], np.broadcast_to(pad_colour, image[~valid].shape))
    return valid


# ------------------------------------------------------------------------------------------------
# Numpy transforms.


def test_map_labels():
    stored = np.array([[0, 1, 2], [K, 0, 3]], np.uint8)
    np.testing.assert_array_equal(T.map_labels(stored, K), [[255, 0, 1], [K - 1, 255, 2]])
    assert T.map_labels(stored, K).dtype == np.int32
    assert T.map_labels(np.array([[0, 894]], np.uint16), 894).tolist() == [[255, 893]]
    with pytest.raises(ValueError, match="num_classes"):
        T.map_labels(np.array([[K + 1]]), K)


def test_normalize_image_mean_pixel_is_zero():
    np.testing.assert_allclose(T.normalize_image(T.MEAN_PIXEL[None, None]), 0.0, atol=1e-6)
    white = T.normalize_image(np.full((1, 1, 3), 255.0))
    np.testing.assert_allclose(white[0, 0], (1 - T.IMAGENET_MEAN) / T.IMAGENET_STD, rtol=1e-6)


def test_identity_resample_and_flip():
    ex = _coord_example()
    same = T.resample(ex, scaled_size=(30, 40))
    for key in ("image", "depth", "label"):
        np.testing.assert_array_equal(same[key], ex[key])
    flipped = T.hflip(ex)
    for key in ("image", "depth", "label"):
        np.testing.assert_array_equal(flipped[key], ex[key][:, ::-1])


def test_nearest_and_bilinear_resize_values():
    ex = _coord_example(4, 4)
    small = T.resize(ex, (2, 2))  # nearest takes source pixels floor((i + 0.5) * 2) = 1, 3
    np.testing.assert_array_equal(small["depth"], ex["depth"][[1, 3]][:, [1, 3]])
    np.testing.assert_array_equal(small["label"], ex["label"][[1, 3]][:, [1, 3]])
    # Bilinear at half-pixel centres: output i samples source coordinate 2 i + 0.5.
    np.testing.assert_allclose(small["image"][..., 0], [[0.5, 0.5], [2.5, 2.5]])
    big = T.resize(ex, (8, 8))  # source coordinate (i + 0.5) / 2 - 0.5, clamped at the border
    np.testing.assert_allclose(big["image"][0, :, 1], [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3])


def test_crop_pads_with_mean_colour_invalid_depth_and_void():
    ex = _coord_example(30, 40)
    out = T.crop(ex, offset=(-3, 35), size=(10, 10))
    assert out["depth"].shape == (10, 10) and out["image"].shape == (10, 10, 3)
    valid = _check_aligned(out)
    assert valid.sum() == 7 * 5  # rows 0..6 of the source, columns 35..39
    np.testing.assert_array_equal(out["depth"][3:, :5], ex["depth"][:7, 35:])
    assert (out["depth"][:3] == 0).all() and (out["label"][:, 5:] == 255).all()


@pytest.mark.parametrize("seed", range(6))
def test_random_scale_crop_flip_keeps_maps_aligned(seed):
    rng = np.random.default_rng(seed)
    ex = _coord_example()
    for _ in range(5):
        out = T.random_scale_crop_flip(ex, rng, crop_size=(36, 44), scale_range=(0.5, 2.5))
        assert out["image"].shape == (36, 44, 3) and out["label"].dtype == np.int32
        _check_aligned(out)


def test_sample_scale_crop_flip_covers_flips_and_stays_in_range():
    rng = np.random.default_rng(0)
    flips, scales = [], []
    for _ in range(200):
        a = T.sample_scale_crop_flip(rng, (30, 40), crop_size=(20, 20), scale_range=(0.75, 1.75))
        sh, sw = a["scaled_size"]
        oy, ox = a["offset"]
        assert 0 <= oy <= max(sh, 20) - 20 and 0 <= ox <= max(sw, 20) - 20
        flips.append(a["flip"])
        scales.append(sh / 30)
    assert 0.35 < np.mean(flips) < 0.65
    assert 0.74 < min(scales) < 0.85 and 1.65 < max(scales) < 1.76


def test_train_transform_aligned_normalised_and_depth_not_jittered():
    stored = _coord_example()
    stored["label"] = stored["label"] + 1  # stored 1..K
    stored["image"] = stored["image"].astype(np.uint8)
    rng = np.random.default_rng(1)
    for _ in range(5):
        out = T.train_transform(
            stored, rng, num_classes=K, crop_size=(32, 32), color_jitter_strength=0.0,
            include_raw_image=True,
        )  # fmt: skip
        assert out["image"].dtype == np.float32 and out["raw_image"].dtype == np.uint8
        unnormalised = (out["image"] * T.IMAGENET_STD + T.IMAGENET_MEAN) * 255
        _check_aligned(out | {"image": unnormalised})
    jittered = T.train_transform(
        stored, np.random.default_rng(2), num_classes=K, crop_size=(30, 40), scale_range=(1, 1),
        flip_prob=0.0, color_jitter_strength=0.4,
    )  # fmt: skip
    np.testing.assert_array_equal(jittered["depth"], stored["depth"])  # depth untouched
    assert not np.allclose(jittered["image"], T.normalize_image(stored["image"]))


def test_eval_transform_full_resolution():
    stored = scenes.make_example(0, "test", 0, 24, 32)
    out = T.eval_transform(stored, num_classes=K, include_raw_image=True)
    np.testing.assert_array_equal(out["raw_image"], stored["image"])
    np.testing.assert_array_equal(out["depth"], stored["depth"])
    np.testing.assert_array_equal(out["label"], T.map_labels(stored["label"], K))
    np.testing.assert_allclose(out["image"], T.normalize_image(stored["image"]))


# ------------------------------------------------------------------------------------------------
# grain pipelines (on in-memory examples; one test reads the TFDS build).


@pytest.fixture(scope="module")
def source():
    return [scenes.make_example(0, "train", i, 24, 32) for i in range(10)]


def _train(source, **kwargs):
    args = dict(batch_size=4, crop_size=(20, 24), num_classes=K, seed=3)
    args.update(kwargs)
    return ip.create_train_iterator(source, **args)


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_train_batch_shapes_dtypes_and_values(source):
    flat = next(_train(source, include_raw_image=True))
    assert flat["image"].shape == (4, 20, 24, 3) and flat["image"].dtype == np.float32
    assert flat["depth"].shape == (4, 20, 24) and flat["depth"].dtype == np.float32
    assert flat["label"].shape == (4, 20, 24) and flat["label"].dtype == np.int32
    assert flat["raw_image"].shape == (4, 20, 24, 3) and flat["raw_image"].dtype == np.uint8
    assert flat["index"].shape == (4,) and flat["index"].dtype == np.int32
    assert set(np.unique(flat["label"])) <= set(range(K)) | {255}
    pmap = next(_train(source, batch_size=8, num_devices=2))
    assert pmap["image"].shape == (2, 4, 20, 24, 3)
    assert pmap["label"].shape == (2, 4, 20, 24) and pmap["index"].shape == (2, 4)


def test_device_axis_is_a_reshape_of_the_flat_batch(source):
    flat = next(_train(source, batch_size=4))
    split = next(_train(source, batch_size=4, num_devices=2))
    for key in flat:
        np.testing.assert_array_equal(split[key].reshape(flat[key].shape), flat[key])


def test_epochs_cover_the_data_and_reshuffle(source):
    batches = _take(_train(source, batch_size=5), 4)  # 2 epochs of 10
    order = np.concatenate([b["index"] for b in batches])
    assert sorted(order[:10]) == list(range(10)) and sorted(order[10:]) == list(range(10))
    assert order[:10].tolist() != order[10:].tolist()
    assert order[:10].tolist() != list(range(10))


def test_resume_gives_the_same_batches(source):
    full = _take(_train(source), 7)
    resumed = _take(_train(source, start_step=4, num_threads=0), 3)
    for a, b in zip(full[4:], resumed, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    other_seed = next(_train(source, seed=4))
    assert not np.array_equal(other_seed["image"], full[0]["image"])


def test_process_shards_are_disjoint_and_reassemble_the_global_batch(source):
    single = _take(_train(source, batch_size=4), 5)
    procs = [_take(_train(source, batch_size=4, process_index=p, process_count=2), 5)
             for p in range(2)]  # fmt: skip
    for step in range(5):
        parts = [procs[p][step] for p in range(2)]
        assert parts[0]["image"].shape[0] == 2
        # Global stream positions 4s..4s+3: process p has positions p, p + 2.
        for key in single[step]:
            reassembled = np.stack([parts[0][key], parts[1][key]], 1).reshape(
                single[step][key].shape
            )
            np.testing.assert_array_equal(reassembled, single[step][key])
    first_epoch = [procs[p][s]["index"].tolist() for p in range(2) for s in range(2)]
    p0 = set(sum(first_epoch[:2], []))
    p1 = set(sum(first_epoch[2:], []))
    assert not p0 & p1


@pytest.mark.integration
def test_train_from_tfds_build_and_worker_processes(tmp_path):
    train_source = ip.load_data_source(
        "synthetic_rgbd/tiny", "train", data_dir=str(tmp_path), prepare=True
    )
    assert len(train_source) == 16
    in_process = _take(_train(train_source, crop_size=(32, 32)), 2)
    workers = ip.create_train_dataset(
        train_source, batch_size=4, crop_size=(32, 32), num_classes=K, seed=3, num_workers=1
    )
    it = iter(workers)
    try:
        from_worker = _take(it, 2)
    finally:
        it.close()
    for a, b in zip(in_process, from_worker, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize(
    "batch_size,num_devices,process_count",
    [(1, None, 1), (3, None, 1), (4, 2, 1), (4, 2, 2), (4, None, 4)],
)
def test_eval_sees_every_example_exactly_once(source, batch_size, num_devices, process_count):
    seen, num_batches = [], set()
    for p in range(process_count):
        ds = ip.create_eval_dataset(
            source, num_classes=K, batch_size=batch_size, num_devices=num_devices,
            process_index=p, process_count=process_count,
        )  # fmt: skip
        num_batches.add(len(ds))
        for batch in ds:
            lead = (batch_size // process_count,)
            if num_devices:
                lead = (num_devices, batch_size // process_count // num_devices)
            assert batch["index"].shape == lead and batch["image"].shape == lead + (24, 32, 3)
            index = batch["index"].reshape(-1)
            labels = batch["label"].reshape((-1, 24, 32))
            assert (labels[index < 0] == 255).all()  # padding examples are all void
            for i, lab in zip(index[index >= 0], labels[index >= 0], strict=True):
                np.testing.assert_array_equal(lab, T.map_labels(source[i]["label"], K))
            seen += index[index >= 0].tolist()
    assert sorted(seen) == list(range(len(source)))
    assert len(num_batches) == 1  # every process yields the same number of batches


def test_eval_pads_examples_of_different_sizes(source):
    mixed = [source[0], scenes.make_example(0, "test", 1, 20, 36)]
    (batch,) = list(ip.create_eval_dataset(mixed, num_classes=K, batch_size=2))
    assert batch["image"].shape == (2, 24, 36, 3)
    assert (batch["label"][0, :, 32:] == 255).all() and (batch["depth"][0, :, 32:] == 0).all()
    assert (batch["image"][0, :, 32:] == 0).all()  # mean colour, normalised
    assert (batch["label"][1, 20:] == 255).all()
    fixed = ip.create_eval_dataset(mixed, num_classes=K, batch_size=2, pad_to=(32, 40))
    assert len(fixed) == 1 and fixed[0]["label"].shape == (2, 32, 40)
    with pytest.raises(IndexError):
        fixed[1]
    with pytest.raises(ValueError, match="pad_to"):
        next(iter(ip.create_eval_dataset(mixed, num_classes=K, batch_size=2, pad_to=(16, 16))))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 5, "num_devices": 2}, "num_devices"),
        ({"batch_size": 3, "process_count": 2}, "process_count"),
        ({"process_index": 2, "process_count": 2}, "process_index"),
        ({"crop_size": (0, 24)}, "crop_size"),
        ({"crop_size": 24}, "crop_size"),
        ({"scale_range": (2.0, 1.0)}, "scale_range"),
        ({"seed": -1}, "seed"),
        ({"start_step": -1}, "start_step"),
        ({"flip_prob": 1.5}, "flip_prob"),
        ({"num_classes": 0}, "num_classes"),
        ({"num_workers": -1}, "num_workers"),
    ],
)
def test_bad_train_arguments(source, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _train(source, **kwargs)


def test_bad_sources_and_eval_arguments(source):
    with pytest.raises(ValueError, match="empty"):
        _train([])
    with pytest.raises(ValueError, match="data_source"):
        _train(iter(source))
    with pytest.raises(ValueError, match="pad_to"):
        ip.create_eval_dataset(source, num_classes=K, pad_to=(10,))
    with pytest.raises(ValueError, match="batch_size"):
        ip.create_eval_dataset(source, num_classes=K, batch_size=3, num_devices=2)
    with pytest.raises(ValueError, match="dataset"):
        ip.load_data_source("no_such_dataset/tiny", "train")


def test_steps_per_epoch():
    assert ip.steps_per_epoch(10, 4) == 3 and ip.steps_per_epoch(8, 4) == 2
    with pytest.raises(ValueError, match="batch_size"):
        ip.steps_per_epoch(8, 0)


def _corrupt_copy(data_dir, tmp_path, split):
    """A copy of the built tiny dataset whose ``split`` shard is cut to half its size."""
    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy)
    (shard,) = copy.rglob(f"synthetic_rgbd-{split}.array_record-*")
    os.truncate(shard, shard.stat().st_size // 2)
    return copy, shard


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_corrupt_shard_is_named_with_the_rebuild_command(data_dir, tmp_path, split):
    copy, shard = _corrupt_copy(data_dir, tmp_path, split)
    for name in ("train", "test"):
        source = ip.load_data_source("synthetic_rgbd/tiny", name, data_dir=str(copy))
        if name != split:
            ip.check_readable(source, dataset="synthetic_rgbd/tiny", data_dir=str(copy))
            continue
        with pytest.raises(ip.CorruptDataError) as info:
            ip.check_readable(source, dataset="synthetic_rgbd/tiny", data_dir=str(copy))
        message = str(info.value)
        assert str(shard) in message and "\n" not in message
        assert (
            f"python -m tfds_builders.build synthetic_rgbd --config tiny --data_dir {copy} "
            "--overwrite" in message
        )


def test_check_readable_of_a_plain_sequence(source):
    ip.check_readable(source, dataset="synthetic_rgbd/tiny", data_dir="/d")

    class Broken(list):
        def __getitem__(self, i):
            raise RuntimeError("Corrupted Riegeli/records file")

    with pytest.raises(ip.CorruptDataError, match="record 0 .*Corrupted Riegeli"):
        ip.check_readable(Broken(source), dataset="synthetic_rgbd/tiny", data_dir="/d")
