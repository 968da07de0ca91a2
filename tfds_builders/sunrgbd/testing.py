"""Writers of SUN RGB-D manual-download files in the official layout, for tests.

:func:`write_sunrgbd` writes ``SUNRGBD.zip`` (members ``SUNRGBD/<scene>/image/<name>.jpg``,
``depth/<name>.png``, ``depth_bfx/<name>.png``, ``intrinsics.txt``, ``scene.txt``) or the
extracted ``SUNRGBD/`` folder, and ``SUNRGBDtoolbox/`` with ``Metadata/SUNRGBDMeta.mat`` (MAT v5
struct array), ``Metadata/SUNRGBD2Dseg.mat`` (MATLAB v7.3: ``SUNRGBD2Dseg.seglabel`` references
to W×H label arrays) and ``traintestSUNRGBD/allsplit.mat`` (cell arrays of scene paths).
"""

from __future__ import annotations

import io
import pathlib
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import PIL.Image

from tfds_builders import _common

OFFICIAL_PREFIX = "/n/fs/sun3d/data/SUNRGBD/"

Scene = Mapping[str, Any]
"""One frame: ``scene`` (path relative to SUNRGBD/), ``image`` (H,W,3 uint8, or encoded bytes),
``depth`` and ``depth_bfx`` (H,W uint16 in the on-disk bit-rotated encoding), ``label`` (H,W
ints 0..37), optional ``rgb_name`` / ``depth_name``."""


def encode_depth(millimetres: np.ndarray) -> np.ndarray:
    """Inverse of the SUN RGB-D decoding: rotate uint16 millimetres left by 3 bits."""
    mm = np.asarray(millimetres).astype(np.uint16)
    return (mm << np.uint16(3)) | (mm >> np.uint16(13))


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(np.asarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(image: Any) -> bytes:
    if isinstance(image, bytes):
        return image
    buffer = io.BytesIO()
    PIL.Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _names(scene: Scene, k: int) -> tuple[str, str]:
    stem = f"{k:07d}"
    return scene.get("rgb_name", f"{stem}.jpg"), scene.get("depth_name", f"{stem}.png")


def write_sunrgbd(
    manual_dir: str | pathlib.Path,
    scenes: Sequence[Scene],
    *,
    train: Sequence[str],
    test: Sequence[str],
    as_zip: bool = True,
    zip_root: str = "SUNRGBD/",
    label_dtype: type = np.uint16,
) -> dict[str, pathlib.Path]:
    """Writes the data and the toolbox files under ``manual_dir``; returns their paths.

    ``train`` / ``test`` are written verbatim into ``allsplit.mat`` (pass official-looking paths,
    e.g. ``OFFICIAL_PREFIX + scene``, possibly with '//' or a trailing '/').
    """
    root = pathlib.Path(manual_dir)
    root.mkdir(parents=True, exist_ok=True)
    members: list[tuple[str, bytes]] = []
    for k, scene in enumerate(scenes, start=1):
        rgb_name, depth_name = _names(scene, k)
        base = scene["scene"].strip("/")
        members += [
            (f"{base}/image/{rgb_name}", _jpeg(scene["image"])),
            (f"{base}/depth/{depth_name}", _png(np.asarray(scene["depth"], np.uint16))),
            (f"{base}/depth_bfx/{depth_name}", _png(np.asarray(scene["depth_bfx"], np.uint16))),
            (f"{base}/intrinsics.txt", b"529.5 0 365\n0 529.5 265\n0 0 1\n"),
            (f"{base}/scene.txt", b"office\n"),
        ]
    paths: dict[str, pathlib.Path] = {}
    if as_zip:
        paths["data"] = root / "SUNRGBD.zip"
        with zipfile.ZipFile(paths["data"], "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in members:
                archive.writestr(zip_root + name, data)
    else:
        paths["data"] = root / "SUNRGBD"
        for name, data in members:
            target = paths["data"] / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)

    metadata = root / "SUNRGBDtoolbox" / "Metadata"
    metadata.mkdir(parents=True, exist_ok=True)
    fields = ["sequenceName", "groundtruth3DBB", "Rtilt", "K", "depthpath", "rgbpath"]
    fields += ["anno_extrinsics", "depthname", "rgbname", "sensorType"]
    meta = np.empty((1, len(scenes)), dtype=[(f, object) for f in fields])
    for k, scene in enumerate(scenes, start=1):
        rgb_name, depth_name = _names(scene, k)
        base = scene["scene"].strip("/")
        meta[0, k - 1] = (
            "SUNRGBD/" + base,
            np.zeros((0, 0)),
            np.eye(3),
            np.array([[529.5, 0, 365], [0, 529.5, 265], [0, 0, 1]]),
            f"{OFFICIAL_PREFIX}{base}/depth/{depth_name}",
            f"{OFFICIAL_PREFIX}{base}/image/{rgb_name}",
            np.eye(3),
            depth_name,
            rgb_name,
            base.split("/", 1)[0],
        )
    paths["meta"] = metadata / "SUNRGBDMeta.mat"
    _common.write_mat_v5(paths["meta"], {"SUNRGBDMeta": meta})

    paths["seg"] = metadata / "SUNRGBD2Dseg.mat"
    file = _common.create_mat73(paths["seg"])
    try:
        group = file.create_group("SUNRGBD2Dseg")
        _common.set_matlab_class(group, "struct")
        labels = (np.asarray(s["label"]).astype(label_dtype) for s in scenes)
        _common.write_mat73_numeric_refs(
            group, "seglabel", labels, np.dtype(label_dtype).name, count=len(scenes)
        )
    finally:
        _common.close_mat73(file)

    split_dir = root / "SUNRGBDtoolbox" / "traintestSUNRGBD"
    split_dir.mkdir(parents=True, exist_ok=True)
    paths["split"] = split_dir / "allsplit.mat"
    half = len(train) // 2
    _common.write_mat_v5(
        paths["split"],
        {
            "alltrain": np.array(list(train), dtype=object).reshape(1, -1),
            "alltest": np.array(list(test), dtype=object).reshape(1, -1),
            "trainvalsplit": {
                "train": np.array(list(train[:half]), dtype=object).reshape(-1, 1),
                "val": np.array(list(train[half:]), dtype=object).reshape(-1, 1),
            },
        },
    )
    return paths
