"""NYUv2 builder: built from fixtures in the official .mat layout, checked against real data.

The labeled .mat fixture is written with h5py exactly as MATLAB v7.3 stores it (see
``tfds_builders.nyuv2.testing``); frame #1 carries the real RGB / depth of ``nyuv2_sample`` and
a raw 894-class label that maps to the real 40-class label. Real files are read from the shared
data folder (``shared_data`` skips when absent) and never copied into the repository.
"""

import json
import pathlib

import h5py
import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from tfds_builders import _common, nyuv2
from tfds_builders._common import InvalidFileError, InvalidFrameError, MissingFilesError
from tfds_builders.nyuv2 import nyuv2_dataset_builder as nyu
from tfds_builders.nyuv2 import testing

META_FILES = ("splits.mat", "classMapping40.mat", "class13Mapping.mat")


def _png(path: pathlib.Path) -> np.ndarray:
    return np.asarray(PIL.Image.open(path))


def _label40(shared: pathlib.Path, k: int) -> np.ndarray:
    return _png(shared / f"nyuv2_test_labels/test_labels_40/new_nyu_class40_{k:04d}.png")


def _label13(shared: pathlib.Path, k: int) -> np.ndarray:
    return _png(shared / f"nyuv2_test_labels/test_labels_13/new_nyu_class13_{k:04d}.png")


def _names_file(shared: pathlib.Path, num_classes: int) -> list[str]:
    """Names of labels 1..K from ``class_names_<K>.txt`` (``index<TAB>name``, 0 = void)."""
    lines = (shared / "nyuv2_meta" / f"class_names_{num_classes}.txt").read_text().splitlines()
    rows = [line.split("\t", 1) for line in lines]
    assert [int(i) for i, _ in rows] == list(range(num_classes + 1)) and rows[0][1] == "void"
    return [name for _, name in rows[1:]]


def _check_class_names(info, expected: list[str]) -> None:
    meta = info.metadata
    assert meta["class_names"] == expected
    assert len(meta["class_names"]) == meta["num_classes"] == len(expected)
    assert meta["void_label"] == 0


def _link_meta(shared: pathlib.Path, manual: pathlib.Path, names=META_FILES) -> None:
    for name in names:
        (manual / name).symlink_to(shared / "nyuv2_meta" / name)


def _build(name_config: str, data_dir, manual_dir, **download_kwargs):
    builder = nyuv2.Builder(config=name_config, data_dir=str(data_dir))
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(
            manual_dir=str(manual_dir) if manual_dir else None, **download_kwargs
        ),
    )
    return builder


def _by_index(source) -> dict[int, dict]:
    return {int(ex["index"]): ex for ex in source}


@pytest.fixture(scope="module")
def real(shared_data):
    sample = shared_data / "nyuv2_sample" / "NYUDepthv2"
    map40 = nyu.load_map_894_to_40(shared_data / "nyuv2_meta" / "classMapping40.mat")
    return {
        "rgb": _png(sample / "RGB" / "0.jpg"),
        "depth": np.load(sample / "Depth" / "0.npy"),
        "label40": _png(sample / "Label" / "0.png"),
        "map40": map40,
        "map13": nyu.load_map_40_to_13(shared_data / "nyuv2_meta" / "class13Mapping.mat"),
    }


@pytest.fixture(scope="module")
def real_split_manual(shared_data, real, tmp_path_factory):
    """1449-frame labeled .mat in the official layout + the real splits and class maps.

    Frames #1, #2, #9 (the first three test frames) are written: #1 is the real frame, #2 and
    #9 reuse its RGB-D (flipped) with their own real labels; all other frames stay blank (HDF5
    fill value, not stored).
    """
    manual = tmp_path_factory.mktemp("nyu_real_split")
    raw_depth = np.where(real["depth"] > 2.5, 0, real["depth"]).astype(np.float32)
    frames = {
        1: {
            "image": real["rgb"],
            "depth": real["depth"],
            "raw_depth": raw_depth,
            "label": testing.raw_labels_from_40(real["label40"], real["map40"]),
            "scene": "bedroom_0001",
            "scene_type": "bedroom",
        }
    }
    for k in (2, 9):
        frames[k] = {
            "image": real["rgb"][:, ::-1],
            "depth": real["depth"][:, ::-1],
            "raw_depth": raw_depth[:, ::-1],
            "label": testing.raw_labels_from_40(_label40(shared_data, k), real["map40"]),
            "scene": f"kitchen_{k:04d}",
            "scene_type": "kitchen",
        }
    testing.write_labeled_mat(
        manual / nyu.LABELED_MAT, 1449, frames, class_names=_names_file(shared_data, 894)
    )
    _link_meta(shared_data, manual)
    return manual, frames


