"""SUN RGB-D (10335 RGB-D frames of four sensors) for 37-class semantic segmentation.

Manual download: ``SUNRGBD.zip`` (or its extracted ``SUNRGBD/`` folder) and the official toolbox
``SUNRGBDtoolbox`` (``Metadata/SUNRGBDMeta.mat``, ``Metadata/SUNRGBD2Dseg.mat``,
``traintestSUNRGBD/allsplit.mat``). Zip members are read one at a time, never all extracted.

* ``SUNRGBDMeta.mat`` (MAT v5 struct array): frame i (1-based) has ``rgbpath`` / ``depthpath``;
  its scene directory is ``rgbpath`` minus its last two components.
* ``SUNRGBD2Dseg.mat`` (v7.3 / HDF5): ``SUNRGBD2Dseg/seglabel`` holds one reference per frame, in
  SUNRGBDMeta order, to the W×H label array (0 = void, 1..37, stored as is).
* ``allsplit.mat``: ``alltrain`` (5285) / ``alltest`` (5050) scene directories, matched to
  SUNRGBDMeta after normalisation (collapse '//', strip a trailing '/', strip through
  '/SUNRGBD/').
* Depth PNGs store millimetres rotated left by 3 bits: ``mm = (v >> 3) | (v << 13)`` in uint16
  (SUNRGBDtoolbox ``read3dPoints.m``), then /1000 and values above 8 m clamped to 8; 0 stays 0.

Class names (:data:`CLASS_NAMES`, labels 1..37, no void) are in
``info.metadata`` of both configs with ``num_classes`` and ``void_label`` = 0.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import logging
import os
import pathlib
import re
import zipfile
import zlib
from collections.abc import Iterator, Sequence

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from tfds_builders import _common
from tfds_builders._common import InvalidFileError, InvalidFrameError, ManualFile
from tfds_builders.features import rgbd_segmentation_features

NUM_CLASSES = 37
VOID_LABEL = 0

# Labels 1..37 (``seg37list`` of SUNRGBDtoolbox/Metadata/seg37list.mat), spelled as listed by
# ankurhanda/sunrgbd-meta-data and ESANet: the NYUv2 40-class names 1..37 of Gupta et al. with
# '_' for ' ' and 'fridge' / 'tv' for 'refridgerator' / 'television'.
CLASS_NAMES = (
    "wall",
    "floor",
    "cabinet",
    "bed",
    "chair",
    "sofa",
    "table",
    "door",
    "window",
    "bookshelf",
    "picture",
    "counter",
    "blinds",
    "desk",
    "shelves",
    "curtain",
    "dresser",
    "pillow",
    "mirror",
    "floor_mat",
    "clothes",
    "ceiling",
    "books",
    "fridge",
    "tv",
    "paper",
    "towel",
    "shower_curtain",
    "box",
    "whiteboard",
    "person",
    "night_stand",
    "toilet",
    "sink",
    "lamp",
    "bathtub",
    "bag",
)
NUM_TRAIN = 5285
NUM_TEST = 5050
MAX_DEPTH_M = 8.0

HOMEPAGE = "https://rgbd.cs.princeton.edu/"
_DATA_URL = "https://rgbd.cs.princeton.edu/data/SUNRGBD.zip"
_TOOLBOX_URL = "https://rgbd.cs.princeton.edu/data/SUNRGBDtoolbox.zip"

DATA = "SUNRGBD.zip"
META_MAT = "SUNRGBDMeta.mat"
SEG_MAT = "SUNRGBD2Dseg.mat"
SPLIT_MAT = "allsplit.mat"

_TOOLBOX_NOTE = f"SUNRGBDtoolbox.zip ({_TOOLBOX_URL}), extracted"
FILES = (
    ManualFile(
        DATA,
        ("SUNRGBD", DATA, "*/SUNRGBD", f"*/{DATA}"),
        f"{_DATA_URL} (~6.8 GB; the zip itself or its extracted SUNRGBD/ folder)",
    ),
    ManualFile(
        META_MAT,
        (
            f"SUNRGBDtoolbox/Metadata/{META_MAT}",
            f"*/SUNRGBDtoolbox/Metadata/{META_MAT}",
            f"Metadata/{META_MAT}",
            META_MAT,
        ),
        f"{_TOOLBOX_NOTE}: SUNRGBDtoolbox/Metadata/{META_MAT}",
    ),
    ManualFile(
        SEG_MAT,
        (
            f"SUNRGBDtoolbox/Metadata/{SEG_MAT}",
            f"*/SUNRGBDtoolbox/Metadata/{SEG_MAT}",
            f"Metadata/{SEG_MAT}",
            SEG_MAT,
        ),
        f"{_TOOLBOX_NOTE}: SUNRGBDtoolbox/Metadata/{SEG_MAT}",
    ),
    ManualFile(
        SPLIT_MAT,
        (
            f"SUNRGBDtoolbox/traintestSUNRGBD/{SPLIT_MAT}",
            f"*/SUNRGBDtoolbox/traintestSUNRGBD/{SPLIT_MAT}",
            f"traintestSUNRGBD/{SPLIT_MAT}",
            SPLIT_MAT,
        ),
        f"{_TOOLBOX_NOTE}: SUNRGBDtoolbox/traintestSUNRGBD/{SPLIT_MAT}",
    ),
)

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
Download from {HOMEPAGE} and put in one folder, given to the builder:
`python -m tfds_builders.build sunrgbd --config C --data_dir D --manual_dir <folder>`
(without `--manual_dir` it looks in `<data_dir>/downloads/manual/`):

* `{DATA}` ({_DATA_URL}, ~6.8 GB), as is — members are read one by one — or extracted, as
  the folder `SUNRGBD/` (holding `kv1/ kv2/ realsense/ xtion/`).
* `SUNRGBDtoolbox/`: {_TOOLBOX_URL} extracted; the builder reads
  `SUNRGBDtoolbox/Metadata/{META_MAT}`, `SUNRGBDtoolbox/Metadata/{SEG_MAT}` and
  `SUNRGBDtoolbox/traintestSUNRGBD/{SPLIT_MAT}`.
"""

