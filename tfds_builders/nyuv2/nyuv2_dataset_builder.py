"""NYU Depth V2 labeled subset (1449 RGB-D frames) for semantic segmentation, 40/13/894 classes.

Reads the official ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3 = HDF5) frame by frame with h5py, so
building never holds the 2.8 GB file in memory, plus the official ``splits.mat`` (795 train / 654
test) and the usual ``classMapping40.mat`` / ``class13Mapping.mat`` class maps.

Layout of the labeled .mat as h5py sees it (MATLAB axes reversed; README.md, "Raw layout"):
``images`` (N, 3, W, H) uint8, ``depths`` / ``rawDepths`` (N, W, H) float32 metres, ``labels``
(N, W, H) uint16 with 0 = unlabeled and 1..894 the raw classes, ``scenes`` / ``sceneTypes`` cell
arrays of references to ``char`` data. Frame k (1-based, as in splits.mat) is array index k - 1.

Labels: 894 -> 40 through ``[0] + mapClass`` (classMapping40.mat), 40 -> 13 through
``[0] + labels13`` (class13Mapping.mat); 0 stays void.

Class names are in ``info.metadata`` (``class_names``: the K names of labels 1..K, no void;
``num_classes``; ``void_label`` = 0). Configs ``40`` / ``13`` take them from
:data:`CLASS_NAMES_40` / :data:`CLASS_NAMES_13` (the ``className`` of classMapping40.mat and the
``classNames`` of class13Mapping.mat); config ``894`` reads the ``names`` cell of the labeled .mat
while building, and TFDS saves them with the dataset (``metadata.json``). An ``894`` build made
before the names were recorded has none: rebuild it.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterator, Mapping

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from tfds_builders import _common
from tfds_builders._common import InvalidFileError, InvalidFrameError, ManualFile
from tfds_builders.features import depth_feature, rgbd_segmentation_features

LABELED_MAT = "nyu_depth_v2_labeled.mat"
SPLITS_MAT = "splits.mat"
CLASS_MAPPING_40_MAT = "classMapping40.mat"
CLASS_MAPPING_13_MAT = "class13Mapping.mat"

NUM_RAW_CLASSES = 894
VOID_LABEL = 0

# Labels 1..40 (Gupta et al. 2013), as in the ``className`` cell of classMapping40.mat.
CLASS_NAMES_40 = (
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
    "floor mat",
    "clothes",
    "ceiling",
    "books",
    "refridgerator",
    "television",
    "paper",
    "towel",
    "shower curtain",
    "box",
    "whiteboard",
    "person",
    "night stand",
    "toilet",
    "sink",
    "lamp",
    "bathtub",
    "bag",
    "otherstructure",
    "otherfurniture",
    "otherprop",
)

# Labels 1..13 (Couprie et al. 2013), as in ``classMapping13.classNames`` of class13Mapping.mat.
CLASS_NAMES_13 = (
    "bed",
    "books",
    "ceiling",
    "chair",
    "floor",
    "furniture",
    "objects",
    "picture",
    "sofa",
    "table",
    "tv",
    "wall",
    "window",
)

_CLASS_NAMES = {40: CLASS_NAMES_40, 13: CLASS_NAMES_13}
NUM_TRAIN = 795
NUM_TEST = 654

HOMEPAGE = "https://cs.nyu.edu/~silberman/datasets/nyu_depth_v2.html"
_LABELED_URL = "http://horatio.cs.nyu.edu/mit/silberman/nyu_depth_v2/nyu_depth_v2_labeled.mat"
_SPLITS_URL = "http://horatio.cs.nyu.edu/mit/silberman/indoor_seg_sup/splits.mat"
_META_URL = "https://github.com/ankurhanda/nyuv2-meta-data"

_FILES = {
    LABELED_MAT: ManualFile(
        LABELED_MAT,
        (LABELED_MAT, f"*/{LABELED_MAT}"),
        f"{HOMEPAGE} ('Labeled dataset', ~2.8 GB; direct link {_LABELED_URL})",
    ),
    SPLITS_MAT: ManualFile(
        SPLITS_MAT,
        (SPLITS_MAT, f"*/{SPLITS_MAT}"),
        f"{_SPLITS_URL} (official 795/654 split, linked from {HOMEPAGE}; also in {_META_URL})",
    ),
    CLASS_MAPPING_40_MAT: ManualFile(
        CLASS_MAPPING_40_MAT,
        (CLASS_MAPPING_40_MAT, f"*/{CLASS_MAPPING_40_MAT}"),
        f"{_META_URL} (894 -> 40 classes, Gupta et al. 2013; same file in TUI-NICR/ESANet)",
    ),
    CLASS_MAPPING_13_MAT: ManualFile(
        CLASS_MAPPING_13_MAT,
        (CLASS_MAPPING_13_MAT, f"*/{CLASS_MAPPING_13_MAT}"),
        f"{_META_URL} (40 -> 13 classes, Couprie et al. 2013; same file in TUI-NICR/ESANet)",
    ),
}

_DESCRIPTION = "NYU Depth V2 labeled frames (RGB, depth in metres, semantic labels)."

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
Put these files in one folder, at its top level or one sub-folder down, and give it to the
builder: `python -m tfds_builders.build nyuv2 --config C --data_dir D --manual_dir <folder>`
(without `--manual_dir` it looks in `<data_dir>/downloads/manual/`):

* `{LABELED_MAT}` (~2.8 GB, MATLAB v7.3 / HDF5): the "Labeled dataset" of
  {HOMEPAGE}
  direct link: {_LABELED_URL}
* `{SPLITS_MAT}`: the official train/test split (795 / 654 frames),
  {_SPLITS_URL}
* `{CLASS_MAPPING_40_MAT}` (configs `40` and `13`) and `{CLASS_MAPPING_13_MAT}` (config `13`):
  the 894 -> 40 -> 13 class maps from {_META_URL}
  (`{CLASS_MAPPING_40_MAT}`, `{CLASS_MAPPING_13_MAT}`; byte-identical copies are in
  TUI-NICR/ESANet `src/datasets/nyuv2/`).
Config `894` needs only the first two files.
"""


