"""Writers of NYUv2 manual-download files in the official layout, for tests and benchmarks.

:func:`write_labeled_mat` writes ``nyu_depth_v2_labeled.mat`` exactly as MATLAB v7.3 stores it
(HDF5 with MATLAB's user block, axes reversed, ``scenes`` / ``sceneTypes`` / ``names`` as cell
arrays of references to uint16 ``char`` data), one frame at a time: chunks hold one frame, so the
writer stays lean whatever the frame count, and frames that are not given are never written
(HDF5 fills them with zeros without storing them).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from tfds_builders import _common

Frame = Mapping[str, Any]
"""One frame: ``image`` (H,W,3) uint8, ``depth`` and ``raw_depth`` (H,W) float32 metres,
``label`` (H,W) raw labels 0..894, optional ``instances`` (H,W) uint8, ``scene``,
``scene_type`` (str)."""


def write_labeled_mat(
    path: str | pathlib.Path,
    num_frames: int,
    frames: Mapping[int, Frame] | Callable[[int], Frame | None],
    *,
    height: int = 480,
    width: int = 640,
    compression: str | None = None,
    class_names: Sequence[str] | None = None,
    label_dtype: type = np.uint16,
    progress: Callable[[int], None] | None = None,
) -> pathlib.Path:
    """Writes ``nyu_depth_v2_labeled.mat`` with ``num_frames`` frames in the official layout.

    Args:
      path: output file.
      num_frames: N (1449 in the real file).
      frames: 1-based frame index -> :data:`Frame` (a mapping, or a function returning None for
        frames left blank). Blank frames read as zeros, with scene ``''``.
      height, width: frame size (480 x 640 in the real file).
      compression: h5py compression of the big arrays (``'gzip'`` like MATLAB, or None).
      class_names: the 894 raw class names (``names``); placeholders when None.
      label_dtype: dtype of ``labels`` (uint16 in the real file).
      progress: called with each frame index once written.
    """
    get = frames.get if isinstance(frames, Mapping) else frames
    path = pathlib.Path(path)
    opts: dict[str, Any] = {}
    if compression:
        opts = {"compression": compression}
        if compression == "gzip":
            opts["compression_opts"] = 1
    n, h, w = num_frames, height, width
    file = _common.create_mat73(path)
    try:
        images = file.create_dataset("images", (n, 3, w, h), np.uint8, chunks=(1, 3, w, h), **opts)
        depths = file.create_dataset("depths", (n, w, h), np.float32, chunks=(1, w, h), **opts)
        raws = file.create_dataset("rawDepths", (n, w, h), np.float32, chunks=(1, w, h), **opts)
        labels = file.create_dataset("labels", (n, w, h), label_dtype, chunks=(1, w, h), **opts)
        instances = file.create_dataset("instances", (n, w, h), np.uint8, chunks=(1, w, h), **opts)
        for dataset, cls in (
            (images, "uint8"),
            (depths, "single"),
            (raws, "single"),
            (labels, np.dtype(label_dtype).name),
            (instances, "uint8"),
        ):
            _common.set_matlab_class(dataset, cls)
        scenes, scene_types = [], []
        for k in range(1, n + 1):
            frame = get(k)
            if frame is None:
                scenes.append("")
                scene_types.append("")
                continue
            i = k - 1
            images[i] = np.transpose(np.asarray(frame["image"], np.uint8), (2, 1, 0))
            depths[i] = np.asarray(frame["depth"], np.float32).T
            raws[i] = np.asarray(frame["raw_depth"], np.float32).T
            labels[i] = np.asarray(frame["label"]).astype(label_dtype).T
            if "instances" in frame:
                instances[i] = np.asarray(frame["instances"], np.uint8).T
            scenes.append(str(frame.get("scene", f"scene_{k:04d}")))
            scene_types.append(str(frame.get("scene_type", "unknown")))
            if progress is not None:
                progress(k)
        _common.write_mat73_cellstr(file, "scenes", scenes)
        _common.write_mat73_cellstr(file, "sceneTypes", scene_types)
        _common.write_mat73_cellstr(
            file, "rawRgbFilenames", [f"{s}/r-{k:010d}.ppm" for k, s in enumerate(scenes)]
        )
        _common.write_mat73_cellstr(
            file, "rawDepthFilenames", [f"{s}/d-{k:010d}.pgm" for k, s in enumerate(scenes)]
        )
        names = list(class_names) if class_names else [f"class{c}" for c in range(1, 895)]
        _common.write_mat73_cellstr(file, "names", names)
        _common.write_mat73_array(file, "accelData", np.zeros((n, 4), np.float32), "single")
    finally:
        _common.close_mat73(file)
    return path


def write_splits_mat(
    path: str | pathlib.Path, train: Sequence[int], test: Sequence[int]
) -> pathlib.Path:
    """Writes ``splits.mat`` (MAT v5, ``trainNdxs`` / ``testNdxs`` n×1 uint16, 1-based)."""
    _common.write_mat_v5(
        path,
        {
            "trainNdxs": np.asarray(train, np.uint16).reshape(-1, 1),
            "testNdxs": np.asarray(test, np.uint16).reshape(-1, 1),
        },
    )
    return pathlib.Path(path)


def write_class_maps(
    directory: str | pathlib.Path, map_894_to_40: np.ndarray, map_40_to_13: np.ndarray
) -> None:
    """Writes ``classMapping40.mat`` and ``class13Mapping.mat`` from lookup tables that include
    the void entry (``map_894_to_40`` has 895 entries, ``map_40_to_13`` 41)."""
    directory = pathlib.Path(directory)
    map40 = np.asarray(map_894_to_40, np.uint8)[1:].reshape(1, -1)
    map13 = np.asarray(map_40_to_13, np.uint8)[1:].reshape(1, -1)
    names40 = np.array([f"class{c}" for c in range(1, 41)], dtype=object).reshape(1, -1)
    _common.write_mat_v5(
        directory / "classMapping40.mat",
        {
            "mapClass": map40,
            "className": names40,
            "allClassName": np.array([f"raw{c}" for c in range(1, 895)], object).reshape(1, -1),
        },
    )
    names13 = np.array([f"class{c}" for c in range(1, 14)], dtype=object).reshape(1, -1)
    _common.write_mat_v5(
        directory / "class13Mapping.mat",
        {"classMapping13": {"labels13": map13, "classNames": names13}},
    )


def invert_label_map(forward: np.ndarray) -> np.ndarray:
    """For each target label, the smallest source label that maps to it (-1 if none)."""
    forward = np.asarray(forward)
    inverse = np.full(int(forward.max()) + 1, -1, np.int64)
    for source in range(forward.size - 1, -1, -1):
        inverse[forward[source]] = source
    return inverse


def raw_labels_from_40(label40: np.ndarray, map_894_to_40: np.ndarray) -> np.ndarray:
    """A raw (894-class) uint16 label map whose 40-class image is ``label40``."""
    inverse = invert_label_map(map_894_to_40)
    if np.any(inverse[np.unique(label40)] < 0):
        raise ValueError("label40 holds values no raw class maps to")
    return inverse[label40].astype(np.uint16)


__all__ = [
    "invert_label_map",
    "raw_labels_from_40",
    "write_class_maps",
    "write_labeled_mat",
    "write_splits_mat",
]