_DESCRIPTION = "SUN RGB-D: RGB, depth in metres and 37-class semantic labels."

_log = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class SunRgbdConfig(tfds.core.BuilderConfig):
    """Which depth map of each scene folder becomes ``depth``."""

    depth_folder: str = "depth_bfx"


# --------------------------------------------------------------------------------------------
# Paths, split and metadata.


def normalise_path(path: str) -> str:
    """SUN RGB-D path relative to ``SUNRGBD/``: '//' collapsed, no trailing '/', everything up to
    and including '/SUNRGBD/' removed (``'/n/fs/sun3d/data/SUNRGBD/kv1/NYUdata/NYU0003/'`` ->
    ``'kv1/NYUdata/NYU0003'``)."""
    text = "/" + re.sub(r"/+", "/", str(path).strip().replace("\\", "/")).strip("/")
    marker = "/SUNRGBD/"
    at = text.find(marker)
    if at >= 0:
        return text[at + len(marker) :]
    return text[1:]


def decode_depth(encoded: np.ndarray) -> np.ndarray:
    """SUN RGB-D depth PNG values -> float32 metres (rotate right by 3 bits, /1000, clamp 8 m)."""
    v = np.asarray(encoded).astype(np.uint16)
    mm = (v >> np.uint16(3)) | (v << np.uint16(13))
    metres = (mm.astype(np.float64) / 1000.0).astype(np.float32)
    return np.minimum(metres, np.float32(MAX_DEPTH_M))


def load_split(path: str | pathlib.Path) -> dict[str, list[str]]:
    """``{'train': [...], 'test': [...]}``: normalised scene ids of ``allsplit.mat``, in order."""
    data = _common.load_mat_v5(path, ["alltrain", "alltest"])
    split = {}
    for name, key in (("train", "alltrain"), ("test", "alltest")):
        entries = np.atleast_1d(np.asarray(data[key], dtype=object)).ravel()
        if not all(isinstance(e, str) for e in entries):
            raise InvalidFileError(f"{path}: `{key}` is not a cell array of paths")
        scenes = [normalise_path(e) for e in entries]
        if len(set(scenes)) != len(scenes):
            raise InvalidFileError(f"{path}: `{key}` lists a scene twice")
        split[name] = scenes
    both = set(split["train"]) & set(split["test"])
    if both:
        raise InvalidFileError(f"{path}: scenes in both splits, e.g. {sorted(both)[:3]}")
    return split