def _small_frames(num_frames, height=24, width=32, seed=0):
    rng = np.random.default_rng(seed)
    return {
        k: {
            "image": rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
            "depth": rng.uniform(0.5, 9.0, (height, width)).astype(np.float32),
            "raw_depth": rng.uniform(0.0, 9.0, (height, width)).astype(np.float32),
            "label": rng.integers(0, 895, (height, width)).astype(np.uint16),
            "scene": f"office_{k:04d}",
            "scene_type": "office",
        }
        for k in range(1, num_frames + 1)
    }


def _small_manual(root, shared, frames, train, test, *, height=24, width=32, meta=META_FILES):
    root.mkdir(parents=True, exist_ok=True)
    testing.write_labeled_mat(
        root / nyu.LABELED_MAT, len(frames), frames, height=height, width=width
    )
    testing.write_splits_mat(root / "splits.mat", train, test)
    _link_meta(shared, root, [m for m in meta if m != "splits.mat"])
    return root


# ----------------------------------------------------------------------------- real meta files


def test_real_splits_are_795_654(shared_data):
    splits = nyu.load_splits(shared_data / "nyuv2_meta" / "splits.mat")
    assert len(splits["train"]) == nyu.NUM_TRAIN == 795
    assert len(splits["test"]) == nyu.NUM_TEST == 654
    union = np.union1d(splits["train"], splits["test"])
    np.testing.assert_array_equal(union, np.arange(1, 1450))
    listed = np.loadtxt(shared_data / "nyuv2_meta" / "test_indices_1based.txt", dtype=np.int64)
    np.testing.assert_array_equal(splits["test"], listed)


def test_real_class_maps(shared_data, real):
    text40 = np.loadtxt(shared_data / "nyuv2_meta" / "map_894_to_40.txt", dtype=np.int64)
    text13 = np.loadtxt(shared_data / "nyuv2_meta" / "map_40_to_13.txt", dtype=np.int64)
    np.testing.assert_array_equal(real["map40"], text40[:, 1])
    np.testing.assert_array_equal(real["map13"], text13[:, 1])
    assert real["map40"][0] == 0 and real["map13"][0] == 0


@pytest.mark.parametrize("num_classes", [40, 13])
def test_class_names_match_the_real_files(num_classes, shared_data):
    meta = shared_data / "nyuv2_meta"
    expected = _names_file(shared_data, num_classes)
    names = {40: nyuv2.CLASS_NAMES_40, 13: nyuv2.CLASS_NAMES_13}[num_classes]
    assert isinstance(names, tuple) and names == nyu.class_names(num_classes)
    assert list(names) == expected and len(names) == num_classes
    if num_classes == 40:
        in_mat = _common.load_mat_v5(meta / "classMapping40.mat", ["className"])["className"]
    else:
        struct = _common.load_mat_v5(meta / "class13Mapping.mat", ["classMapping13"])
        in_mat = struct["classMapping13"].classNames
    assert [str(n) for n in in_mat] == expected
    assert nyu.class_names(894) is None


def test_40_to_13_matches_real_test_labels(shared_data, real):
    """The 40 -> 13 map of the builder reproduces the real 13-class labels (every 6th frame)."""
    test = nyu.load_splits(shared_data / "nyuv2_meta" / "splits.mat")["test"]
    for k in test[::6]:
        np.testing.assert_array_equal(
            real["map13"][_label40(shared_data, k)], _label13(shared_data, k), err_msg=f"#{k}"
        )


# ----------------------------------------------------------------------------- builds


def test_fixture_is_official_layout(real_split_manual):
    manual, _ = real_split_manual
    path = manual / nyu.LABELED_MAT
    assert path.read_bytes()[:19] == b"MATLAB 7.3 MAT-file"
    with h5py.File(path, "r") as f:
        assert f["images"].shape == (1449, 3, 640, 480) and f["images"].dtype == np.uint8
        assert f["depths"].shape == (1449, 640, 480) and f["depths"].dtype == np.float32
        assert f["rawDepths"].dtype == np.float32
        assert f["labels"].shape == (1449, 640, 480) and f["labels"].dtype == np.uint16
        assert f["sceneTypes"].shape == (1, 1449) and f["sceneTypes"].dtype == h5py.ref_dtype
        ref = f["scenes"][0][0]
        assert f[ref].dtype == np.uint16 and f[ref].attrs["MATLAB_class"] == b"char"
        assert "".join(chr(c) for c in f[ref][:].ravel()) == "bedroom_0001"


