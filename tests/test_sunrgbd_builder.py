"""SUN RGB-D builder: built from a fixture zip + toolbox in the official layout.

The fixture uses the six real SUN RGB-D RGB / depth PNG pairs of ``sunrgbd_unlabeled_samples``
(Kinect v2, 530x730), cropped to the frame size of each sensor (kv1 427x561, realsense 441x681,
xtion 480x640); labels are synthetic (the real samples have none). Real split files are read
from the shared data folder; nothing is copied into the repository.
"""

import io
import json
import pathlib
import shutil

import h5py
import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from tfds_builders import nyuv2, sunrgbd
from tfds_builders._common import InvalidFileError, InvalidFrameError, MissingFilesError
from tfds_builders.sunrgbd import sunrgbd_dataset_builder as sun
from tfds_builders.sunrgbd import testing

SAMPLES = [("train", "0001", "000001"), ("train", "0002", "000002"), ("train", "0003", "000003")]
SAMPLES += [("val", "2839", "002839"), ("val", "2840", "002840"), ("val", "2841", "002841")]

# (scene relative to SUNRGBD/, frame size); one per sensor group, sizes as in SUN RGB-D.
SCENES = [
    ("kv2/kinect2data/000065_2014-05-16_20-14-38_260595134347_rgbf000121-resize", (530, 730)),
    ("kv1/NYUdata/NYU0003", (427, 561)),
    ("realsense/lg/2014_10_24-15_02_52-1311000073", (441, 681)),
    ("xtion/sun3ddata/mit_76_studyroom/76-1studyroom2/0002111-000070763319", (480, 640)),
    ("kv2/align_kv2/2014-12-01_16-01-57_260595134347_rgbf000140-resize", (530, 730)),
    ("kv1/b3dodata/img_0063", (427, 561)),
]
TRAIN = [0, 1, 3]  # positions in SCENES
TEST = [2, 5]
UNUSED = 4  # in SUNRGBDMeta but in neither split


def _toolbox_depth(encoded: np.ndarray) -> np.ndarray:
    """read3dPoints.m, computed independently of the builder (int64 with an explicit 16-bit mask
    instead of uint16 wrap-around): bitor(bitshift(d,-3), bitshift(d,16-3)), /1000, >8 -> 8."""
    v = np.asarray(encoded).astype(np.int64)
    mm = ((v >> 3) | (v << 13)) & 0xFFFF
    return np.where(mm > 8000, 8.0, mm / 1000.0).astype(np.float32)


def _label(shape, seed):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 38, size=(shape[0] // 16 + 1, shape[1] // 16 + 1))
    return np.kron(label, np.ones((16, 16), np.int64))[: shape[0], : shape[1]]


@pytest.fixture(scope="module")
def scenes(shared_data):
    root = shared_data / "sunrgbd_unlabeled_samples" / "SUNRGBD"
    out = []
    for k, ((scene, (h, w)), (split, color, depth)) in enumerate(
        zip(SCENES, SAMPLES, strict=True), start=1
    ):
        rgb = np.asarray(PIL.Image.open(root / split / "color" / f"{color}.png"))[:h, :w]
        buffer = io.BytesIO()
        PIL.Image.fromarray(rgb).save(buffer, format="JPEG", quality=95)
        out.append(
            {
                "scene": scene,
                "image": buffer.getvalue(),
                "depth": np.asarray(PIL.Image.open(root / f"{split}_depth_raw" / f"{depth}.png"))[
                    :h, :w
                ],
                "depth_bfx": np.asarray(PIL.Image.open(root / f"{split}_depth" / f"{depth}.png"))[
                    :h, :w
                ],
                "label": _label((h, w), k),
                "rgb_name": f"{k:07d}.jpg",
                "depth_name": f"{k:07d}.png",
            }
        )
    return out


def _split_paths(positions, *, odd=False):
    """Official-looking allsplit paths; ``odd`` adds the quirks of the real file ('//', '/')."""
    paths = [testing.OFFICIAL_PREFIX + SCENES[p][0] for p in positions]
    if odd:
        paths[0] = paths[0] + "/"
        paths[-1] = paths[-1].replace("SUNRGBD/", "SUNRGBD//", 1).replace("/lg/", "//lg/")
    return paths


def _write(root, scenes, **kwargs):
    kwargs.setdefault("train", _split_paths(TRAIN, odd=True))
    kwargs.setdefault("test", _split_paths(TEST, odd=True))
    return testing.write_sunrgbd(root, scenes, **kwargs)


def _build(config, data_dir, manual_dir):
    builder = sunrgbd.Builder(config=config, data_dir=str(data_dir))
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)),
    )
    return builder


