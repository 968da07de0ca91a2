r"""Segment images with a trained drd-jax run or its export (full resolution, one image at a time).

    python -m experiments.segment --checkpoint=/tmp/student --output_dir=/tmp/seg a.jpg b.png
    python -m experiments.segment --checkpoint=/tmp/teacher --output_dir=/tmp/seg \
        --depth=a_depth.png,b_depth.npy a.jpg b.png
    python -m experiments.segment --checkpoint=/tmp/student_export --output_dir=/tmp/seg a.jpg

``--checkpoint`` is a workdir written by ``experiments.train``; its best-by-mIoU checkpoint is
used (``--which=latest`` for the newest). It may also be an export directory written by
``experiments.export`` (``drd_jax.serving``): its params and the network rebuilt from its card
then segment each image at full size (not its fixed-size ``model.stablehlo``); it is RGB only and
``--which`` does not apply. Each image is read as RGB and normalised exactly as in
evaluation (``drd_jax.data.transforms.normalize_image``), then run through the run's model at its
own size. Images are read as image viewers show them: turned by their EXIF orientation (a phone
photo stored sideways is segmented upright, and its outputs and depth file have the turned size),
16-bit grey images (e.g. PNG, TIFF) scaled to 8 bits by 1/257 (not clipped to white), 16-bit
RGB(A) PNGs read at 8 bits; 32-bit integer and float images (e.g. TIFF modes ``I`` and ``F``)
have no known range and are refused. A teacher run (``config.mode == 'teacher'``,
depth-aware) needs ``--depth``: one depth file per image, same order, comma-separated, each the
image's (turned) size: a 16-bit PNG in millimetres or a ``.npy`` float array (H, W) in metres;
0 = no reading. A file whose median valid depth is over 20 m is refused as not in those units
(e.g. a ``.npy`` in millimetres); ``--depth_scale`` (metres per stored unit, e.g. 0.001) reads
every depth file in the unit it names instead, unchecked.
Other runs and exports are RGB only and refuse ``--depth``.

Outputs in ``--output_dir`` (created if needed), for each image ``<stem>``:

* ``<stem>_labels.png``: uint8 grey PNG of the predicted 0-based class ids;
* ``<stem>_color.png``: the prediction coloured with ``drd_jax.visualize.class_palette``;

and ``legend.json``: ``{"checkpoint", "step", "mode", "classes": [{"id", "name", "color"}]}``
(for an export: its directory, and the step and mode of the run it was exported from).

Faults: every input (images, depth files, their sizes, distinct stems) and the checkpoint are
checked before anything runs; an error names the file and what was expected, nothing is written,
and the exit status is 1. A bad flag is one line (``error: ...``) with exit status 2
(``experiments/cli.py``). Each output file is written atomically (temporary file + rename).
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import sys
from typing import NamedTuple

import numpy as np
from absl import flags
from PIL import Image, ImageOps

from drd_jax.errors import UserError
from experiments import cli

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Workdir of a training run, or an export directory (experiments.export)."
)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Directory for the outputs.")
_WHICH = flags.DEFINE_enum("which", "best", ["best", "latest"], "Checkpoint of the run to use.")
_DEPTH = flags.DEFINE_list(
    "depth",
    None,
    "Teacher runs only: comma-separated depth files, one per IMAGE in the same order "
    "(16-bit PNG in millimetres, or .npy float metres).",
)
_DEPTH_SCALE = flags.DEFINE_float(
    "depth_scale",
    None,
    "Metres per stored unit of every --depth file (e.g. 0.001 for millimetres, 1 for metres). "
    "Default: 0.001 for 16-bit PNGs, 1 for .npy, and a median valid depth over 20 m is "
    "refused as not in metres.",
)
flags.register_validator(
    "depth_scale",
    lambda v: v is None or 0 < v < float("inf"),
    message="--depth_scale must be a finite number > 0 (metres per stored unit, e.g. 0.001)",
)
flags.mark_flags_as_required(["checkpoint", "output_dir"])

LEGEND_NAME = "legend.json"
# The largest median valid depth read as plausible metres: indoor RGB-D sensors read up to about
# 10 m (NYUv2 and SUN RGB-D clamp at 8-10 m); a median over 20 m means another unit (mm, cm).
MAX_MEDIAN_DEPTH_M = 20.0
# Units a depth file may be stored in, with metres per unit, for the hint of an implausible file.
DEPTH_UNITS = {
    "metres": 1.0,
    "centimetres": 0.01,
    "millimetres": 0.001,
    "tenths of a millimetre": 0.0001,
}
TYPICAL_DEPTH_M = 3.0  # a typical indoor median depth, to guess a file's unit
DEPTH_EXPECTED = "expected a 16-bit PNG in millimetres or a .npy float array (H, W) in metres"
MAX_CLASSES = 255  # uint8 label PNG and drd_jax.visualize.class_palette


class SegmentError(UserError):
    """A fault to report to the user (one line per problem), exit status 1."""

    exit_status = 1


class Input(NamedTuple):
    path: pathlib.Path
    image: np.ndarray  # uint8 (H, W, 3)
    depth: np.ndarray | None  # float32 (H, W) metres


# PIL modes of 16-bit grey pixels (0..65535), scaled to 0..255 by 1/257 (65535 -> 255, 257 -> 1).
GREY16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
IMAGE_EXPECTED = "expected a readable RGB image"


def _rgb8(im: Image.Image, path: pathlib.Path) -> np.ndarray:
    """The pixels of ``im`` (already oriented) as uint8 RGB (H, W, 3): 16-bit grey scaled by
    1/257, 32-bit integer or float pixels refused (their range is unknown), others by PIL."""
    if im.mode in GREY16_MODES or (im.mode == "I" and im.format == "PNG"):
        # PIL reads a 16-bit grey PNG as I;16 (or I, by older versions); convert("RGB") would
        # clip it to 255, nearly white. 16-bit RGB(A) PNGs PIL already reads at 8 bits.
        grey = np.asarray(im).astype(np.float64)
        if grey.size and (grey.min() < 0 or grey.max() > 65535):
            raise SegmentError(
                f"image {path}: mode {im.mode} pixels outside 0..65535; expected an 8- or 16-bit "
                "image"
            )
        grey = np.round(grey / 257.0).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if im.mode in ("I", "F"):
        kind = "32-bit integer" if im.mode == "I" else "floating-point"
        raise SegmentError(
            f"image {path}: mode {im.mode} ({kind} pixels of no known range) cannot be read as "
            "RGB; expected an 8- or 16-bit image (e.g. PNG, JPEG)"
        )
    return np.asarray(im.convert("RGB"), np.uint8)


def read_oriented_image(path: pathlib.Path) -> tuple[np.ndarray, tuple[int, int]]:
    """``(rgb, stored_size)``: the RGB pixels of ``path`` as uint8 (H, W, 3), turned by the
    file's EXIF orientation as image viewers show it, and the (H, W) the pixels are stored at
    (the same unless the orientation swaps them).

    8-bit images are read as PIL converts them to RGB; 16-bit grey images (PIL modes ``I;16``,
    ``I;16L``, ``I;16B``, ``I;16N``, and ``I`` of a PNG) are scaled to 8 bits by 1/257 (not
    clipped); 16-bit RGB(A) PNGs PIL reads at 8 bits. 32-bit integer (mode ``I``, not a PNG)
    and float (``F``) images have no known range and are refused.

    Raises:
      SegmentError: naming ``path``: missing, unreadable, or of an unsupported pixel mode.
    """
    if not path.is_file():
        what = "not a regular file" if path.exists() else "no such file"
        raise SegmentError(f"image {path}: {what} ({IMAGE_EXPECTED})")
    try:
        with Image.open(path) as im:
            im.load()
            stored_size = (im.height, im.width)
            oriented = ImageOps.exif_transpose(im)
            oriented.format = im.format  # transposing forgets it; _rgb8 reads it
            return _rgb8(oriented, path), stored_size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise SegmentError(
            f"image {path}: cannot be read as an image ({e}); {IMAGE_EXPECTED}"
        ) from None


def read_image(path: pathlib.Path) -> np.ndarray:
    """The RGB pixels of ``path`` as uint8 (H, W, 3), as :func:`read_oriented_image` reads them
    (EXIF orientation applied, 16-bit grey scaled); ``SegmentError`` naming it otherwise."""
    return read_oriented_image(path)[0]


def _read_depth_units(path: pathlib.Path) -> tuple[np.ndarray, float]:
    """``(values as stored, float32 (H, W); metres per unit of the format)``: a 16-bit PNG
    (millimetres, 0.001) or a ``.npy`` float array (metres, 1). ``SegmentError`` naming ``path``
    otherwise."""
    if not path.is_file():
        what = "not a regular file" if path.exists() else "no such file"
        raise SegmentError(f"depth {path}: {what} ({DEPTH_EXPECTED})")
    if path.suffix.lower() == ".npy":
        try:
            depth = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise SegmentError(
                f"depth {path}: cannot be read as .npy ({e}); {DEPTH_EXPECTED}"
            ) from None
        if depth.ndim == 3 and depth.shape[-1] == 1:
            depth = depth[..., 0]
        if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.floating):
            raise SegmentError(
                f"depth {path}: got a {depth.dtype} array of shape {depth.shape}; {DEPTH_EXPECTED}"
            )
        depth = depth.astype(np.float32)
        if not np.isfinite(depth).all() or (depth < 0).any():
            raise SegmentError(
                f"depth {path}: has NaN/inf or negative values; {DEPTH_EXPECTED} (0 = no reading)"
            )
        return depth, DEPTH_UNITS["metres"]
    try:
        with Image.open(path) as im:
            im.load()
            mode, fmt = im.mode, im.format
            stored = np.asarray(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise SegmentError(
            f"depth {path}: cannot be read as an image ({e}); {DEPTH_EXPECTED}"
        ) from None
    if fmt != "PNG" or not mode.startswith("I;16"):
        raise SegmentError(f"depth {path}: got a {fmt} image of mode {mode}; {DEPTH_EXPECTED}")
    return stored.astype(np.float32), DEPTH_UNITS["millimetres"]


def likely_unit(stored_median: float) -> str:
    """The :data:`DEPTH_UNITS` name that puts ``stored_median`` (in the file's units) closest
    to :data:`TYPICAL_DEPTH_M` (in log scale)."""
    return min(
        DEPTH_UNITS,
        key=lambda u: abs(np.log(stored_median * DEPTH_UNITS[u] / TYPICAL_DEPTH_M)),
    )


def check_depth_in_metres(stored: np.ndarray, metres_per_unit: float, path: pathlib.Path) -> None:
    """``SegmentError`` when the median valid (> 0) depth of ``stored`` (the file's values,
    (H, W)) times ``metres_per_unit`` is over :data:`MAX_MEDIAN_DEPTH_M`: the file holds another
    unit than its format's. The message names the likely unit and its ``--depth_scale``."""
    valid = stored[stored > 0]
    if valid.size == 0:
        return  # no reading at all: the teacher falls back to plain convs everywhere
    median = float(np.median(valid))
    if median * metres_per_unit > MAX_MEDIAN_DEPTH_M:
        read_as = next(u for u, m in DEPTH_UNITS.items() if m == metres_per_unit)
        unit = likely_unit(median)
        raise SegmentError(
            f"depth {path}: read as {read_as}, its median valid depth is "
            f"{median * metres_per_unit:.4g} m, over {MAX_MEDIAN_DEPTH_M:g} m: it looks like "
            f"{unit}; convert it, or pass --depth_scale={DEPTH_UNITS[unit]:g} (metres per "
            "stored unit)"
        )


def read_depth(path: pathlib.Path, *, scale: float | None = None) -> np.ndarray:
    """Depth in metres, float32 (H, W), from a 16-bit PNG or a ``.npy`` file.

    Args:
      path: the depth file.
      scale: metres per stored unit (``--depth_scale``). None: the format's unit (PNG
        millimetres, ``.npy`` metres), and a median valid depth over :data:`MAX_MEDIAN_DEPTH_M`
        is refused as another unit (e.g. a ``.npy`` in millimetres).

    Raises:
      SegmentError: naming ``path``: unreadable, not one of the two formats, NaN/negative
        values, or (without ``scale``) an implausible unit.
    """
    stored, metres_per_unit = _read_depth_units(path)
    if scale is None:
        check_depth_in_metres(stored, metres_per_unit, path)
        scale = metres_per_unit
    return stored * np.float32(scale)


def load_inputs(
    images: list[str], depths: list[str] | None, *, depth_scale: float | None = None
) -> list[Input]:
    """Reads and checks every image (and depth file, ``depth_scale`` as :func:`read_depth`);
    one ``SegmentError`` listing all faults."""
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
            image, stored_size = read_oriented_image(path)
        except SegmentError as e:
            errors.append(str(e))
            image = stored_size = None
        depth = None
        if depths is not None:
            dpath = pathlib.Path(depths[i])
            try:
                depth = read_depth(dpath, scale=depth_scale)
            except SegmentError as e:
                errors.append(str(e))
            if depth is not None and image is not None and depth.shape != image.shape[:2]:
                h, w = image.shape[:2]
                turned = (
                    ""
                    if stored_size == (h, w)
                    else f" as turned by its EXIF orientation; {stored_size[1]}x{stored_size[0]} "
                    "as stored"
                )
                errors.append(
                    f"depth {dpath}: size {depth.shape[1]}x{depth.shape[0]} (WxH) differs from "
                    f"image {path} ({w}x{h}{turned}); expected the same size"
                    + (" as the turned image" if turned else "")
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


def predict_labels(network, inputs: list[Input]) -> list[np.ndarray]:
    """Argmax class ids (uint8 (H, W)) of every input, one image at a time at its own size, by
    ``network.predictor()`` (a run's or an export's)."""
    from drd_jax.data import transforms

    predict = network.predictor()  # compiled once per distinct image size
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


def load_network(checkpoint: str, *, which: str, depths: list[str] | None):
    """``(network, legend head)`` of ``--checkpoint``: a run (``drd_jax.runs.RunCheckpoint``, its
    ``which`` checkpoint) or an export directory (``drd_jax.serving.ExportedNetwork``; ``which``
    does not apply); both have ``class_names`` and ``predictor()``. The head is legend.json's
    ``{"checkpoint", "step", "mode"}``. ``SegmentError`` for a checkpoint that cannot be read or
    that does not take ``depths`` (a teacher run needs them, every other network refuses them)."""
    from drd_jax import runs, serving

    if serving.is_export_dir(checkpoint):
        if depths is not None:
            raise SegmentError(
                f"--checkpoint {checkpoint} is an exported network (RGB only) and does not use "
                "depth: drop --depth"
            )
        try:
            exported = serving.load_export(checkpoint)
        except (FileNotFoundError, ValueError) as e:
            raise SegmentError(f"--checkpoint: {e}") from None
        source = exported.card.get("source") or {}  # the run it was exported from
        step, mode = source.get("step"), source.get("mode")
        return exported, {"checkpoint": str(exported.path), "step": step, "mode": mode}
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
    return run, {"checkpoint": str(run.workdir), "step": run.step, "mode": mode}


def segment(
    checkpoint: str,
    output_dir: str,
    images: list[str],
    *,
    depths: list[str] | None = None,
    which: str = "best",
    depth_scale: float | None = None,
) -> list[pathlib.Path]:
    """The whole command; returns the written paths. Raises ``SegmentError`` for user faults."""
    if not images:
        raise SegmentError("no images given: pass one or more image files after the flags")
    if depth_scale is not None and depths is None:
        raise SegmentError("--depth_scale applies to --depth files: give --depth, or drop it")
    if depth_scale is not None and not (0 < depth_scale < float("inf")):
        raise SegmentError(f"--depth_scale must be a finite number > 0, got {depth_scale}")
    inputs = load_inputs(images, depths, depth_scale=depth_scale)
    out_dir = pathlib.Path(output_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise SegmentError(f"--output_dir {out_dir}: exists and is not a directory")
    resolved = {x.path.resolve() for x in inputs}
    for x in inputs:
        for p in output_paths(out_dir, x.path):
            if p.resolve() in resolved:
                raise SegmentError(f"output {p} would overwrite the input image of that name")

    from drd_jax import visualize

    network, head = load_network(checkpoint, which=which, depths=depths)
    num_classes = len(network.class_names)
    if not 1 <= num_classes <= MAX_CLASSES:
        raise SegmentError(
            f"--checkpoint {checkpoint}: {num_classes} classes; segment writes uint8 label maps "
            f"and supports 1..{MAX_CLASSES} classes"
        )

    try:  # before the (possibly long) inference; an empty directory is no partial output
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise SegmentError(f"--output_dir {out_dir}: cannot create the directory ({e})") from None

    labels = predict_labels(network, inputs)
    palette = visualize.class_palette(num_classes)
    files: dict[pathlib.Path, bytes] = {}
    for x, lab in zip(inputs, labels, strict=True):
        labels_path, color_path = output_paths(out_dir, x.path)
        files[labels_path] = encode_png(lab)
        files[color_path] = encode_png(visualize.colorize_labels(lab, palette))
    legend = {
        **head,
        "classes": [
            {"id": k, "name": name, "color": palette[k].tolist()}
            for k, name in enumerate(network.class_names)
        ],
    }
    files[out_dir / LEGEND_NAME] = (json.dumps(legend, indent=2) + "\n").encode("utf-8")
    write_outputs(files)
    return list(files)


def main(argv):
    try:
        written = segment(
            _CHECKPOINT.value,
            _OUTPUT_DIR.value,
            argv[1:],
            depths=_DEPTH.value,
            which=_WHICH.value,
            depth_scale=_DEPTH_SCALE.value,
        )
    except SegmentError as e:
        for line in str(e).splitlines():
            print(f"segment: error: {line}", file=sys.stderr)
        sys.exit(1)
    for path in written:
        print(path)


if __name__ == "__main__":
    cli.run(main, config_flags=())