@pytest.mark.parametrize("config", ["40", "13", "894"])
def test_build_with_real_split_and_maps(config, real_split_manual, shared_data, real, tmp_path):
    manual, frames = real_split_manual
    builder = _build(config, tmp_path, manual, max_examples_per_split=3)
    assert builder.is_prepared()
    source = tfds.data_source(f"nyuv2/{config}", data_dir=str(tmp_path))
    assert len(source["test"]) == len(source["train"]) == 3
    test = _by_index(source["test"])
    assert sorted(test) == [1, 2, 9]  # testNdxs[:3] of the real splits.mat
    train_first = nyu.load_splits(shared_data / "nyuv2_meta" / "splits.mat")["train"][:3]
    assert sorted(_by_index(source["train"])) == sorted(train_first.tolist())

    ex = test[1]
    np.testing.assert_array_equal(ex["image"], real["rgb"])
    assert ex["depth"].dtype == np.float32
    np.testing.assert_array_equal(ex["depth"], real["depth"])
    np.testing.assert_array_equal(ex["raw_depth"], frames[1]["raw_depth"])
    assert ex["scene"] == b"bedroom_0001" and ex["scene_type"] == b"bedroom"
    for k in (1, 2, 9):
        label = test[k]["label"]
        if config == "40":
            assert label.dtype == np.uint8
            np.testing.assert_array_equal(label, _label40(shared_data, k))
        elif config == "13":
            assert label.dtype == np.uint8
            np.testing.assert_array_equal(label, _label13(shared_data, k))
        else:
            assert label.dtype == np.uint16
            np.testing.assert_array_equal(label, frames[k]["label"])
    assert builder.info.features["label"].np_dtype == (np.uint16 if config == "894" else np.uint8)
    # Class names: in the builder's info and, read back from disk, in the data source's.
    expected = _names_file(shared_data, int(config))
    _check_class_names(builder.info, expected)
    _check_class_names(source["test"].dataset_info, expected)
    saved = json.loads((pathlib.Path(builder.data_dir) / "metadata.json").read_text())
    assert saved["class_names"] == expected


def test_full_splits_and_as_data_source(shared_data, tmp_path):
    frames = _small_frames(6)
    manual = _small_manual(tmp_path / "manual", shared_data, frames, [2, 4, 5, 6], [3, 1])
    builder = _build("40", tmp_path / "data", manual)
    assert builder.info.splits["train"].num_examples == 4
    assert builder.info.splits["test"].num_examples == 2
    source = builder.as_data_source()
    assert sorted(_by_index(source["train"])) == [2, 4, 5, 6]
    map40 = nyu.load_map_894_to_40(shared_data / "nyuv2_meta" / "classMapping40.mat")
    for k, ex in _by_index(source["test"]).items():
        np.testing.assert_array_equal(ex["image"], frames[k]["image"])
        np.testing.assert_array_equal(ex["depth"], frames[k]["depth"])
        np.testing.assert_array_equal(ex["raw_depth"], frames[k]["raw_depth"])
        np.testing.assert_array_equal(ex["label"], map40[frames[k]["label"]])
        assert ex["scene"] == f"office_{k:04d}".encode()


def test_config_894_needs_no_class_maps(shared_data, tmp_path):
    frames = _small_frames(3)
    manual = _small_manual(tmp_path / "m", shared_data, frames, [1], [2, 3], meta=())
    source = _build("894", tmp_path / "d", manual).as_data_source()
    np.testing.assert_array_equal(source["train"][0]["label"], frames[1]["label"])
    # The fixture's `names` cell (placeholders) were saved with the dataset: a new builder on
    # the built data_dir, which never opens the .mat, reads them back.
    placeholders = [f"class{c}" for c in range(1, 895)]
    _check_class_names(source["train"].dataset_info, placeholders)
    _check_class_names(nyuv2.Builder(config="894", data_dir=str(tmp_path / "d")).info, placeholders)