def _write_two(root, scenes, **kwargs):
    """A two-frame fixture (kv2 train, kv1 test) for the bad-input tests."""
    kwargs.setdefault("train", _split_paths([0]))
    kwargs.setdefault("test", _split_paths([1]))
    return testing.write_sunrgbd(root, scenes[:2], **kwargs)


@pytest.fixture(scope="module")
def zip_manual(scenes, tmp_path_factory):
    root = tmp_path_factory.mktemp("sun_zip")
    _write(root, scenes)
    return root


def _check_examples(source, scenes, depth_key):
    for split, positions in (("train", TRAIN), ("test", TEST)):
        examples = {int(ex["index"]): ex for ex in source[split]}
        assert sorted(examples) == sorted(p + 1 for p in positions)
        for p in positions:
            ex, scene = examples[p + 1], scenes[p]
            h, w = SCENES[p][1]
            expected_rgb = np.asarray(PIL.Image.open(io.BytesIO(scene["image"])).convert("RGB"))
            np.testing.assert_array_equal(ex["image"], expected_rgb)
            assert ex["depth"].shape == (h, w) and ex["depth"].dtype == np.float32
            np.testing.assert_array_equal(ex["depth"], _toolbox_depth(scene[depth_key]))
            assert ex["label"].dtype == np.uint8
            np.testing.assert_array_equal(ex["label"], scene["label"])
            assert ex["scene"] == SCENES[p][0].encode()
            assert ex["sensor"] == SCENES[p][0].split("/")[0].encode()


def _seg37_names(shared: pathlib.Path) -> list[str]:
    """Names of labels 1..37 from ``seg37_class_names.txt`` (``index<TAB>name``, 0 = void)."""
    lines = (shared / "sunrgbd_meta" / "seg37_class_names.txt").read_text().splitlines()
    rows = [line.split("\t", 1) for line in lines]
    assert [int(i) for i, _ in rows] == list(range(38)) and rows[0][1] == "void"
    return [name for _, name in rows[1:]]


def _check_class_names(info, expected):
    meta = info.metadata
    assert meta["class_names"] == expected
    assert len(meta["class_names"]) == meta["num_classes"] == sun.NUM_CLASSES == 37
    assert meta["void_label"] == 0


def test_class_names_match_the_real_seg37_list(shared_data):
    assert isinstance(sunrgbd.CLASS_NAMES, tuple) and sunrgbd.CLASS_NAMES is sun.CLASS_NAMES
    assert list(sunrgbd.CLASS_NAMES) == _seg37_names(shared_data)
    assert len(sunrgbd.CLASS_NAMES) == sunrgbd.NUM_CLASSES == 37
    # They are NYUv2 40-class labels 1..37, spelled differently for five of them.
    renamed = {"refridgerator": "fridge", "television": "tv"}
    nyu37 = [renamed.get(n, n.replace(" ", "_")) for n in nyuv2.CLASS_NAMES_40[:37]]
    assert list(sunrgbd.CLASS_NAMES) == nyu37


@pytest.mark.parametrize("config,depth_key", [("bfx", "depth_bfx"), ("raw", "depth")])
def test_build_from_zip(config, depth_key, zip_manual, scenes, shared_data, tmp_path):
    builder = _build(config, tmp_path, zip_manual)
    assert builder.info.splits["train"].num_examples == len(TRAIN)
    assert builder.info.splits["test"].num_examples == len(TEST)
    source = tfds.data_source(f"sunrgbd/{config}", data_dir=str(tmp_path))
    _check_examples(source, scenes, depth_key)
    expected = _seg37_names(shared_data)
    _check_class_names(builder.info, expected)
    _check_class_names(source["train"].dataset_info, expected)
    saved = json.loads((pathlib.Path(builder.data_dir) / "metadata.json").read_text())
    assert saved["class_names"] == expected
    depth = np.concatenate([ex["depth"].ravel() for ex in source["train"]])
    valid = depth[depth > 0]
    assert valid.min() >= 0.8 and valid.max() == 8.0  # the real maps reach the 8 m clamp
    assert 1.0 <= np.median(valid) <= 8.0
    if config == "raw":
        assert (depth == 0).any()  # raw holes stay 0
    else:
        assert not (depth == 0).any()


