r"""Judge ``synthetic_rgbd`` variants by FIDELITY.md's calibration criteria (no student involved).

    python -m experiments.fidelity.calibrate_synthetic --workdir=/tmp/calib \
        --variants=default,calib_a
    python -m experiments.fidelity.calibrate_synthetic --workdir=/tmp/calib --variants=calib_c \
        --steps=1920 --budget=long --modes=baseline      # the long-budget criterion
    python -m experiments.fidelity.calibrate_synthetic --workdir=/tmp/calib --variants=calib_e \
        --steps=450 --set='crop_size=(64, 80)' --modes=baseline   # another demo shape

For each variant (a config of ``tfds_builders.synthetic_rgbd``): build it, print the mean
off-centre depth weight H per stage (``experiments.fidelity.depth_weight_stats``), train the RGB
baseline (BL) and the depth-aware teacher (TN) with the ``synthetic.py:demo`` settings for
``--steps`` (default: the demo's), and check, without ever looking at a student:

* **RGB is informative**: BL's IoU ≥ 5 on every class at the demo budget; ≥ 30 on every object
  class at a long budget;
* **depth helps**: TN − BL ≥ 10 mIoU at the demo budget;
* **the D-Conv sees what it sees on real data**: every stage's mean off-centre H (in-image pairs)
  within ±0.08 of the real NYUv2 frame at 480×640 (``REAL_FRAME_H``).

Each record also holds the per-class IoU of a pixel-wise colour lookup (:func:`colour_lookup_iou`,
no network): how much a single pixel's colour tells, whatever a network makes of it.

Each variant's record (H per stage, per-class IoU of each run, the verdicts) is appended to
``<workdir>/calibration.jsonl`` and printed as Markdown. Runs live in
``<workdir>/<variant>/<mode>_<steps>steps_seed<seed>`` and are reused when finished with the same
config (``experiments.reproduce.train_or_reuse``).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from absl import app, flags

from drd_jax.errors import ConfigError

FLAGS = flags.FLAGS

# Mean off-centre H per stage of the real NYUv2 frame #1 at 480×640, in-image pairs
# (python -m experiments.fidelity.depth_weight_stats --nyuv2_frame).
REAL_FRAME_H = {
    "conv1": 0.95,
    "conv2": 0.91,
    "conv3": 0.85,
    "conv4": 0.77,
    "conv5": 0.65,
    "fc6": 0.27,
}
H_TOLERANCE = 0.08
DEMO_MIN_IOU = 5.0  # % on every class, BL at the demo budget
LONG_MIN_OBJECT_IOU = 30.0  # % on every object class, BL at a long budget
MIN_DEPTH_GAIN = 10.0  # TN − BL mIoU (points) at the demo budget
OBJECT_CLASSES = ("box", "ball", "pole", "cone")


def parse_overrides(items: list[str] | None) -> dict:
    """``['width=0.125', 'optimizer=sgd']`` -> ``{'width': 0.125, 'optimizer': 'sgd'}``."""
    import ast

    out = {}
    for item in items or []:
        field, sep, text = item.partition("=")
        if not sep or not field:
            raise ConfigError(f"--set: expected field=value, got {item!r}")
        try:
            out[field] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[field] = text
    return out


def apply_overrides(config, overrides: dict, *, flag: str = "--set"):
    """Sets ``overrides`` (field -> value) on ``config``; a ``ValueError`` naming ``flag`` for a
    field the config lacks or a value of the wrong type (ints are taken for float fields)."""
    for field, value in overrides.items():
        if field not in config:
            raise ConfigError(f"{flag}: no config field {field!r}")
        try:
            config[field] = value
        except TypeError as e:
            raise ConfigError(f"{flag}: {field}={value!r}: {e}") from None
    return config


def run_config(
    variant: str, mode: str, steps: int, seed: int, data_dir: str, overrides: dict | None = None
):
    """The demo config on ``synthetic_rgbd/<variant>`` for ``mode``, with config ``overrides``."""
    from experiments.configs import synthetic

    c = synthetic.get_config("demo")
    c.dataset = f"synthetic_rgbd/{variant}"
    c.data_dir = data_dir
    c.mode = mode
    c.num_train_steps = steps
    c.eval_every_steps = max(1, steps // 4)
    c.seed = seed
    c.progress_bar = False
    c.write_curves = False
    return apply_overrides(c, overrides or {})


def verdicts(record: dict, budget: str) -> dict[str, bool]:
    """The criteria this record can decide (a criterion whose runs it lacks is left out)."""
    out: dict[str, bool] = {}
    h = record["h"]
    out["h_within_tolerance"] = all(
        h[s] is not None and abs(h[s] - REAL_FRAME_H[s]) <= H_TOLERANCE for s in REAL_FRAME_H
    )
    bl = record["runs"].get("baseline")
    tn = record["runs"].get("teacher")
    demo = budget == "demo"
    if bl is not None and demo:
        out["bl_every_class_iou_ge_5"] = min(bl["per_class_iou"].values()) >= DEMO_MIN_IOU
    if bl is not None and not demo:
        objects = [bl["per_class_iou"][c] for c in OBJECT_CLASSES]
        out["bl_every_object_iou_ge_30"] = min(objects) >= LONG_MIN_OBJECT_IOU
    if bl is not None and tn is not None and demo:
        out["tn_minus_bl_ge_10"] = tn["mean_iou"] - bl["mean_iou"] >= MIN_DEPTH_GAIN
    return out


def colour_lookup_iou(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    num_classes: int,
    *,
    bin_width: int = 16,
) -> np.ndarray:
    """Per-class test IoU (%) of the best pixel-wise colour lookup: no network, no context.

    Every RGB colour, quantised into ``bin_width``-wide bins per channel, is given the class most
    frequent among the train pixels of that bin (bins never seen: class 0). A bound from below on
    what a single pixel's colour tells about its class.

    Args:
      train_images, test_images: uint8 ``(N, H, W, 3)``.
      train_labels, test_labels: ``(N, H, W)``, 0..num_classes-1, anything else (void) ignored.
      num_classes: number of classes.
    Returns:
      float64 ``(num_classes,)``: IoU in %, NaN for a class absent from both prediction and truth.
    """
    from drd_jax import metrics

    bins = 256 // bin_width

    def codes(images):
        q = np.asarray(images, np.int64).reshape(-1, 3) // bin_width
        return (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]

    labels = np.asarray(train_labels, np.int64).reshape(-1)
    keep = (labels >= 0) & (labels < num_classes)
    counts = np.zeros((bins**3, num_classes), np.int64)
    np.add.at(counts, (codes(train_images)[keep], labels[keep]), 1)
    predictions = counts.argmax(axis=1)[codes(test_images)]
    cm = np.asarray(
        metrics.confusion_matrix(
            np.asarray(test_labels).reshape(-1), predictions, num_classes=num_classes
        ),
        np.int64,
    )
    return 100.0 * np.asarray(metrics.per_class_iou(cm), np.float64)


def dataset_colour_lookup_iou(
    dataset: str, data_dir: str, *, num_train: int = 100, num_test: int = 50
) -> dict[str, float]:
    """:func:`colour_lookup_iou` of a built ``synthetic_rgbd`` config, by class name."""
    from drd_jax import input_pipeline
    from tfds_builders.synthetic_rgbd import CLASS_NAMES, NUM_CLASSES

    def arrays(split, count):
        source = input_pipeline.load_data_source(dataset, split, data_dir=data_dir)
        examples = [source[i] for i in range(min(count, len(source)))]
        images = np.stack([e["image"] for e in examples])
        # Stored labels are 0 = void, 1..NUM_CLASSES; shift to 0-based with void = -1.
        labels = np.stack([e["label"] for e in examples]).astype(np.int64) - 1
        return images, labels

    iou = colour_lookup_iou(*arrays("train", num_train), *arrays("test", num_test), NUM_CLASSES)
    return {name: float(v) for name, v in zip(CLASS_NAMES, iou, strict=True)}


def judge(
    variant: str, workdir: pathlib.Path, *, steps, budget, modes, seed, data_dir, overrides=None
) -> dict:
    from experiments.fidelity import depth_weight_stats
    from experiments.reproduce import train_or_reuse

    dataset = f"synthetic_rgbd/{variant}"
    depth = depth_weight_stats.dataset_depths(dataset, data_dir, "train", 50, prepare=True)
    overrides = dict(overrides or {})
    record = {"variant": variant, "steps": steps, "budget": budget, "seed": seed, "runs": {}}
    record["overrides"] = overrides
    record["h"] = depth_weight_stats.stage_means(depth)
    record["colour_lookup_iou"] = dataset_colour_lookup_iou(dataset, data_dir)
    for mode in modes:
        config = run_config(variant, mode, steps, seed, data_dir, overrides)
        suffix = "".join(f"_{k}={v}" for k, v in sorted(overrides.items()))
        run_dir = workdir / variant / f"{mode}_{steps}steps_seed{seed}{suffix}"
        result, seconds, _ = train_or_reuse(config, run_dir)
        record["runs"][mode] = {
            "mean_iou": 100 * result["mean_iou"],
            "per_class_iou": {k: 100 * v for k, v in result["per_class_iou"].items()},
            "seconds": round(seconds, 1),
        }
    record["verdicts"] = verdicts(record, budget)
    return record


def markdown(record: dict) -> str:
    h = record["h"]
    lines = [
        f"### `{record['variant']}`, {record['steps']} steps ({record['budget']} budget), "
        f"seed {record['seed']}, overrides {record.get('overrides') or 'none'}",
        "",
        "| H | " + " | ".join(REAL_FRAME_H) + " |",
        "|---|" + "---|" * len(REAL_FRAME_H),
        "| this variant | "
        + " | ".join("–" if h[s] is None else f"{h[s]:.2f}" for s in REAL_FRAME_H)
        + " |",
        "| real frame, 480×640 | " + " | ".join(f"{v:.2f}" for v in REAL_FRAME_H.values()) + " |",
    ]
    runs = record["runs"]
    if runs:
        classes = list(next(iter(runs.values()))["per_class_iou"])
        lines += ["", "| run | mIoU | " + " | ".join(classes) + " |"]
        lines += ["|---|---|" + "---|" * len(classes)]
        for mode, r in runs.items():
            cells = " | ".join(f"{r['per_class_iou'][c]:.1f}" for c in classes)
            lines.append(f"| {mode} | {r['mean_iou']:.1f} | {cells} |")
        lookup = record.get("colour_lookup_iou")
        if lookup:
            cells = " | ".join(f"{lookup[c]:.1f}" for c in classes)
            mean = float(np.nanmean([lookup[c] for c in classes]))
            lines.append(f"| colour lookup (one pixel, no network) | {mean:.1f} | {cells} |")
    lines += ["", "Criteria: " + ", ".join(f"{k} {v}" for k, v in record["verdicts"].items())]
    return "\n".join(lines) + "\n"


def define_flags() -> None:
    """The command line (defined only when run as a script, so importing this module is free)."""
    flags.DEFINE_string("workdir", None, "Where the runs and calibration.jsonl go.")
    flags.DEFINE_list("variants", ["default"], "synthetic_rgbd configs to judge.")
    flags.DEFINE_integer("steps", None, "Training steps per run (default: make demo's).")
    flags.DEFINE_enum(
        "budget", "demo", ["demo", "long"], "Which criteria --steps is judged by (demo or long)."
    )
    flags.DEFINE_list("modes", ["baseline", "teacher"], "Runs per variant.")
    flags.DEFINE_integer("seed", 0, "config.seed of the runs.")
    flags.DEFINE_string("data_dir", None, "TFDS data dir (default <workdir>/data).")
    flags.DEFINE_multi_string(
        "set",
        None,
        "A config override of the runs (repeatable): --set=width=0.125 --set='crop_size=(64, 80)'.",
    )
    flags.mark_flag_as_required("workdir")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    workdir = pathlib.Path(FLAGS.workdir).expanduser().absolute()
    data_dir = FLAGS.data_dir or str(workdir / "data")
    overrides = parse_overrides(FLAGS.set)
    workdir.mkdir(parents=True, exist_ok=True)
    from experiments.configs import synthetic

    steps = FLAGS.steps or synthetic.get_config("demo").num_train_steps
    for variant in FLAGS.variants:
        record = judge(
            variant,
            workdir,
            steps=steps,
            budget=FLAGS.budget,
            modes=FLAGS.modes,
            seed=FLAGS.seed,
            data_dir=data_dir,
            overrides=overrides,
        )
        with open(workdir / "calibration.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        print(markdown(record), flush=True)


if __name__ == "__main__":
    from experiments import quiet_orbax

    define_flags()
    quiet_orbax.install()  # a tool's log: no orbax lines per save
    app.run(main)