@dataclasses.dataclass(frozen=True)
class MetaEntry:
    index: int  # 1-based position in SUNRGBDMeta (and SUNRGBD2Dseg)
    scene: str  # normalised scene directory, e.g. 'kv2/kinect2data/000065_...'
    rgb_name: str
    depth_name: str


def load_meta(path: str | pathlib.Path) -> list[MetaEntry]:
    """The frames of ``SUNRGBDMeta.mat`` (only the paths are kept)."""
    data = _common.load_mat_v5(path, ["SUNRGBDMeta"])
    structs = np.atleast_1d(np.asarray(data["SUNRGBDMeta"], dtype=object)).ravel()
    entries = []
    for i, meta in enumerate(structs, start=1):
        rgbpath = getattr(meta, "rgbpath", None)
        depthpath = getattr(meta, "depthpath", None)
        if not isinstance(rgbpath, str) or not isinstance(depthpath, str):
            raise InvalidFileError(
                f"{path}: entry {i} lacks the string fields `rgbpath` / `depthpath`"
            )
        rgb = normalise_path(rgbpath)
        scene = rgb.rsplit("/", 2)[0] if rgb.count("/") >= 2 else ""
        if not scene:
            raise InvalidFileError(f"{path}: entry {i} has an unexpected rgbpath {rgbpath!r}")
        entries.append(MetaEntry(i, scene, rgb.rsplit("/", 1)[-1], depthpath.rsplit("/", 1)[-1]))
    if not entries:
        raise InvalidFileError(f"{path}: `SUNRGBDMeta` is empty")
    return entries


def match_split(
    meta: Sequence[MetaEntry],
    split: dict[str, list[str]],
    *,
    meta_path: pathlib.Path,
    split_path: pathlib.Path,
) -> dict[str, list[MetaEntry]]:
    """The SUNRGBDMeta entries of each split, in ``allsplit.mat`` order."""
    by_scene: dict[str, MetaEntry] = {}
    duplicates = set()
    for entry in meta:
        if entry.scene in by_scene:
            duplicates.add(entry.scene)
        by_scene[entry.scene] = entry
    result = {}
    for name, scenes in split.items():
        unknown = [s for s in scenes if s not in by_scene]
        if unknown:
            raise InvalidFileError(
                f"{split_path}: {len(unknown)} {name} scene(s) are not in {meta_path}, "
                f"e.g. {unknown[:3]}; are both files from the same SUNRGBDtoolbox?"
            )
        twice = [s for s in scenes if s in duplicates]
        if twice:
            raise InvalidFileError(f"{meta_path}: scene(s) listed twice, e.g. {twice[:3]}")
        result[name] = [by_scene[s] for s in scenes]
    unused = len(meta) - sum(len(v) for v in result.values())
    if unused:
        _log.warning("%d SUNRGBDMeta frames are in neither split; skipped", unused)
    return result


# --------------------------------------------------------------------------------------------
# Lazy readers.


