"""Numpy transforms of RGB-D segmentation examples (no JAX, no grain; testable on plain arrays).

An *example* here is a dict with

* ``image``: float32 (H, W, 3), RGB on the 0..255 scale (before normalisation);
* ``depth``: float32 (H, W), metres, 0 = no reading;
* ``label``: int32 (H, W), 0..K-1 with ``IGNORE_LABEL`` (255) = void (see ``map_labels``).

``prepare`` turns a stored example (uint8 image, uint8/uint16 labels 0 = void, 1..K) into this form;
``resample`` does resize + crop/pad + horizontal flip in one pass, with the same pixel mapping for
all three maps (image bilinear, depth and label nearest), so they stay aligned by construction;
``random_scale_crop_flip`` and ``color_jitter`` draw their parameters from a
``np.random.Generator``; ``normalize_image`` applies the ImageNet mean/std. Padding: image = the
ImageNet mean colour (so it normalises to exactly 0), depth = 0 (invalid), label = ``IGNORE_LABEL``.

Pixel mapping (half-pixel centres, as ``jax.image.resize`` / TF ``half_pixel_centers``): output
pixel ``i`` of a ``scaled``-long axis samples source coordinate ``(i + 0.5) * src / scaled - 0.5``;
bilinear clamps at the border, nearest takes ``floor((i + 0.5) * src / scaled)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from drd_jax.errors import DataError

IGNORE_LABEL = 255
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
MEAN_PIXEL = IMAGENET_MEAN * 255.0  # image padding value, normalises to 0
_NORM_SCALE = (1.0 / (255.0 * IMAGENET_STD)).astype(np.float32)
_NORM_OFFSET = (-IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)


def check_size(value, name: str) -> tuple[int, int]:
    """``value`` as an (height, width) pair of positive ints, or a ValueError naming ``name``."""
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a pair of positive ints (height, width), got {value!r}"
        ) from None
    if h <= 0 or w <= 0 or (h, w) != tuple(value):
        raise ValueError(f"{name} must be a pair of positive ints (height, width), got {value!r}")
    return h, w


def map_labels(label: np.ndarray, num_classes: int) -> np.ndarray:
    """Stored labels (0 = void, 1..num_classes) -> int32 0..num_classes-1 with 255 = void."""
    label = np.asarray(label)
    if label.size and int(label.max()) > num_classes:
        raise DataError(
            f"label value {int(label.max())} exceeds num_classes={num_classes} "
            "(stored labels must be 0 = void or 1..num_classes)"
        )
    out = label.astype(np.int32) - 1
    out[label == 0] = IGNORE_LABEL
    return out


def prepare(example: Mapping[str, np.ndarray], num_classes: int) -> dict[str, np.ndarray]:
    """A stored example -> float32 image (0..255), float32 depth (metres), mapped int32 label."""
    image = np.asarray(example["image"])
    depth = np.asarray(example["depth"], np.float32)
    label = np.asarray(example["label"])
    if image.ndim != 3 or image.shape[-1] != 3:
        raise DataError(f"image must be (H, W, 3), got shape {image.shape}")
    if depth.shape != image.shape[:2] or label.shape != image.shape[:2]:
        raise DataError(
            f"image {image.shape}, depth {depth.shape} and label {label.shape} must share (H, W)"
        )
    return {
        "image": image.astype(np.float32),
        "depth": depth,
        "label": map_labels(label, num_classes),
    }


def normalize_image(image: np.ndarray) -> np.ndarray:
    """RGB on the 0..255 scale -> (x / 255 - ImageNet mean) / ImageNet std, float32."""
    return np.asarray(image, np.float32) * _NORM_SCALE + _NORM_OFFSET


def _axis_map(src: int, scaled: int, offset: int, out: int, flip: bool):
    """Source indices for one axis: bilinear (i0, i1, w), nearest index and validity mask."""
    pos = np.arange(out)
    if flip:
        pos = pos[::-1]
    pos = pos + offset  # position in the scaled (and padded) image
    valid = (pos >= 0) & (pos < scaled)
    ratio = src / scaled
    coord = (pos + 0.5) * ratio - 0.5
    i0 = np.floor(coord)
    w = (coord - i0).astype(np.float32)
    i0 = i0.astype(np.int64)
    i1 = np.clip(i0 + 1, 0, src - 1)
    i0 = np.clip(i0, 0, src - 1)
    nearest = np.clip(np.floor((pos + 0.5) * ratio).astype(np.int64), 0, src - 1)
    return i0, i1, w, nearest, valid


def resample(
    example: Mapping[str, np.ndarray],
    *,
    scaled_size: Sequence[int],
    offset: Sequence[int] = (0, 0),
    out_size: Sequence[int] | None = None,
    flip: bool = False,
) -> dict[str, np.ndarray]:
    """Resize to ``scaled_size``, take the ``out_size`` window at ``offset``, optionally mirror it.

    The window may extend past the scaled image (bottom/right, or a negative offset): those pixels
    are padding (image: mean colour, depth: 0, label: 255). ``flip`` mirrors the window left-right.
    Only the window is computed, so a large scale costs no more than a small one. Keys other than
    image/depth/label are copied unchanged.
    """
    sh, sw = check_size(scaled_size, "scaled_size")
    oh, ow = check_size(out_size if out_size is not None else scaled_size, "out_size")
    image, depth, label = example["image"], example["depth"], example["label"]
    h, w = depth.shape
    ry0, ry1, wy, ryn, vy = _axis_map(h, sh, int(offset[0]), oh, False)
    rx0, rx1, wx, rxn, vx = _axis_map(w, sw, int(offset[1]), ow, flip)
    valid = vy[:, None] & vx[None, :]

    # Separable bilinear: rows first (on the source width), then columns.
    img = np.asarray(image, np.float32)
    wy3 = wy[:, None, None]
    rows = img[ry0] * (1.0 - wy3) + img[ry1] * wy3
    wx3 = wx[None, :, None]
    out_image = rows[:, rx0] * (1.0 - wx3) + rows[:, rx1] * wx3
    out_depth = np.asarray(depth, np.float32)[ryn][:, rxn]
    out_label = np.asarray(label)[ryn][:, rxn].astype(np.int32)
    if not valid.all():
        out_image[~valid] = MEAN_PIXEL
        out_depth[~valid] = 0.0
        out_label[~valid] = IGNORE_LABEL
    out = dict(example)
    out.update(image=out_image, depth=out_depth, label=out_label)
    return out


def resize(example: Mapping[str, np.ndarray], size: Sequence[int]) -> dict[str, np.ndarray]:
    """Resize image (bilinear), depth and label (nearest) to ``size`` = (height, width)."""
    return resample(example, scaled_size=size)


def crop(
    example: Mapping[str, np.ndarray], offset: Sequence[int], size: Sequence[int]
) -> dict[str, np.ndarray]:
    """The ``size`` window at ``offset`` (no resize); parts outside the image are padding."""
    h, w = example["depth"].shape
    return resample(example, scaled_size=(h, w), offset=offset, out_size=size)


def hflip(example: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Mirror image, depth and label left-right."""
    h, w = example["depth"].shape
    return resample(example, scaled_size=(h, w), flip=True)