def test_894_names_cell_missing_or_wrong(shared_data, tmp_path):
    manual = _small_manual(tmp_path / "m", shared_data, _small_frames(3), [1], [2, 3], meta=())
    with h5py.File(manual / nyu.LABELED_MAT, "r+") as f:
        refs = f["names"][:, :5]
        del f["names"]
        f.create_dataset("names", data=refs, dtype=h5py.ref_dtype)
    with pytest.raises(InvalidFileError, match=r"`names` holds 5 class names, expected 894"):
        _build("894", tmp_path / "d", manual)
    with h5py.File(manual / nyu.LABELED_MAT, "r+") as f:
        del f["names"]
    with pytest.raises(InvalidFileError, match=r"no `names` cell"):
        _build("894", tmp_path / "d", manual)
    assert not nyuv2.Builder(config="894", data_dir=str(tmp_path / "d")).is_prepared()
    # Configs 40 / 13 take their names from the code and never read the cell.
    _link_meta(shared_data, manual, ["classMapping40.mat"])
    _check_class_names(_build("40", tmp_path / "d", manual).info, list(nyuv2.CLASS_NAMES_40))


def test_train_reads_the_13_class_names_of_a_built_source(shared_data, tmp_path):
    from drd_jax import input_pipeline

    frames = _small_frames(3)
    manual = _small_manual(tmp_path / "m", shared_data, frames, [1, 3], [2])
    _build("13", tmp_path / "d", manual)
    source = input_pipeline.load_data_source("nyuv2/13", "train", data_dir=str(tmp_path / "d"))
    assert len(source) == 2
    names = input_pipeline.dataset_class_names("nyuv2/13", source)
    assert names == list(nyuv2.CLASS_NAMES_13) == _names_file(shared_data, 13)


def test_build_reads_one_frame_at_a_time(shared_data, tmp_path, monkeypatch):
    """No h5py read ever returns more than one frame's worth of elements."""
    height, width, n = 24, 32, 8
    frames = _small_frames(n, height, width)
    manual = _small_manual(tmp_path / "m", shared_data, frames, [1, 3, 5, 7], [2, 4, 6, 8])
    largest = []
    original = h5py.Dataset.__getitem__

    def recording_getitem(self, args, *rest, **kwargs):
        out = original(self, args, *rest, **kwargs)
        largest.append((np.size(out), self.name))
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", recording_getitem)
    _build("40", tmp_path / "d", manual)
    monkeypatch.undo()
    big = [(size, name) for size, name in largest if name in ("/images", "/depths", "/labels")]
    assert len(big) >= 3 * n  # every frame of every big array read
    assert max(size for size, _ in largest) <= max(3 * height * width, n)


# ----------------------------------------------------------------------------- bad input


def test_missing_files_are_listed_with_sources(shared_data, tmp_path):
    manual = tmp_path / "m"
    manual.mkdir()
    testing.write_labeled_mat(manual / nyu.LABELED_MAT, 2, _small_frames(2), height=24, width=32)
    with pytest.raises(MissingFilesError) as err:
        _build("13", tmp_path / "d", manual)
    text = str(err.value)
    for name in ("splits.mat", "classMapping40.mat", "class13Mapping.mat"):
        assert name in text
    assert nyu.LABELED_MAT not in text.split("Download instructions")[0]
    assert "horatio.cs.nyu.edu" in text and "ankurhanda/nyuv2-meta-data" in text
    assert not nyuv2.Builder(config="13", data_dir=str(tmp_path / "d")).is_prepared()


def test_no_manual_dir_lists_every_file(tmp_path):
    with pytest.raises(MissingFilesError) as err:
        _build("40", tmp_path / "d", None)
    text = str(err.value)
    for name in (nyu.LABELED_MAT, "splits.mat", "classMapping40.mat"):
        assert name in text
    assert "--manual_dir" in text


def test_truncated_labeled_mat_names_the_file(shared_data, tmp_path):
    manual = _small_manual(tmp_path / "m", shared_data, _small_frames(3), [1], [2, 3])
    path = manual / nyu.LABELED_MAT
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidFileError, match=nyu.LABELED_MAT) as err:
        _build("40", tmp_path / "d", manual)
    assert "truncated" in str(err.value)


def test_v5_file_in_place_of_labeled_mat(shared_data, tmp_path):
    manual = _small_manual(tmp_path / "m", shared_data, _small_frames(3), [1], [2, 3])
    (manual / nyu.LABELED_MAT).write_bytes((shared_data / "nyuv2_meta/splits.mat").read_bytes())
    with pytest.raises(InvalidFileError, match="not a MATLAB v7.3"):
        _build("40", tmp_path / "d", manual)