@dataclasses.dataclass(eq=False)
class NyuV2Config(tfds.core.BuilderConfig):
    """Which label set: 40 (Gupta et al.), 13 (Couprie et al.) or the 894 raw classes."""

    num_classes: int = 40


def class_names(num_classes: int) -> tuple[str, ...] | None:
    """Names of labels 1..K of a label set (``None`` for the 894 raw classes: they are read
    from the labeled .mat while building)."""
    if num_classes == NUM_RAW_CLASSES:
        return None
    try:
        return _CLASS_NAMES[num_classes]
    except KeyError:
        raise ValueError(f"unsupported number of classes {num_classes} (40, 13 or 894)") from None


def required_files(num_classes: int) -> list[ManualFile]:
    """Manual files needed for a label set."""
    names = [LABELED_MAT, SPLITS_MAT]
    if num_classes in (40, 13):
        names.append(CLASS_MAPPING_40_MAT)
    if num_classes == 13:
        names.append(CLASS_MAPPING_13_MAT)
    return [_FILES[name] for name in names]


# --------------------------------------------------------------------------------------------
# Small .mat files.


def load_splits(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """``{'train': trainNdxs, 'test': testNdxs}``: 1-based frame indices (int64), file order."""
    data = _common.load_mat_v5(path, ["trainNdxs", "testNdxs"])
    splits = {}
    for split, key in (("train", "trainNdxs"), ("test", "testNdxs")):
        values = np.atleast_1d(np.asarray(data[key])).ravel()
        if values.size == 0 or not np.issubdtype(values.dtype, np.number):
            raise InvalidFileError(f"{path}: `{key}` is empty or not numeric")
        indices = values.astype(np.int64)
        if np.any(indices != values) or indices.min() < 1:
            raise InvalidFileError(f"{path}: `{key}` must hold 1-based integer frame indices")
        if np.unique(indices).size != indices.size:
            raise InvalidFileError(f"{path}: `{key}` repeats frame indices")
        splits[split] = indices
    both = np.intersect1d(splits["train"], splits["test"])
    if both.size:
        raise InvalidFileError(f"{path}: frames {both[:10].tolist()} are in both splits")
    return splits


def _class_table(values: np.ndarray, *, path, name: str, size: int, num_classes: int):
    values = np.atleast_1d(np.asarray(values)).ravel()
    if values.size != size or not np.issubdtype(values.dtype, np.number):
        raise InvalidFileError(
            f"{path}: `{name}` has {values.size} {values.dtype} entries, expected {size} numbers"
        )
    if values.min() < 1 or values.max() > num_classes or np.any(values != np.round(values)):
        raise InvalidFileError(f"{path}: `{name}` values must be integers in 1..{num_classes}")
    return np.concatenate([[0], values]).astype(np.uint8)  # 0 stays void


def load_map_894_to_40(path: str | pathlib.Path) -> np.ndarray:
    """Lookup table (895,) uint8: raw label (0..894) -> 40-class label, ``[0] + mapClass``."""
    data = _common.load_mat_v5(path, ["mapClass"])
    return _class_table(
        data["mapClass"], path=path, name="mapClass", size=NUM_RAW_CLASSES, num_classes=40
    )


def load_map_40_to_13(path: str | pathlib.Path) -> np.ndarray:
    """Lookup table (41,) uint8: 40-class label -> 13-class label, ``[0] + labels13``."""
    data = _common.load_mat_v5(path, ["classMapping13"])
    labels13 = getattr(data["classMapping13"], "labels13", None)
    if labels13 is None:
        raise InvalidFileError(f"{path}: struct `classMapping13` has no field `labels13`")
    return _class_table(
        labels13, path=path, name="classMapping13.labels13", size=40, num_classes=13
    )


def raw_label_map(num_classes: int, files: Mapping[str, pathlib.Path]) -> np.ndarray | None:
    """Lookup table raw label -> label of the config (``None`` for the 894 raw classes)."""
    if num_classes == NUM_RAW_CLASSES:
        return None
    map40 = load_map_894_to_40(files[CLASS_MAPPING_40_MAT])
    if num_classes == 40:
        return map40
    if num_classes == 13:
        return load_map_40_to_13(files[CLASS_MAPPING_13_MAT])[map40]
    raise ValueError(f"unsupported number of classes {num_classes} (40, 13 or 894)")


# --------------------------------------------------------------------------------------------
# The labeled .mat, read lazily.


class LabeledMat:
    """``nyu_depth_v2_labeled.mat`` opened read-only; :meth:`frame` reads one frame at a time."""

    _ARRAYS = ("images", "depths", "rawDepths", "labels")
    _CELLS = ("scenes", "sceneTypes")

    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path)
        self._file = _common.open_mat73(self.path)
        try:
            self._check_layout()
        except BaseException:
            self._file.close()
            raise

    def _check_layout(self) -> None:
        file, path = self._file, self.path
        _common.require_datasets(file, self._ARRAYS + self._CELLS, path=path)
        self._images, self._depths = file["images"], file["depths"]
        self._raw_depths, self._labels = file["rawDepths"], file["labels"]
        if self._images.ndim != 4 or self._images.shape[1] != 3:
            raise InvalidFileError(
                f"{path}: `images` has shape {self._images.shape}, expected (N, 3, W, H) "
                "(MATLAB H x W x 3 x N)"
            )
        if self._images.dtype != np.uint8:
            raise InvalidFileError(f"{path}: `images` is {self._images.dtype}, expected uint8")
        for name in ("depths", "rawDepths", "labels"):
            dataset = file[name]
            if dataset.ndim != 3:
                raise InvalidFileError(
                    f"{path}: `{name}` has shape {dataset.shape}, expected (N, W, H)"
                )
            kind = "f" if name != "labels" else "iu"
            if dataset.dtype.kind not in kind:
                raise InvalidFileError(f"{path}: `{name}` has unexpected dtype {dataset.dtype}")
        self._scene_refs = self._cell_refs("scenes")
        self._scene_type_refs = self._cell_refs("sceneTypes")
        counts = {name: file[name].shape[0] for name in self._ARRAYS}
        counts["scenes"] = len(self._scene_refs)
        counts["sceneTypes"] = len(self._scene_type_refs)
        if len(set(counts.values())) != 1:
            raise InvalidFileError(f"{path}: variables disagree on the number of frames {counts}")
        self.num_frames = counts["images"]

    def _cell_refs(self, name: str) -> np.ndarray:
        try:
            return _common.mat73_refs(self._file[name])
        except TypeError as err:
            raise InvalidFileError(f"{self.path}: `{name}` is not a cell array ({err})") from err

    def class_names(self) -> list[str]:
        """The raw class names of the ``names`` cell: entry i names raw label i + 1."""
        if "names" not in self._file:
            raise InvalidFileError(f"{self.path}: no `names` cell (the raw class names)")
        try:
            refs = _common.mat73_refs(self._file["names"])
            names = [_common.mat73_string(self._file, ref) for ref in refs]
        except TypeError as err:
            raise InvalidFileError(f"{self.path}: `names` is not a cell array ({err})") from err
        except (OSError, KeyError, ValueError) as err:
            raise InvalidFileError(f"{self.path}: `names` cannot be read ({err})") from err
        if len(names) != NUM_RAW_CLASSES:
            raise InvalidFileError(
                f"{self.path}: `names` holds {len(names)} class names, expected {NUM_RAW_CLASSES}"
            )
        return names

    def __enter__(self) -> LabeledMat:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def frame(self, k: int) -> dict[str, np.ndarray | str]:
        """Frame ``k`` (1-based): image (H,W,3) uint8, depth / raw_depth (H,W) float32 metres,
        label (H,W) raw 0..894 labels (integer dtype of the file), scene, scene_type."""
        if not 1 <= k <= self.num_frames:
            raise InvalidFrameError(f"{self.path}: frame #{k} is not in 1..{self.num_frames}")
        i = k - 1
        try:
            image = np.ascontiguousarray(np.transpose(self._images[i], (2, 1, 0)))
            depth = np.ascontiguousarray(self._depths[i].T, dtype=np.float32)
            raw_depth = np.ascontiguousarray(self._raw_depths[i].T, dtype=np.float32)
            label = np.ascontiguousarray(self._labels[i].T)
            scene = _common.mat73_string(self._file, self._scene_refs[i])
            scene_type = _common.mat73_string(self._file, self._scene_type_refs[i])
        except (OSError, KeyError, ValueError) as err:
            raise InvalidFileError(f"{self.path}: frame #{k} cannot be read ({err})") from err
        sizes = {
            "image": image.shape[:2],
            "depth": depth.shape,
            "raw_depth": raw_depth.shape,
            "label": label.shape,
        }
        if len(set(sizes.values())) != 1:
            text = ", ".join(f"{name} {h}x{w}" for name, (h, w) in sizes.items())
            raise InvalidFrameError(f"{self.path.name} frame #{k}: sizes differ: {text}")
        return {
            "image": image,
            "depth": depth,
            "raw_depth": raw_depth,
            "label": label,
            "scene": scene,
            "scene_type": scene_type,
        }


