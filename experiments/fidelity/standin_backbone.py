r"""A stand-in for ImageNet pretraining: the trunk of an RGB network trained on another domain.

    python -m experiments.fidelity.standin_backbone \
        --config=experiments/configs/synthetic.py:demo --output=/tmp/standin

The paper's 'Initialization' protocol starts BL, TN and SN from ImageNet VGG16 weights, which
cannot be downloaded here. The stand-in (FIDELITY.md, "The 'Initialization' protocol: design"):

* **data**: ``synthetic_rgbd/pretrain`` (``tfds_builders/synthetic_rgbd/pretrain_scenes.py``):
  flat cut-out shapes on a tabletop seen from above, classes, palette and layout of their own;
  never a class of the target (no wall, floor, box, ball, pole or cone);
* **network and training**: a BL run (``mode='baseline'``: RGB only, plain convolutions, CE) of
  the base config's network and optimiser (its width, batch, crops, learning rate...) for
  :data:`DEFAULT_RECIPE`'s 1920 steps (the long budget; less than one ``make demo``), seed 0
  whatever the base's seed: one stand-in for every seed and budget, as one set of ImageNet
  weights serves every run;
* **what is kept**: the 13 trunk convolutions ``conv1_1`` … ``conv5_3`` of its last checkpoint,
  written by ``drd_jax.pretrained.save_npz``, as ImageNet VGG16 gives them
  (``drd_jax.pretrained``: ``fc6``, ``fc7`` and ``fc8`` keep their initialisation), so that
  ``--config.init=imagenet --config.pretrained_path=<file>`` reads it like ImageNet weights.

The file is ``<output>/standin_vgg16_<hash>.npz``, ``<hash>`` the first 12 hex digits of the
stand-in run's config fingerprint (``drd_jax.config.fingerprint``: everything that determines
it), beside ``standin_vgg16_<hash>.json`` (its config, its test metrics on its own domain, its
training time) and the run itself (``standin_vgg16_<hash>/``). A second call with the same
config reuses the file; an interrupted one resumes the run. ``experiments.reproduce
--init_protocol=standin`` builds it into ``<data_dir>/standin/`` (shared, like the data, by every
experiment on that data dir).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time

import ml_collections
from absl import app, flags

from drd_jax.errors import ConfigError

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The stand-in's data and schedule (everything else comes from the base config)."""

    dataset: str
    num_train_steps: int
    eval_every_steps: int
    log_every_steps: int


# The stand-in of the calibrated benchmark (and every other 120x160 synthetic_rgbd config): the
# long budget (1920 steps of batch 8, 4 BL runs of the demo, less than one `make demo`) on 1000
# tabletop images, evaluated every 480 steps.
DEFAULT_RECIPE = Recipe("synthetic_rgbd/pretrain", 1920, 480, 40)
# The tests' tiny data get a tiny stand-in.
RECIPES = {"synthetic_rgbd/tiny": Recipe("synthetic_rgbd/pretrain_tiny", 4, 0, 1)}
SEED = 0
# Fields of the distillation methods and of the other modes: the base config's values do not
# change a BL run, so they are reset to the base defaults (the hash then covers only what counts).
_UNUSED_FIELDS = (
    "teacher_workdir",
    "teacher_checkpoint",
    "pretrained_path",
    "vtce_weight",
    "beta",
    "alpha",
    "depth_aware_layers",
)


def recipe_for(dataset: str) -> Recipe:
    """The stand-in recipe of a base config's ``dataset`` (a ``synthetic_rgbd`` config of the
    room scenes); ``ConfigError`` for another dataset (there, use real ImageNet weights)."""
    name, _, builder_config = str(dataset).partition("/")
    if name != "synthetic_rgbd" or builder_config.startswith("pretrain"):
        raise ConfigError(
            f"the stand-in backbone is for synthetic_rgbd's room scenes, not config.dataset="
            f"{dataset!r}; on NYUv2 or SUN RGB-D use ImageNet VGG16 weights "
            "(config.pretrained_path)"
        )
    return RECIPES.get(f"{name}/{builder_config or 'default'}", DEFAULT_RECIPE)


