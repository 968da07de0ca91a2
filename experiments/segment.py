r"""Segment images with a trained drd-jax run (full resolution, one image at a time).

    python -m experiments.segment --checkpoint=/tmp/student --output_dir=/tmp/seg a.jpg b.png
    python -m experiments.segment --checkpoint=/tmp/teacher --output_dir=/tmp/seg \
        --depth=a_depth.png,b_depth.npy a.jpg b.png

``--checkpoint`` is a workdir written by ``experiments.train``; its best-by-mIoU checkpoint is
used (``--which=latest`` for the newest). Each image is read as RGB and normalised exactly as in
evaluation (``drd_jax.data.transforms.normalize_image``), then run through the run's model at its
own size. A teacher run (``config.mode == 'teacher'``, depth-aware) needs ``--depth``: one depth
file per image, same order, comma-separated, each the image's size: a 16-bit PNG in millimetres or
a ``.npy`` float array (H, W) in metres; 0 = no reading. Other runs are RGB only and refuse
``--depth``.

Outputs in ``--output_dir`` (created if needed), for each image ``<stem>``:

* ``<stem>_labels.png``: uint8 grey PNG of the predicted 0-based class ids;
* ``<stem>_color.png``: the prediction coloured with ``drd_jax.visualize.class_palette``;

and ``legend.json``: ``{"checkpoint", "step", "mode", "classes": [{"id", "name", "color"}]}``.

Faults: every input (images, depth files, their sizes, distinct stems) and the checkpoint are
checked before anything runs; an error names the file and what was expected, nothing is written,
and the exit status is 1. Each output file is written atomically (temporary file + rename).
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import sys
from typing import NamedTuple

import numpy as np
from absl import app, flags, logging
from PIL import Image

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Workdir of a training run.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Directory for the outputs.")
_WHICH = flags.DEFINE_enum("which", "best", ["best", "latest"], "Checkpoint of the run to use.")
_DEPTH = flags.DEFINE_list(
    "depth",
    None,
    "Teacher runs only: comma-separated depth files, one per IMAGE in the same order "
    "(16-bit PNG in millimetres, or .npy float metres).",
)
flags.mark_flags_as_required(["checkpoint", "output_dir"])

LEGEND_NAME = "legend.json"
MAX_CLASSES = 255  # uint8 label PNG and drd_jax.visualize.class_palette


class SegmentError(Exception):
    """A fault to report to the user (one line per problem), exit status 1."""


class Input(NamedTuple):
    path: pathlib.Path
    image: np.ndarray  # uint8 (H, W, 3)
    depth: np.ndarray | None  # float32 (H, W) metres


def read_image(path: pathlib.Path) -> np.ndarray:
    """The RGB pixels of ``path`` as uint8 (H, W, 3); ``SegmentError`` naming it otherwise."""
    if not path.is_file():
        what = "not a regular file" if path.exists() else "no such file"
        raise SegmentError(f"image {path}: {what} (expected a readable RGB image)")
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"), np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise SegmentError(
            f"image {path}: cannot be read as an image ({e}); expected a readable RGB image"
        ) from None


def read_depth(path: pathlib.Path) -> np.ndarray:
    """Depth in metres, float32 (H, W): a 16-bit PNG in millimetres or a ``.npy`` in metres."""
    expected = "expected a 16-bit PNG in millimetres or a .npy float array (H, W) in metres"
    if not path.is_file():
        what = "not a regular file" if path.exists() else "no such file"
        raise SegmentError(f"depth {path}: {what} ({expected})")
    if path.suffix.lower() == ".npy":
        try:
            depth = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise SegmentError(f"depth {path}: cannot be read as .npy ({e}); {expected}") from None
        if depth.ndim == 3 and depth.shape[-1] == 1:
            depth = depth[..., 0]
        if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.floating):
            raise SegmentError(
                f"depth {path}: got a {depth.dtype} array of shape {depth.shape}; {expected}"
            )
        depth = depth.astype(np.float32)
        if not np.isfinite(depth).all() or (depth < 0).any():
            raise SegmentError(
                f"depth {path}: has NaN/inf or negative values; {expected} (0 = no reading)"
            )
        return depth
    try:
        with Image.open(path) as im:
            im.load()
            mode, fmt = im.mode, im.format
            mm = np.asarray(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise SegmentError(f"depth {path}: cannot be read as an image ({e}); {expected}") from None
    if fmt != "PNG" or not mode.startswith("I;16"):
        raise SegmentError(f"depth {path}: got a {fmt} image of mode {mode}; {expected}")
    return mm.astype(np.float32) / 1000.0


def load_inputs(images: list[str], depths: list[str] | None) -> list[Input]:
    """Reads and checks every image (and depth file); one ``SegmentError`` listing all faults."""
    errors: list[str] = []
    if depths is not None and len(depths) != len(images):
        raise SegmentError(
            f"--depth has {len(depths)} file(s) for {len(images)} image(s); give one depth "
            "file per image, in the same order"
        )
    stems: dict[str, str] = {}
    for name in images:
        stem = pathlib.Path(name).stem
        if stem in stems:
            errors.append(
                f"images {stems[stem]} and {name} have the same stem {stem!r}: their outputs "
                f"would overwrite each other ({stem}_labels.png); rename one"
            )
        stems.setdefault(stem, name)
    inputs = []
    for i, name in enumerate(images):
        path = pathlib.Path(name)
        try:
            image = read_image(path)
        except SegmentError as e:
            errors.append(str(e))
            image = None
        depth = None
        if depths is not None:
            dpath = pathlib.Path(depths[i])
            try:
                depth = read_depth(dpath)
            except SegmentError as e:
                errors.append(str(e))
            if depth is not None and image is not None and depth.shape != image.shape[:2]:
                errors.append(
                    f"depth {dpath}: size {depth.shape[1]}x{depth.shape[0]} (WxH) differs from "
                    f"image {path} ({image.shape[1]}x{image.shape[0]}); expected the same size"
                )
        inputs.append(Input(path, image, depth))
    if errors:
        raise SegmentError("\n".join(errors))
    return inputs


def output_paths(output_dir: pathlib.Path, path: pathlib.Path) -> tuple[pathlib.Path, ...]:
    """``(<stem>_labels.png, <stem>_color.png)`` of input ``path``."""
    return output_dir / f"{path.stem}_labels.png", output_dir / f"{path.stem}_color.png"


def encode_png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def predict_labels(run, inputs: list[Input]) -> list[np.ndarray]:
    """Argmax class ids (uint8 (H, W)) of every input, one image at a time at its own size."""
    from drd_jax.data import transforms

    predict = run.predictor()  # compiled once per distinct image size
    out = []
    for x in inputs:
        image = transforms.normalize_image(x.image)[None]  # as in evaluation
        depth = None if x.depth is None else x.depth[None]
        out.append(predict(image, depth)[0].astype(np.uint8))
    return out


def write_outputs(files: dict[pathlib.Path, bytes]) -> None:
    """Writes every file atomically; on a failure removes the ones this call created."""
    from drd_jax.files import atomic_write_bytes

    created = []
    for path, data in files.items():
        existed = path.exists()
        try:
            atomic_write_bytes(path, data)
        except OSError as e:
            for p in created:
                p.unlink(missing_ok=True)
            raise SegmentError(f"cannot write {path}: {e}") from None
        if not existed:
            created.append(path)


def segment(
    checkpoint: str,
    output_dir: str,
    images: list[str],
    *,
    depths: list[str] | None = None,
    which: str = "best",
) -> list[pathlib.Path]:
    """The whole command; returns the written paths. Raises ``SegmentError`` for user faults."""
    if not images:
        raise SegmentError("no images given: pass one or more image files after the flags")
    inputs = load_inputs(images, depths)
    out_dir = pathlib.Path(output_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise SegmentError(f"--output_dir {out_dir}: exists and is not a directory")
    resolved = {x.path.resolve() for x in inputs}
    for x in inputs:
        for p in output_paths(out_dir, x.path):
            if p.resolve() in resolved:
                raise SegmentError(f"output {p} would overwrite the input image of that name")

    from drd_jax import runs, visualize

    try:
        config, _ = runs.read_run_config(checkpoint)
    except (FileNotFoundError, ValueError) as e:
        raise SegmentError(f"--checkpoint: {e}") from None
    mode = config.get("mode")
    if mode == "teacher" and depths is None:
        raise SegmentError(
            f"--checkpoint {checkpoint} is a teacher run (depth-aware): give --depth with one "
            "depth file per image"
        )
    if mode != "teacher" and depths is not None:
        raise SegmentError(
            f"--checkpoint {checkpoint} is a {mode!r} run (RGB only) and does not use depth: "
            "drop --depth"
        )
    try:
        run = runs.load_run(checkpoint, checkpoint=which)
    except (FileNotFoundError, ValueError) as e:
        raise SegmentError(f"--checkpoint: {e}") from None
    num_classes = len(run.class_names)
    if not 1 <= num_classes <= MAX_CLASSES:
        raise SegmentError(
            f"--checkpoint {checkpoint}: {num_classes} classes; segment writes uint8 label maps "
            f"and supports 1..{MAX_CLASSES} classes"
        )

    try:  # before the (possibly long) inference; an empty directory is no partial output
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise SegmentError(f"--output_dir {out_dir}: cannot create the directory ({e})") from None

    labels = predict_labels(run, inputs)
    palette = visualize.class_palette(num_classes)
    files: dict[pathlib.Path, bytes] = {}
    for x, lab in zip(inputs, labels, strict=True):
        labels_path, color_path = output_paths(out_dir, x.path)
        files[labels_path] = encode_png(lab)
        files[color_path] = encode_png(visualize.colorize_labels(lab, palette))
    legend = {
        "checkpoint": str(run.workdir),
        "step": run.step,
        "mode": mode,
        "classes": [
            {"id": k, "name": name, "color": palette[k].tolist()}
            for k, name in enumerate(run.class_names)
        ],
    }
    files[out_dir / LEGEND_NAME] = (json.dumps(legend, indent=2) + "\n").encode("utf-8")
    write_outputs(files)
    return list(files)


def main(argv):
    if not flags.FLAGS["verbosity"].present:  # orbax logs every restore at INFO
        logging.set_verbosity(logging.WARNING)
    try:
        written = segment(
            _CHECKPOINT.value, _OUTPUT_DIR.value, argv[1:], depths=_DEPTH.value, which=_WHICH.value
        )
    except SegmentError as e:
        for line in str(e).splitlines():
            print(f"segment: error: {line}", file=sys.stderr)
        sys.exit(1)
    for path in written:
        print(path)


if __name__ == "__main__":
    app.run(main)