def test_build_from_extracted_folder(scenes, tmp_path):
    _write(tmp_path / "manual", scenes, as_zip=False, label_dtype=np.float64)
    assert (tmp_path / "manual" / "SUNRGBD" / "kv1" / "NYUdata" / "NYU0003" / "image").is_dir()
    source = _build("bfx", tmp_path / "data", tmp_path / "manual").as_data_source()
    _check_examples(source, scenes, "depth_bfx")


def test_zip_without_sunrgbd_root_folder(scenes, tmp_path):
    _write(
        tmp_path / "manual",
        scenes[:4],
        zip_root="",
        train=_split_paths([0, 1]),
        test=_split_paths([2, 3]),
    )
    source = _build("bfx", tmp_path / "data", tmp_path / "manual").as_data_source()
    assert len(source["train"]) == 2 and len(source["test"]) == 2


def test_depth_decoding_of_real_pngs(shared_data):
    root = shared_data / "sunrgbd_unlabeled_samples" / "SUNRGBD"
    pngs = sorted(root.glob("*_depth*/*.png"))
    assert len(pngs) == 12
    for path in pngs:
        encoded = np.asarray(PIL.Image.open(path))
        assert encoded.dtype == np.uint16 and not (encoded & 7).any()
        decoded = sun.decode_depth(encoded)
        assert decoded.dtype == np.float32 and decoded.shape == encoded.shape
        np.testing.assert_array_equal(decoded, _toolbox_depth(encoded))
        valid = decoded[decoded > 0]
        assert valid.min() >= 0.8 and valid.max() <= 8.0
        assert np.array_equal(decoded == 0, encoded == 0)
    mm = np.array([0, 1, 1000, 8000, 8001, 65535], np.uint16)
    np.testing.assert_array_equal(
        sun.decode_depth(testing.encode_depth(mm)), np.float32([0, 0.001, 1.0, 8.0, 8.0, 8.0])
    )


def test_normalise_path():
    norm = sun.normalise_path
    assert norm("/n/fs/sun3d/data/SUNRGBD/kv1/NYUdata/NYU0003/") == "kv1/NYUdata/NYU0003"
    assert norm("/data1/SUNRGBD//kv2/kinect2data/x-resize") == "kv2/kinect2data/x-resize"
    assert norm("SUNRGBD/kv2/align_kv2/a/image/0001.jpg") == "kv2/align_kv2/a/image/0001.jpg"
    assert norm("kv1/b3dodata/img_0063") == "kv1/b3dodata/img_0063"


def test_real_allsplit(shared_data):
    meta = shared_data / "sunrgbd_meta"
    split = sun.load_split(meta / "allsplit.mat")
    assert len(split["train"]) == sun.NUM_TRAIN == 5285
    assert len(split["test"]) == sun.NUM_TEST == 5050
    assert split["train"] == (meta / "train_scenes.txt").read_text().split()
    assert split["test"] == (meta / "test_scenes.txt").read_text().split()
    nyu_test = np.loadtxt(shared_data / "nyuv2_meta" / "test_indices_1based.txt", dtype=int)
    in_test = sorted(int(s[-4:]) for s in split["test"] if s.startswith("kv1/NYUdata/"))
    assert in_test == sorted(nyu_test.tolist())


# ----------------------------------------------------------------------------- bad input


def test_missing_toolbox_file(zip_manual, tmp_path):
    manual = tmp_path / "m"
    shutil.copytree(zip_manual, manual)
    (manual / "SUNRGBDtoolbox" / "Metadata" / "SUNRGBD2Dseg.mat").unlink()
    (manual / "SUNRGBD.zip").unlink()
    with pytest.raises(MissingFilesError) as err:
        _build("bfx", tmp_path / "d", manual)
    text = str(err.value).split("Download instructions")[0]
    assert "SUNRGBD2Dseg.mat" in text and "SUNRGBD.zip" in text
    assert "SUNRGBDMeta.mat" not in text
    assert "rgbd.cs.princeton.edu/data/SUNRGBDtoolbox.zip" in text


def test_truncated_zip_names_the_file(zip_manual, tmp_path):
    manual = tmp_path / "m"
    shutil.copytree(zip_manual, manual)
    data = (manual / "SUNRGBD.zip").read_bytes()
    (manual / "SUNRGBD.zip").write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidFileError, match=r"SUNRGBD\.zip.*truncated"):
        _build("bfx", tmp_path / "d", manual)


