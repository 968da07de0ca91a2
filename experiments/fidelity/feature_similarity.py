r"""Which layers carry the teacher into the RGB student: feature similarity to TN, layer by layer.

    python -m experiments.fidelity.feature_similarity /tmp/demo/seed0 /tmp/demo/seed1 \
        --num_images=20

For a reproduce workdir (Table 1 and 3 runs in ``runs/``), every conv layer's output (before its
ReLU) on the first ``--num_images`` test images is compared with the same layer of the teacher
TN run as trained (RGB-D, depth-aware), by linear CKA (Kornblith et al. 2019; 1 = the same up to
a rotation and a scale, ~0 = unrelated):

* ``ps_start``: TN's parameters with plain convolutions on RGB, where parameter sharing starts
  (before any student training);
* ``bl_ps``, ``sn``: the PS students after fine-tuning (CE; CE + VTCE);
* ``bl``, ``bl_vtce``: networks of the same shape trained from scratch on RGB (the level of
  similarity two independent trainings reach).

With several workdirs (seeds) the table shows mean ± sd. Prints Markdown; ``--output`` also writes
it. Only the positions of valid (non-void) pixels are used, at each layer's own resolution
(nearest), at most ``--max_positions`` per layer drawn with a fixed seed.
"""

from __future__ import annotations

import pathlib
import sys

import jax
import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS

COMPARED = (
    ("ps_start", "PS start (TN params, plain)"),
    ("bl_ps", "BL+PS"),
    ("sn", "SN"),
    ("bl", "BL"),
    ("bl_vtce", "BL+VTCE"),
)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two feature matrices over the same ``n`` positions.

    Args:
      x: ``(n, d1)``; y: ``(n, d2)`` (float).
    Returns:
      ``‖yᵀx‖²_F / (‖xᵀx‖_F ‖yᵀy‖_F)`` after centring the columns, in [0, 1]; NaN when either
      matrix is constant.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"expected (n, d1) and (n, d2) matrices, got {x.shape} and {y.shape}")
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    cross = np.linalg.norm(y.T @ x) ** 2
    norm = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / norm) if norm > 0 else float("nan")


def conv_output_fn(model):
    """A jitted ``(params, image, depth) -> {name: (N, h, w, C)}``: every conv layer's output
    (before its ReLU) in one forward pass."""

    def is_conv(module, method_name):
        return method_name == "__call__" and bool(module.name)

    def apply(params, image, depth):
        _, state = model.apply(
            {"params": params},
            image,
            depth,
            capture_intermediates=is_conv,
            mutable=["intermediates"],
        )
        return {
            name: value["__call__"][0]
            for name, value in state["intermediates"].items()
            if name in params and "__call__" in value
        }

    return jax.jit(apply)


def _positions(label: np.ndarray, shape: tuple[int, int], rng, limit: int) -> np.ndarray:
    """Flat indices into ``(N, h, w)`` of valid pixels (nearest down-sampling of ``label``)."""
    _, height, width = label.shape
    rows = (np.arange(shape[0]) * height) // shape[0]
    cols = (np.arange(shape[1]) * width) // shape[1]
    small = label[:, rows][:, :, cols]
    index = np.flatnonzero(small.reshape(-1) != 255)
    if index.size > limit:
        index = np.sort(rng.choice(index, size=limit, replace=False))
    return index


def layer_similarity(
    workdir: pathlib.Path, *, num_images: int, max_positions: int, data_dir: str | None = None
) -> dict:
    """``{run key: {layer: CKA to TN}}`` for the runs of ``COMPARED`` found in ``workdir``
    (test images from ``data_dir``, default the teacher's)."""
    from drd_jax import config as config_lib
    from drd_jax import input_pipeline, runs

    runs_dir = workdir / "runs"
    tn = runs.load_run(runs_dir / "tn")
    source = input_pipeline.load_data_source(
        tn.config.dataset, "test", data_dir=data_dir or config_lib.resolve_data_dir(tn.config)
    )
    ds = input_pipeline.create_eval_dataset(source, num_classes=len(tn.class_names), batch_size=1)

    models = {
        "tn": (tn.make_model(), tn.params),
        "ps_start": (tn.make_model(depth_aware=False), tn.params),
    }
    for key, _ in COMPARED[1:]:
        if (runs_dir / key).is_dir():
            run = runs.load_run(runs_dir / key)
            models[key] = (run.make_model(), run.params)
    fns = {key: conv_output_fn(model) for key, (model, _) in models.items()}
    rng = np.random.default_rng(0)
    per_image = max(1, max_positions // max(1, min(num_images, len(ds))))
    rows: dict[str, dict[str, list[np.ndarray]]] = {key: {} for key in models}
    positions: dict[str, np.ndarray] = {}  # layer -> this image's positions, the same for all
    for i in range(min(num_images, len(ds))):
        batch = ds[i]
        label = np.asarray(batch["label"])
        for key, (model, params) in models.items():
            depth = batch["depth"] if model.depth_aware else None
            outputs = jax.device_get(fns[key](params, batch["image"], depth))
            for layer, value in outputs.items():
                if key == "tn":  # drawn once per image, on TN's pass (TN comes first)
                    positions[layer] = _positions(label, value.shape[1:3], rng, per_image)
                flat = value.reshape(-1, value.shape[-1])[positions[layer]]
                rows[key].setdefault(layer, []).append(flat)
    reference = {layer: np.concatenate(v) for layer, v in rows.pop("tn").items()}
    return {
        key: {
            layer: linear_cka(ref, np.concatenate(rows[key][layer]))
            for layer, ref in reference.items()
        }
        for key in models
        if key != "tn"
    }


def markdown(results: list[dict]) -> str:
    """One row per compared run, one column per layer: CKA to TN (mean ± sd over workdirs)."""
    from experiments.seed_table import mean_sd

    first = results[0]
    layers = list(next(iter(first.values())))
    out = ["| run | " + " | ".join(layers) + " |", "|" + "---|" * (len(layers) + 1)]
    for key, label in COMPARED:
        if key not in first:
            continue

        cells = [mean_sd([100 * r[key][layer] for r in results if key in r]) for layer in layers]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(argv):
    from experiments.seed_table import print_and_write, workdir_arguments

    workdirs = workdir_arguments(argv)
    try:
        results = [
            layer_similarity(
                w,
                num_images=FLAGS.num_images,
                max_positions=FLAGS.max_positions,
                data_dir=FLAGS.data_dir,
            )
            for w in workdirs
        ]
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    md = "Linear CKA × 100 to TN (RGB-D), per conv layer (before ReLU):\n\n" + markdown(results)
    print_and_write(md, FLAGS.output)
    return 0


def define_flags() -> None:
    """The command line (defined only when run as a script, so importing this module is free)."""
    flags.DEFINE_integer("num_images", 20, "Test images the features are computed on.")
    flags.DEFINE_integer("max_positions", 4096, "Positions per layer (valid pixels, sampled).")
    flags.DEFINE_string("data_dir", None, "TFDS data dir of the test split (default: TN's).")
    flags.DEFINE_string("output", None, "Also write the Markdown here.")


if __name__ == "__main__":
    from experiments import quiet_orbax

    define_flags()
    quiet_orbax.install()  # a tool's log: no orbax lines per save
    app.run(main)