def sample_scale_crop_flip(
    rng: np.random.Generator,
    image_size: Sequence[int],
    *,
    crop_size: Sequence[int],
    scale_range: Sequence[float] = (0.75, 1.75),
    flip_prob: float = 0.5,
) -> dict:
    """Draw ``resample`` arguments: scale ~ U(scale_range), then pad (bottom/right) to at least
    ``crop_size`` and take a uniformly random ``crop_size`` window, mirrored with ``flip_prob``."""
    h, w = image_size
    ch, cw = crop_size
    scale = float(rng.uniform(scale_range[0], scale_range[1]))
    sh, sw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    oy = int(rng.integers(0, max(sh, ch) - ch + 1))
    ox = int(rng.integers(0, max(sw, cw) - cw + 1))
    flip = bool(rng.random() < flip_prob)
    return {"scaled_size": (sh, sw), "offset": (oy, ox), "out_size": (ch, cw), "flip": flip}


def random_scale_crop_flip(
    example: Mapping[str, np.ndarray],
    rng: np.random.Generator,
    *,
    crop_size: Sequence[int],
    scale_range: Sequence[float] = (0.75, 1.75),
    flip_prob: float = 0.5,
) -> dict[str, np.ndarray]:
    """Random scale, pad-and-crop to ``crop_size`` and horizontal flip, alike for all maps."""
    args = sample_scale_crop_flip(
        rng, example["depth"].shape, crop_size=crop_size, scale_range=scale_range,
        flip_prob=flip_prob,
    )  # fmt: skip
    return resample(example, **args)