class SceneFiles:
    """Files of ``SUNRGBD.zip`` or of the extracted ``SUNRGBD/`` folder, by normalised path.

    Zip member names are normalised like split paths, so ``SUNRGBD/kv1/...``, ``kv1/...`` and
    ``<anything>/SUNRGBD/kv1/...`` layouts all work; members are decompressed one at a time.
    """

    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path)
        self._zip: zipfile.ZipFile | None = None
        self._members: dict[str, zipfile.ZipInfo] = {}
        self._dirs: dict[str, list[str]] = collections.defaultdict(list)
        if self.path.is_dir():
            return
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise InvalidFileError(
                f"{self.path}: cannot be opened as a zip archive ({err}); the download is "
                f"probably truncated (size {self.path.stat().st_size} bytes) — download it again"
            ) from err
        for info in self._zip.infolist():
            if info.is_dir():
                continue
            rel = normalise_path(info.filename)
            self._members[rel] = info
            parent, _, base = rel.rpartition("/")
            self._dirs[parent].append(base)

    def __enter__(self) -> SceneFiles:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def listdir(self, rel_dir: str) -> list[str]:
        if self._zip is not None:
            return sorted(self._dirs.get(rel_dir, []))
        try:
            return sorted(os.listdir(self.path / rel_dir))
        except OSError:
            return []

    def exists(self, rel: str) -> bool:
        if self._zip is not None:
            return rel in self._members
        return (self.path / rel).is_file()

    def read(self, rel: str) -> bytes:
        if self._zip is None:
            return (self.path / rel).read_bytes()
        try:
            return self._zip.read(self._members[rel])
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
            raise InvalidFileError(f"{self.path}: member {rel} is corrupt ({err})") from err

    def read_member(self, scene: str, folder: str, name: str, *, where: str) -> bytes:
        """``<scene>/<folder>/<name>``, or the folder's only file when that name is absent."""
        rel = f"{scene}/{folder}/{name}"
        if not self.exists(rel):
            present = self.listdir(f"{scene}/{folder}")
            if len(present) != 1:
                raise InvalidFrameError(
                    f"{where}: {self.path} has no {rel} (that folder holds {present[:5]})"
                )
            rel = f"{scene}/{folder}/{present[0]}"
        return self.read(rel)


class SegLabels:
    """``SUNRGBD2Dseg.mat`` opened lazily: :meth:`label` reads one frame's label map."""

    def __init__(self, path: str | pathlib.Path, num_frames: int):
        self.path = pathlib.Path(path)
        self._file = _common.open_mat73(self.path)
        try:
            _common.require_datasets(self._file, ["SUNRGBD2Dseg"], path=self.path)
            group = self._file["SUNRGBD2Dseg"]
            _common.require_datasets(group, ["seglabel"], path=self.path, where="SUNRGBD2Dseg/")
            try:
                self._refs = _common.mat73_refs(group["seglabel"])
            except TypeError as err:
                raise InvalidFileError(f"{self.path}: seglabel holds no references") from err
            if len(self._refs) != num_frames:
                raise InvalidFileError(
                    f"{self.path}: {len(self._refs)} label maps but SUNRGBDMeta has "
                    f"{num_frames} frames; are both from the same SUNRGBDtoolbox?"
                )
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> SegLabels:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def label(self, index: int, *, where: str) -> np.ndarray:
        """Label map of frame ``index`` (1-based) as uint8 H×W, values checked in 0..37."""
        try:
            array = np.asarray(self._file[self._refs[index - 1]][()])
        except (OSError, KeyError, ValueError) as err:
            raise InvalidFileError(f"{self.path}: label of {where} cannot be read ({err})") from err
        if array.ndim != 2 or array.dtype.kind not in "iuf":
            raise InvalidFrameError(
                f"{where}: label is {array.dtype} with shape {array.shape}, expected a 2-D map"
            )
        label = array.T
        bad = ~np.isin(label, np.arange(NUM_CLASSES + 1))
        if np.any(bad):
            values = np.unique(label[bad])
            raise InvalidFrameError(
                f"{where}: {int(bad.sum())} label pixels outside 0..{NUM_CLASSES} "
                f"(values {values[:10].tolist()})"
            )
        return label.astype(np.uint8)


def _decode_image(data: bytes, *, where: str) -> PIL.Image.Image:
    try:
        with PIL.Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as err:
        raise InvalidFrameError(f"{where}: RGB image cannot be decoded ({err})") from err


def _decode_depth_png(data: bytes, *, where: str) -> np.ndarray:
    try:
        with PIL.Image.open(io.BytesIO(data)) as image:
            array = np.asarray(image)
    except (OSError, ValueError, SyntaxError) as err:
        raise InvalidFrameError(f"{where}: depth PNG cannot be decoded ({err})") from err
    if array.ndim != 2 or array.dtype.kind not in "iu" or array.dtype.itemsize < 2:
        raise InvalidFrameError(
            f"{where}: depth PNG is {array.dtype} {array.shape}, expected 16-bit single-channel"
        )
    if array.min() < 0 or array.max() > 0xFFFF:
        raise InvalidFrameError(f"{where}: depth PNG values outside uint16")
    return decode_depth(array)