def test_truncated_seg_mat_names_the_file(zip_manual, tmp_path):
    manual = tmp_path / "m"
    shutil.copytree(zip_manual, manual)
    seg = manual / "SUNRGBDtoolbox" / "Metadata" / "SUNRGBD2Dseg.mat"
    seg.write_bytes(seg.read_bytes()[:3000])
    with pytest.raises(InvalidFileError, match="SUNRGBD2Dseg.mat"):
        _build("bfx", tmp_path / "d", manual)


def test_split_scene_missing_from_meta(scenes, tmp_path):
    train = _split_paths([0]) + [testing.OFFICIAL_PREFIX + "kv1/NYUdata/NYU9999"]
    _write_two(tmp_path / "m", scenes, train=train)
    with pytest.raises(InvalidFileError, match=r"allsplit.mat: 1 train scene.*NYU9999"):
        _build("bfx", tmp_path / "d", tmp_path / "m")


def test_label_out_of_range_names_the_frame_and_rebuild_works(scenes, tmp_path):
    bad = [dict(s) for s in scenes[:2]]
    bad[1]["label"] = bad[1]["label"].copy()
    bad[1]["label"][0, 0] = 38
    _write_two(tmp_path / "m", bad)
    data_dir = tmp_path / "data"
    with pytest.raises(InvalidFrameError, match=r"frame #2 \(kv1/NYUdata/NYU0003\).*outside 0..37"):
        _build("bfx", data_dir, tmp_path / "m")
    assert not sunrgbd.Builder(config="bfx", data_dir=str(data_dir)).is_prepared()
    with pytest.raises(Exception):  # noqa: B017 - whatever TFDS raises, it must not read
        tfds.data_source("sunrgbd/bfx", data_dir=str(data_dir))

    _write_two(tmp_path / "m2", scenes)
    assert _build("bfx", data_dir, tmp_path / "m2").is_prepared()
    assert len(tfds.data_source("sunrgbd/bfx", data_dir=str(data_dir))["test"]) == 1


def test_size_mismatch_names_the_frame(scenes, tmp_path):
    bad = [dict(s) for s in scenes[:2]]
    bad[1]["label"] = bad[1]["label"][:-1]
    _write_two(tmp_path / "m", bad)
    with pytest.raises(InvalidFrameError, match=r"frame #2 .*sizes differ.*label 426x561"):
        _build("bfx", tmp_path / "d", tmp_path / "m")


def test_seg_and_meta_disagree(scenes, tmp_path):
    paths = _write_two(tmp_path / "m", scenes)
    with h5py.File(paths["seg"], "r+") as f:
        refs = f["SUNRGBD2Dseg/seglabel"][:1]
        del f["SUNRGBD2Dseg/seglabel"]
        f["SUNRGBD2Dseg"].create_dataset("seglabel", data=refs, dtype=h5py.ref_dtype)
    with pytest.raises(InvalidFileError, match="1 label maps but SUNRGBDMeta has 2 frames"):
        _build("bfx", tmp_path / "d", tmp_path / "m")


def test_missing_member_names_the_frame(scenes, tmp_path):
    paths = _write_two(tmp_path / "m", scenes, as_zip=False)
    shutil.rmtree(paths["data"] / SCENES[0][0] / "depth_bfx")
    with pytest.raises(InvalidFrameError, match=r"frame #1 .*no kv2/kinect2data/.*/depth_bfx/"):
        _build("bfx", tmp_path / "d", tmp_path / "m")


def test_unused_meta_frames_are_skipped(zip_manual):
    meta = sun.load_meta(pathlib.Path(zip_manual) / "SUNRGBDtoolbox/Metadata/SUNRGBDMeta.mat")
    assert len(meta) == len(SCENES)
    assert meta[UNUSED].scene == SCENES[UNUSED][0]
    assert meta[0].rgb_name == "0000001.jpg" and meta[0].depth_name == "0000001.png"


@pytest.mark.parametrize("target", ["meta", "split"])
def test_wrong_toolbox_mat_names_the_file(target, scenes, tmp_path):
    paths = _write_two(tmp_path / "m", scenes)
    if target == "meta":
        paths["meta"].write_bytes(b"<html>Not Found</html>")
        name = "SUNRGBDMeta.mat"
    else:
        testing._common.write_mat_v5(paths["split"], {"trainSeq": np.arange(3)})
        name = "allsplit.mat"
    with pytest.raises(InvalidFileError, match=name):
        _build("bfx", tmp_path / "d", tmp_path / "m")