def standin_config(base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config of the stand-in run: ``base``'s network, optimiser, input and data dir, in
    baseline mode from scratch on the stand-in domain, with :func:`recipe_for`'s schedule and
    seed :data:`SEED`; method fields at the base defaults."""
    from drd_jax.distillation.terms import KD_FIELDS
    from experiments.configs.base import get_base_config

    recipe = recipe_for(base.dataset)
    defaults = get_base_config()
    config = ml_collections.ConfigDict(base.to_dict())
    for field in (*_UNUSED_FIELDS, *KD_FIELDS):
        config[field] = defaults[field]
    config.dataset = recipe.dataset
    config.mode = "baseline"
    config.init = "scratch"
    config.seed = SEED
    config.num_train_steps = recipe.num_train_steps
    config.eval_every_steps = recipe.eval_every_steps
    config.checkpoint_every_steps = recipe.eval_every_steps or recipe.num_train_steps
    config.log_every_steps = recipe.log_every_steps
    config.max_checkpoints_to_keep = defaults.max_checkpoints_to_keep
    config.stop_after_steps = 0
    return config


def weights_path(config: ml_collections.ConfigDict, directory) -> pathlib.Path:
    """``<directory>/standin_vgg16_<hash>.npz`` of the stand-in run ``config``
    (:func:`standin_config`'s), ``<hash>`` = its config fingerprint's first 12 hex digits."""
    from drd_jax import config as config_lib

    digest = config_lib.fingerprint(config)[:12]
    return pathlib.Path(directory).expanduser().absolute() / f"standin_vgg16_{digest}.npz"


def trunk(params) -> dict:
    """The 13 trunk convolutions (``conv1_1`` … ``conv5_3``) of a DeepLabVGG16 param tree:
    what ImageNet VGG16 weights hold (``drd_jax.pretrained.merge_pretrained``'s default)."""
    import numpy as np

    from drd_jax.pretrained import VGG16_CONV_NAMES

    return {name: {k: np.asarray(v) for k, v in params[name].items()} for name in VGG16_CONV_NAMES}


def build(base: ml_collections.ConfigDict, directory) -> dict:
    """Trains (or reuses) the stand-in of ``base`` in ``directory`` and writes its weights.

    Returns its record (``standin_vgg16_<hash>.json``: ``path`` of the ``.npz``, its config and
    fingerprint, ``metrics`` in % on its own domain's test split, ``train_seconds``) with
    ``reused`` (True when the weights were already there). Every process of a multi-process
    job calls it (the run is trained by all of them); process 0 writes the files.
    """
    import jax

    from drd_jax import config as config_lib
    from drd_jax import input_pipeline, pretrained, runs
    from drd_jax.files import atomic_write_text
    from drd_jax.parallel import main_process_first, sync_processes
    from experiments.reproduce import per_class_percent, percent, train_or_reuse

    config = standin_config(base)
    path = weights_path(config, directory)
    record_path = path.with_suffix(".json")
    if path.is_file() and record_path.is_file():
        pretrained.check_vgg16_file(path, width=config.width, width_name="config.width")
        return {**json.loads(record_path.read_text()), "path": str(path), "reused": True}
    config_lib.validate_config(config)
    data_dir = config_lib.resolve_data_dir(config)
    main_process_first(
        lambda: input_pipeline.load_data_source(
            config.dataset, "train", data_dir=data_dir, prepare=True
        ),
        "prepare the stand-in's data",
    )
    workdir = path.with_suffix("")
    start = time.perf_counter()
    metrics, seconds, _ = train_or_reuse(config, workdir)
    run = runs.load_run(workdir, checkpoint="latest")
    record = {
        "path": str(path),
        "config_fingerprint": config_lib.fingerprint(config),
        "dataset": config.dataset,
        "num_train_steps": config.num_train_steps,
        "seed": config.seed,
        "width": config.width,
        "class_names": run.class_names,
        "layers": list(pretrained.VGG16_CONV_NAMES),
        "params_fingerprint": metrics["params_fingerprint"],
        "metrics": {
            "mean_iou": percent(metrics["mean_iou"]),
            "mean_pixel_accuracy": percent(metrics["mean_pixel_accuracy"]),
            "pixel_accuracy": percent(metrics["pixel_accuracy"]),
            "per_class_iou": per_class_percent(metrics["per_class_iou"]),
        },
        "train_seconds": round(seconds, 1),
        "config": config.to_dict(),
    }
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(record_path, json.dumps(record, indent=2, allow_nan=False) + "\n")
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        pretrained.save_npz(trunk(run.params), tmp)
        os.replace(tmp, path)  # last: the .npz is there only once everything is
    sync_processes("stand-in backbone written")
    return {**record, "reused": False, "seconds": round(time.perf_counter() - start, 1)}


def describe(record: dict) -> str:
    """One line: the file, its domain, steps and test mIoU on its own domain."""
    m = record["metrics"]
    return (
        f"stand-in backbone {record['path']}: BL trunk after {record['num_train_steps']} steps on "
        f"{record['dataset']} (seed {record['seed']}, width {record['width']:g}); its own test "
        f"split: mIoU {m['mean_iou']:.1f}, PA {m['pixel_accuracy']:.1f}"
        + (" (reused)" if record.get("reused") else f"; trained in {record['train_seconds']:.0f} s")
    )


def define_flags() -> None:
    """The command line (defined only when run as a script)."""
    from ml_collections import config_flags

    flags.DEFINE_string("output", None, "Directory of the stand-in's .npz, .json and run.")
    config_flags.DEFINE_config_file(
        "config", None, "The base config (the network and optimiser of the runs).", lock_config=True
    )
    flags.mark_flags_as_required(["config", "output"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    record = build(FLAGS.config, FLAGS.output)
    print(describe(record), flush=True)


if __name__ == "__main__":
    from experiments import cli

    define_flags()
    cli.run(main)