# --------------------------------------------------------------------------------------------


class Builder(_common.BuilderChecks, tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for SUN RGB-D, 37 classes, official 5285 / 5050 split."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: 37 classes, allsplit.mat train/test."}
    BUILDER_CONFIGS = [
        SunRgbdConfig(
            name="bfx",
            depth_folder="depth_bfx",
            description="depth = the filled maps of `depth_bfx/` (toolbox inpainting).",
        ),
        SunRgbdConfig(
            name="raw",
            depth_folder="depth",
            description="depth = the raw sensor maps of `depth/` (0 = no reading).",
        ),
    ]
    DEFAULT_CONFIG_NAME = "bfx"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        extra = {
            "index": tfds.features.Scalar(
                np.int32, doc="1-based index of the frame in SUNRGBDMeta.mat / SUNRGBD2Dseg.mat"
            ),
            "scene": tfds.features.Text(doc="scene folder relative to SUNRGBD/"),
            "sensor": tfds.features.Text(doc="kv1, kv2, realsense or xtion"),
        }
        return self.dataset_info_from_configs(
            description=_DESCRIPTION,
            features=rgbd_segmentation_features(extra),
            homepage=HOMEPAGE,
            metadata=tfds.core.MetadataDict(
                class_names=list(CLASS_NAMES), num_classes=NUM_CLASSES, void_label=VOID_LABEL
            ),
        )

    def _download_and_prepare(self, dl_manager, download_config=None):
        # Splits above TFDS's 1 GB shuffle buffer need this without TensorFlow; see there.
        with _common.tensorflow_free_shuffle():
            return super()._download_and_prepare(dl_manager, download_config)

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        dataset = f"{self.name}/{self.builder_config.name}"
        manual_dir = _common.resolve_manual_dir(
            dl_manager,
            dataset,
            FILES,
            MANUAL_DOWNLOAD_INSTRUCTIONS,
            build_command=self.manual_build_command(),
        )
        paths = _common.locate_manual_files(
            manual_dir,
            FILES,
            dataset=dataset,
            instructions=MANUAL_DOWNLOAD_INSTRUCTIONS,
            build_command=self.manual_build_command(),
        )
        meta = load_meta(paths[META_MAT])
        split = load_split(paths[SPLIT_MAT])
        entries = match_split(meta, split, meta_path=paths[META_MAT], split_path=paths[SPLIT_MAT])
        with SegLabels(paths[SEG_MAT], len(meta)), SceneFiles(paths[DATA]):
            pass  # Fail before generation starts if either cannot be opened.
        return {
            name: self._generate_examples(paths[DATA], paths[SEG_MAT], len(meta), frames)
            for name, frames in entries.items()
        }

    def _generate_examples(
        self,
        data_path: pathlib.Path,
        seg_path: pathlib.Path,
        num_frames: int,
        frames: Sequence[MetaEntry],
    ) -> Iterator[tuple[int, dict]]:
        depth_folder = self.builder_config.depth_folder
        with SceneFiles(data_path) as files, SegLabels(seg_path, num_frames) as seg:
            for entry in frames:
                where = f"SUN RGB-D frame #{entry.index} ({entry.scene})"
                image = _decode_image(
                    files.read_member(entry.scene, "image", entry.rgb_name, where=where),
                    where=where,
                )
                depth = _decode_depth_png(
                    files.read_member(entry.scene, depth_folder, entry.depth_name, where=where),
                    where=where,
                )
                label = seg.label(entry.index, where=where)
                sizes = {
                    "image": (image.height, image.width),
                    depth_folder: depth.shape,
                    "label": label.shape,
                }
                if len(set(sizes.values())) != 1:
                    text = ", ".join(f"{k} {h}x{w}" for k, (h, w) in sizes.items())
                    raise InvalidFrameError(f"{where}: sizes differ: {text}")
                yield (
                    entry.index,
                    {
                        "image": image,
                        "depth": depth,
                        "label": label,
                        "index": entry.index,
                        "scene": entry.scene,
                        "sensor": entry.scene.split("/", 1)[0],
                    },
                )