def check_raw_labels(label: np.ndarray, *, where: str) -> None:
    """Raises :class:`InvalidFrameError` if ``label`` has values outside 0..894."""
    bad = (label < 0) | (label > NUM_RAW_CLASSES)
    if np.any(bad):
        values = np.unique(label[bad])
        raise InvalidFrameError(
            f"{where}: {int(bad.sum())} pixels have labels outside 0..{NUM_RAW_CLASSES} "
            f"(values {values[:10].tolist()})"
        )


# --------------------------------------------------------------------------------------------


class Builder(_common.BuilderChecks, tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for the NYU Depth V2 labeled frames."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: 40/13/894 classes, official 795/654 split."}
    BUILDER_CONFIGS = [
        NyuV2Config(
            name="40",
            num_classes=40,
            description="40 classes of Gupta et al. 2013 (label 0 = void, 1..40).",
        ),
        NyuV2Config(
            name="13",
            num_classes=13,
            description="13 classes of Couprie et al. 2013 (label 0 = void, 1..13).",
        ),
        NyuV2Config(
            name="894",
            num_classes=NUM_RAW_CLASSES,
            description="The 894 raw classes of the .mat (label 0 = void, 1..894; uint16).",
        ),
    ]
    DEFAULT_CONFIG_NAME = "40"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        num_classes = self.builder_config.num_classes
        extra = {
            "raw_depth": depth_feature(),
            "index": tfds.features.Scalar(
                np.int32, doc="1-based index of the frame among the 1449 labeled frames"
            ),
            "scene": tfds.features.Text(doc="scene id from `scenes`, e.g. 'bedroom_0001'"),
            "scene_type": tfds.features.Text(doc="scene type from `sceneTypes`, e.g. 'bedroom'"),
        }
        label_dtype = np.uint16 if num_classes > 255 else np.uint8
        metadata = tfds.core.MetadataDict(num_classes=num_classes, void_label=VOID_LABEL)
        names = class_names(num_classes)
        if names is not None:  # 894: set by _split_generators from the labeled .mat
            metadata["class_names"] = list(names)
        return self.dataset_info_from_configs(
            description=_DESCRIPTION,
            features=rgbd_segmentation_features(extra, label_dtype=label_dtype),
            homepage=HOMEPAGE,
            metadata=metadata,
        )

    def _download_and_prepare(self, dl_manager, download_config=None):
        # Splits above TFDS's 1 GB shuffle buffer need this without TensorFlow; see there.
        with _common.tensorflow_free_shuffle():
            return super()._download_and_prepare(dl_manager, download_config)

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        num_classes = self.builder_config.num_classes
        files = required_files(num_classes)
        dataset = f"{self.name}/{self.builder_config.name}"
        manual_dir = _common.resolve_manual_dir(
            dl_manager,
            dataset,
            files,
            MANUAL_DOWNLOAD_INSTRUCTIONS,
            build_command=self.manual_build_command(),
        )
        paths = _common.locate_manual_files(
            manual_dir,
            files,
            dataset=dataset,
            instructions=MANUAL_DOWNLOAD_INSTRUCTIONS,
            build_command=self.manual_build_command(),
        )
        splits = load_splits(paths[SPLITS_MAT])
        label_map = raw_label_map(num_classes, paths)
        with LabeledMat(paths[LABELED_MAT]) as mat:
            num_frames = mat.num_frames
            if num_classes == NUM_RAW_CLASSES:
                # DatasetBuilder.download_and_prepare writes self.info (metadata.json included)
                # after generation, so names set here are saved with the dataset.
                self.info.metadata["class_names"] = mat.class_names()
        for split, indices in splits.items():
            if indices.max() > num_frames:
                raise InvalidFileError(
                    f"{paths[SPLITS_MAT]}: {split} frame #{int(indices.max())} is beyond the "
                    f"{num_frames} frames of {paths[LABELED_MAT]}"
                )
        return {
            split: self._generate_examples(paths[LABELED_MAT], indices, label_map)
            for split, indices in splits.items()
        }

    def _generate_examples(
        self, mat_path: pathlib.Path, frames: np.ndarray, label_map: np.ndarray | None
    ) -> Iterator[tuple[int, dict]]:
        with LabeledMat(mat_path) as mat:
            for k in frames:
                k = int(k)
                frame = mat.frame(k)
                raw = frame["label"]
                check_raw_labels(raw, where=f"{mat_path.name} frame #{k}")
                if label_map is None:
                    label = raw.astype(np.uint16)
                else:
                    label = label_map[raw.astype(np.intp)]
                yield (
                    k,
                    {
                        "image": PIL.Image.fromarray(frame["image"]),
                        "depth": frame["depth"],
                        "raw_depth": frame["raw_depth"],
                        "label": label,
                        "index": k,
                        "scene": frame["scene"],
                        "scene_type": frame["scene_type"],
                    },
                )


__all__ = [
    "CLASS_NAMES_13",
    "CLASS_NAMES_40",
    "Builder",
    "LabeledMat",
    "NyuV2Config",
    "class_names",
    "load_map_40_to_13",
    "load_map_894_to_40",
    "load_splits",
    "raw_label_map",
]