def color_jitter(image: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Brightness, contrast and saturation, each scaled by U(1 - strength, 1 + strength).

    RGB only (depth is never jittered); the result is clipped to 0..255.
    """
    image = np.asarray(image, np.float32)
    if strength <= 0:
        return image
    b, c, s = rng.uniform(1.0 - strength, 1.0 + strength, size=3)
    image = image * b
    mean = image.mean()
    image = (image - mean) * c + mean
    grey = image @ np.array([0.299, 0.587, 0.114], np.float32)
    image = (image - grey[..., None]) * s + grey[..., None]
    return np.clip(image, 0.0, 255.0).astype(np.float32)


def finalize(example: Mapping[str, np.ndarray], *, include_raw_image: bool = False) -> dict:
    """Normalise the image; optionally keep the uint8 RGB as ``raw_image`` (for figures)."""
    out = dict(example)
    if include_raw_image:
        out["raw_image"] = np.clip(np.round(example["image"]), 0, 255).astype(np.uint8)
    out["image"] = normalize_image(example["image"])
    return out


def train_transform(
    example: Mapping[str, np.ndarray],
    rng: np.random.Generator,
    *,
    num_classes: int,
    crop_size: Sequence[int],
    scale_range: Sequence[float] = (0.75, 1.75),
    flip_prob: float = 0.5,
    color_jitter_strength: float = 0.0,
    include_raw_image: bool = False,
) -> dict[str, np.ndarray]:
    """A stored example -> one augmented training example (normalised image, mapped labels).

    Draws, in order: colour jitter (only if ``color_jitter_strength > 0``), scale, crop offset,
    flip. Output: image float32 (h, w, 3) normalised, depth float32 (h, w), label int32 (h, w).
    """
    ex = prepare(example, num_classes)
    ex["image"] = color_jitter(ex["image"], rng, color_jitter_strength)
    ex = random_scale_crop_flip(
        ex, rng, crop_size=crop_size, scale_range=scale_range, flip_prob=flip_prob
    )
    return finalize(ex, include_raw_image=include_raw_image)


def eval_transform(
    example: Mapping[str, np.ndarray], *, num_classes: int, include_raw_image: bool = False
) -> dict[str, np.ndarray]:
    """A stored example at full resolution, no augmentation: normalised image, mapped labels."""
    return finalize(prepare(example, num_classes), include_raw_image=include_raw_image)


def pad_to(example: Mapping[str, np.ndarray], size: Sequence[int]) -> dict[str, np.ndarray]:
    """Pad a *finalised* example (normalised image) at the bottom/right to ``size``.

    image pads with 0 (= the mean colour after normalisation), depth with 0, label with 255,
    raw_image (if present) with the mean colour.
    """
    h, w = example["depth"].shape
    th, tw = size
    if th < h or tw < w:
        raise ValueError(f"pad_to size {tuple(size)} is smaller than the example ({h}, {w})")
    pads = ((0, th - h), (0, tw - w))
    out = dict(example)
    out["image"] = np.pad(example["image"], pads + ((0, 0),))
    out["depth"] = np.pad(example["depth"], pads)
    out["label"] = np.pad(example["label"], pads, constant_values=IGNORE_LABEL)
    if "raw_image" in example:
        raw = np.empty((th, tw, 3), np.uint8)
        raw[...] = np.round(MEAN_PIXEL).astype(np.uint8)
        raw[:h, :w] = example["raw_image"]
        out["raw_image"] = raw
    return out