@pytest.mark.parametrize("content", ["garbage", "wrong_variables", "truncated"])
def test_bad_splits_mat_names_the_file(content, shared_data, tmp_path):
    manual = _small_manual(tmp_path / "m", shared_data, _small_frames(3), [1], [2, 3])
    splits = manual / "splits.mat"
    if content == "garbage":
        splits.write_bytes(b"<html>404 Not Found</html>")
    elif content == "wrong_variables":
        testing._common.write_mat_v5(splits, {"trainIdx": np.arange(3)})
    else:
        real = (shared_data / "nyuv2_meta" / "splits.mat").read_bytes()
        splits.write_bytes(real[:300])
    with pytest.raises(InvalidFileError, match="splits.mat"):
        _build("40", tmp_path / "d", manual)


def test_split_index_beyond_the_file(shared_data, tmp_path):
    manual = _small_manual(tmp_path / "m", shared_data, _small_frames(3), [1, 4], [2, 3])
    with pytest.raises(InvalidFileError, match="beyond the 3 frames"):
        _build("40", tmp_path / "d", manual)


def test_size_mismatch_names_the_frame(shared_data, tmp_path):
    manual = _small_manual(tmp_path / "m", shared_data, _small_frames(3), [1], [2, 3])
    with h5py.File(manual / nyu.LABELED_MAT, "r+") as f:
        del f["labels"]
        f.create_dataset("labels", data=np.zeros((3, 32, 20), np.uint16))
    with pytest.raises(InvalidFrameError, match=r"frame #\d: sizes differ.*label 20x32"):
        _build("40", tmp_path / "d", manual)


def test_failed_build_is_not_prepared_and_a_fixed_build_works(shared_data, tmp_path):
    frames = _small_frames(4)
    frames[3]["label"][5, 7] = 900  # not a raw NYUv2 class
    manual = _small_manual(tmp_path / "m", shared_data, frames, [1, 2], [3, 4])
    data_dir = tmp_path / "data"
    with pytest.raises(InvalidFrameError, match=r"frame #3: 1 pixels have labels outside 0..894"):
        _build("40", data_dir, manual)
    assert not nyuv2.Builder(config="40", data_dir=str(data_dir)).is_prepared()
    with pytest.raises(Exception):  # noqa: B017 - whatever TFDS raises, it must not read
        tfds.data_source("nyuv2/40", data_dir=str(data_dir))
    assert not list(data_dir.rglob("*.array_record*"))

    frames[3]["label"][5, 7] = 894
    _small_manual(tmp_path / "m2", shared_data, frames, [1, 2], [3, 4])
    builder = _build("40", data_dir, tmp_path / "m2")
    assert builder.is_prepared()
    source = tfds.data_source("nyuv2/40", data_dir=str(data_dir))
    assert len(source["train"]) == 2 and len(source["test"]) == 2


def test_split_above_the_shuffle_buffer_builds_without_tensorflow(
    shared_data, tmp_path, monkeypatch
):
    """TFDS spills a split bigger than its in-memory buffer to bucket files through tf.io.gfile;
    with a 1-byte buffer every example is spilled, and the result equals an unspilled build."""
    from tensorflow_datasets.core import shuffle

    from tfds_builders import _common

    frames = _small_frames(6)
    manual = _small_manual(tmp_path / "m", shared_data, frames, [1, 3, 4, 6], [2, 5])
    reference = _build("40", tmp_path / "in_memory", manual).as_data_source()
    monkeypatch.setattr(_common, "SHUFFLE_BUFFER_BYTES", 1)
    spilled_buckets = []
    original_add = shuffle._Bucket.add

    def recording_add(self, key, data):
        spilled_buckets.append(self._path)
        return original_add(self, key, data)

    monkeypatch.setattr(shuffle._Bucket, "add", recording_add)
    original_tf = shuffle.__dict__["tf"]
    spilled = _build("40", tmp_path / "spilled", manual).as_data_source()
    assert len(spilled_buckets) == 6  # every example went through a bucket file
    assert shuffle.__dict__["tf"] is original_tf and shuffle.MAX_MEM_BUFFER_SIZE == 1000 << 20
    for split in ("train", "test"):
        assert len(spilled[split]) == len(reference[split])
        for a, b in zip(spilled[split], reference[split], strict=True):
            assert a["index"] == b["index"]
            np.testing.assert_array_equal(a["label"], b["label"])
            np.testing.assert_array_equal(a["depth"], b["depth"])
