r"""What the D-Conv sees: mean off-centre depth weight H per stage of DeepLab-VGG16.

The teacher weights each off-centre tap of a 3×3 window by ``H = exp(−α·|D(p + d·o) − D(p)|)``.
Where H is near 1 the teacher's weights work as plain-conv weights (parameter sharing); where it is
far from 1 they do not. This prints the mean of H over the off-centre taps of every window, per
stage, with depth resized between stages as the model resizes it (``ops.pool_depth``, 3×3/2
``valid_mean`` after blocks 1–3):

========  =========  ==========  ===========================
stage     depth map  dilation    tap offset (input pixels)
========  =========  ==========  ===========================
conv1     1/1        1           1
conv2     1/2        1           2
conv3     1/4        1           4
conv4     1/8        1           8
conv5     1/8        2           16
fc6       1/8        12          96
========  =========  ==========  ===========================

Only pairs where both pixels are inside the map and have a depth reading count (the op gives the
others H = 1, which says nothing about the scene: a padded tap multiplies a zero feature); a stage
with no such pair prints '–'. ``--padded_taps`` averages every tap instead, padding at H = 1 (the
convention of the target table, FIDELITY.md, 'Calibrating synthetic_rgbd': it lifts fc6 of a
480×640 frame from 0.27 to 0.45, and makes fc6 of a 120×160 map, whose dilation-12 taps mostly fall
outside it, meaningless).

    python -m experiments.fidelity.depth_weight_stats --nyuv2_frame                   # real frame
    python -m experiments.fidelity.depth_weight_stats --nyuv2_frame --resize=120x160  # downsized
    python -m experiments.fidelity.depth_weight_stats \
        --dataset=synthetic_rgbd/default --data_dir=/tmp/d

``--nyuv2_frame`` reads ``../shared/data/nyuv2_sample/NYUDepthv2/Depth/0.npy`` (or the file given
with ``--depth_file``: a float ``.npy`` in metres). ``--dataset`` averages over the first
``--num_images`` images of ``--split`` of a built TFDS dataset.
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Iterable

import numpy as np
from absl import app, flags

from drd_jax.errors import ConfigError, DataError

FLAGS = flags.FLAGS

STAGES = (  # (name, pooling steps before it, dilation)
    ("conv1", 0, 1),
    ("conv2", 1, 1),
    ("conv3", 2, 1),
    ("conv4", 3, 1),
    ("conv5", 3, 2),
    ("fc6", 3, 12),
)
DEFAULT_FRAME = (
    pathlib.Path(__file__).resolve().parents[2].parent
    / "shared"
    / "data"
    / "nyuv2_sample"
    / "NYUDepthv2"
    / "Depth"
    / "0.npy"
)


def stage_depths(depth: np.ndarray) -> list[np.ndarray]:
    """Depth (N, H, W) at full resolution and after each of the model's three stride-2 poolings."""
    import jax.numpy as jnp

    from drd_jax import ops

    maps = [jnp.asarray(depth, jnp.float32)]
    for _ in range(3):
        maps.append(
            ops.pool_depth(maps[-1], window=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        )
    return [np.asarray(m) for m in maps]


def off_centre_weights(
    depth: np.ndarray, dilation: int, alpha: float, *, padded_taps: bool = False
) -> np.ndarray:
    """H of every off-centre tap of every 3×3 window (dilation ``dilation``) whose two pixels are
    inside the map with valid depth, as a flat array (every tap, H = 1 for the others, with
    ``padded_taps``)."""
    import jax.numpy as jnp
    from jax import lax

    from drd_jax import ops

    sim = np.asarray(ops.depth_similarity(depth, 3, alpha=alpha, dilation=(dilation, dilation)))
    off = [k for k in range(9) if k != 4]
    if padded_taps:
        return sim[..., off].ravel()
    valid = (np.isfinite(depth) & (depth > 0)).astype(np.float32)[..., None]
    windows = np.asarray(
        lax.conv_general_dilated_patches(
            jnp.asarray(valid),
            filter_shape=(3, 3),
            window_strides=(1, 1),
            padding="SAME",
            rhs_dilation=(dilation, dilation),
            dimension_numbers=("NHWC", "OIHW", "NHWC"),
        )
    )
    both = (windows > 0.5) & (windows[..., 4:5] > 0.5)
    return sim[..., off][both[..., off]]


def stage_means(
    depth: np.ndarray, alpha: float = 8.3, *, padded_taps: bool = False
) -> dict[str, float | None]:
    """``{stage: mean off-centre H}`` for depth maps (N, H, W) in metres (None: no pair)."""
    maps = stage_depths(depth)
    out = {}
    for name, pools, dilation in STAGES:
        h = off_centre_weights(maps[pools], dilation, alpha, padded_taps=padded_taps)
        out[name] = float(h.mean()) if h.size else None
    return out


def resize_area(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, H, W) depth resized to ``size`` by area averaging (antialiased linear)."""
    import jax
    import jax.numpy as jnp

    n = depth.shape[0]
    out = jax.image.resize(jnp.asarray(depth), (n, *size), method="linear", antialias=True)
    return np.asarray(out)


def markdown_row(label: str, means: dict[str, float | None]) -> str:
    cells = ["–" if means[s] is None else f"{means[s]:.2f}" for s, _, _ in STAGES]
    return f"| {label} | " + " | ".join(cells) + " |"


def markdown_table(rows: Iterable[tuple[str, dict]]) -> str:
    head = "| input | " + " | ".join(s for s, _, _ in STAGES) + " |"
    lines = [head, "|---|" + "---|" * len(STAGES)]
    lines += [markdown_row(label, means) for label, means in rows]
    return "\n".join(lines)


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--resize: expected 'HxW' such as 120x160, got {text!r}") from None
    if h < 1 or w < 1:
        raise ConfigError(f"--resize: sizes must be positive, got {text!r}")
    return h, w


def _load_frame(path: str) -> np.ndarray:
    p = pathlib.Path(path)
    try:
        depth = np.load(p)
    except (OSError, ValueError) as e:
        raise DataError(f"--depth_file {p}: cannot read a .npy depth map ({e})") from None
    if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.floating):
        raise DataError(
            f"--depth_file {p}: expected a 2-D float array of metres, got {depth.dtype} "
            f"{depth.shape}"
        )
    return depth[None].astype(np.float32)


def dataset_depths(
    name: str, data_dir: str | None, split: str, count: int, *, prepare: bool = False
) -> np.ndarray:
    """Depth maps (N, H, W) of the first ``count`` examples of ``split`` of a TFDS dataset
    (built first with ``prepare``)."""
    from drd_jax import input_pipeline

    source = input_pipeline.load_data_source(name, split, data_dir=data_dir, prepare=prepare)
    count = min(count, len(source))
    return np.stack([np.asarray(source[i]["depth"], np.float32) for i in range(count)])


def define_flags() -> None:
    """The command line (defined only when run as a script, so importing this module is free)."""
    flags.DEFINE_string("dataset", None, "A built TFDS dataset, e.g. nyuv2/40.")
    flags.DEFINE_string("data_dir", None, "Its TFDS data dir.")
    flags.DEFINE_string("split", "train", "Split of --dataset.")
    flags.DEFINE_integer("num_images", 50, "Images of --dataset averaged over.")
    flags.DEFINE_bool("nyuv2_frame", False, "Use one real depth map (--depth_file).")
    flags.DEFINE_string("depth_file", str(DEFAULT_FRAME), "A .npy depth map (metres).")
    flags.DEFINE_string("resize", None, "Resize the depth first, 'HxW' (area average).")
    flags.DEFINE_float("alpha", 8.3, "Depth similarity sharpness, 1/metre.")
    flags.DEFINE_bool(
        "padded_taps", False, "Average every tap, out-of-image and invalid ones at H = 1."
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    try:
        if FLAGS.nyuv2_frame == bool(FLAGS.dataset):
            raise ConfigError("give exactly one of --nyuv2_frame and --dataset")
        if FLAGS.dataset:
            depth = dataset_depths(FLAGS.dataset, FLAGS.data_dir, FLAGS.split, FLAGS.num_images)
            label = f"{FLAGS.dataset} ({FLAGS.split}, {depth.shape[0]} images)"
        else:
            depth = _load_frame(FLAGS.depth_file)
            label = f"{pathlib.Path(FLAGS.depth_file).name}"
        label += f", {depth.shape[1]}×{depth.shape[2]}"
        if FLAGS.resize:
            size = _parse_size(FLAGS.resize)
            depth = resize_area(depth, size)
            label += f" resized to {size[0]}×{size[1]}"
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    taps = "every tap, padding at H = 1" if FLAGS.padded_taps else "in-image pairs with depth"
    print(f"Mean off-centre H, α = {FLAGS.alpha:g}/m, {taps} (depth resized as the model does)\n")
    means = stage_means(depth, FLAGS.alpha, padded_taps=FLAGS.padded_taps)
    print(markdown_table([(label, means)]))
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
