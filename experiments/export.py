r"""Export a trained RGB network (a baseline or student run) for serving.

    python -m experiments.export --checkpoint=/tmp/student --output=/tmp/student_export
    python -m experiments.export --checkpoint=/tmp/student --output=/tmp/student_bf16 \
        --dtype=bfloat16 --input_size=480,640 --platforms=cpu,cuda

``--checkpoint`` is a workdir written by ``experiments.train``; its best-by-mIoU checkpoint is
exported (``--which=latest`` for the newest). ``--output`` (created; it must not exist or be
empty, unless ``--overwrite`` replaces the export there) gets, atomically
(``drd_jax.serving``):

* ``params.msgpack``: the network's params alone, in ``--dtype`` (float32 or bfloat16);
* ``model.stablehlo``: the network as ``jax.export`` StableHLO, normalised images
  (b, H, W, 3) float32 -> logits (b, H, W, K) float32, any batch size b, at the fixed
  ``--input_size`` (default: the run's ``eval_pad_to`` if set, else the largest image of its
  test split), lowered for ``--platforms`` (default cpu, cuda, tpu; no such device needed here);
* ``card.json``: its own checksum (an edited card is refused on load), classes, input size and
  normalisation (ImageNet mean and std on 0..255 RGB), output, model and its constructor
  arguments, dtype, platforms, sha256 of both files, the source run (workdir, step, checkpoint,
  mode, config fingerprint) and its measured mIoU and mean pixel accuracy: from
  ``final_metrics.json`` when that evaluated these very params, else from the evaluation
  recorded with the checkpoint, else null with the reason.

Read an export back with ``drd_jax.serving.load_export`` (jax, flax, numpy and flatbuffers; none
of the training extras), or segment images with it:
``python -m experiments.segment --checkpoint=<export dir> ...``. A teacher run (RGB-D) is
refused: export its student or baseline run.

``--overwrite`` replaces an export only, and only its own files: ``--output`` must hold
``card.json`` (an export's), ``params.msgpack`` and ``model.stablehlo`` as plain files and
nothing else; any other file, folder or symlink there (e.g. a run's workdir, notes beside the
export) is refused, naming them, and nothing is deleted. The old export's files are deleted by
name once the new export is in place; a file another process writes into it meanwhile is kept.

Faults (not a run, a teacher run, a non-empty ``--output``, an ``--output`` that is a symlink,
sits under a file or cannot be written, an input size that cannot be found) are one line,
``error: ...``, exit status 2 (``experiments/cli.py``); nothing is written. A full disk is one
line naming ``--output``, the space free there and needed, exit status 1; nothing is left.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence

from absl import flags

from drd_jax import serving
from drd_jax.errors import UserError
from drd_jax.files import DiskFullError
from experiments import cli


def define_flags() -> None:
    """Defines the command's flags, when it runs as a command (``__main__``): not on import, so
    that ``segment``, which defines flags of the same names, imports beside it (e.g. in tests)."""
    flags.DEFINE_string("checkpoint", None, "Workdir of a baseline or student run.")
    flags.DEFINE_string(
        "output", None, "Directory to write the export into (must not exist or be empty)."
    )
    flags.DEFINE_enum("dtype", "float32", list(serving.DTYPES), "Params and compute dtype.")
    flags.DEFINE_enum("which", "best", ["best", "latest"], "Checkpoint of the run to use.")
    flags.DEFINE_list(
        "input_size",
        None,
        "H,W in pixels that model.stablehlo takes. Default: the run's eval_pad_to if set, else "
        "the largest image of its test split.",
    )
    flags.DEFINE_list(
        "platforms",
        list(serving.PLATFORMS),
        "Platforms model.stablehlo is lowered for (cpu, cuda, rocm, tpu).",
    )
    flags.DEFINE_boolean(
        "overwrite",
        False,
        "Replace the export already in --output. Only an export's own files (card.json, "
        "params.msgpack, model.stablehlo) are replaced: --output holding anything else "
        "(another file, a folder, a symlink) is refused and nothing is deleted.",
    )
    flags.register_validator(
        "input_size",
        lambda v: v is None or (len(v) == 2 and all(s.strip().isdigit() and int(s) > 0 for s in v)),
        message="--input_size must be H,W: two integers > 0 (pixels), e.g. --input_size=480,640",
    )
    flags.register_validator(
        "platforms",
        lambda v: bool(v) and set(v) <= set(serving.KNOWN_PLATFORMS),
        message=f"--platforms must name some of {', '.join(serving.KNOWN_PLATFORMS)}",
    )
    flags.mark_flags_as_required(["checkpoint", "output"])


class ExportError(UserError):
    """A fault to report to the user in one line (``experiments.cli``), nothing written."""


def teacher_refusal(checkpoint) -> str:
    return (
        f"export writes an RGB network; {checkpoint} is a teacher run (RGB-D) — export its "
        "student or baseline run"
    )


def default_input_size(config) -> tuple[int, int]:
    """``config.eval_pad_to`` if non-zero, else the largest (H, W) of the run's test split.

    Raises:
      ExportError: the test split cannot be read (asking for ``--input_size``).
    """
    from drd_jax import input_pipeline
    from drd_jax.config import resolve_data_dir

    pad_to = tuple(config.get("eval_pad_to", (0, 0)) or (0, 0))
    if pad_to != (0, 0):
        return int(pad_to[0]), int(pad_to[1])
    try:
        source = input_pipeline.load_data_source(
            config.dataset, "test", data_dir=resolve_data_dir(config)
        )
        size = input_pipeline.eval_pad_size(source, (0, 0))
        if size is None:  # every image has one size
            size = input_pipeline.read_record(source, 0)["depth"].shape[:2]
    except Exception as e:  # noqa: BLE001 - any failure to read the data: ask for the size
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(
            f"cannot read the test split of {config.dataset} to find the input size ({reason}); "
            "give it with --input_size=H,W"
        ) from None
    return int(size[0]), int(size[1])


def measured_metrics(run) -> dict:
    """The run's measured test metrics of these params, for the card::

    {"mean_iou", "mean_pixel_accuracy", "pixel_accuracy", "source"} (or the metrics null and
    "reason"). From ``final_metrics.json`` when its ``params_fingerprint`` is that of
    ``run.params`` (the final evaluation measured these params), else the eval metrics recorded
    with the checkpoint ``run.step``.
    """
    from drd_jax import runs
    from drd_jax.checkpointing import Checkpointer
    from drd_jax.state import params_fingerprint

    keys = ("mean_iou", "mean_pixel_accuracy", "pixel_accuracy")
    path = run.workdir / runs.FINAL_METRICS_NAME
    reasons = []
    try:
        final = json.loads(path.read_text())
    except FileNotFoundError:
        final = None
        reasons.append(f"no {runs.FINAL_METRICS_NAME} (the run did not finish)")
    except (OSError, ValueError) as e:
        final = None
        reasons.append(f"{path} cannot be read ({e})")
    if isinstance(final, dict):
        if final.get("params_fingerprint") == params_fingerprint(run.params):
            return {
                **{k: final.get(k) for k in keys},
                "source": f"{path}: the final evaluation of these params on the test split",
            }
        reasons.append(
            f"{runs.FINAL_METRICS_NAME} evaluated other params (the final step's, not step "
            f"{run.step})"
        )
    try:
        _, config_fp = runs.read_run_config(run.workdir)
        with Checkpointer(
            run.workdir, config_fingerprint=config_fp, async_save=False, read_only=True
        ) as ckpt:
            recorded = ckpt.metrics(run.step)
    except (FileNotFoundError, ValueError) as e:
        recorded = None
        reasons.append(f"the checkpoint's metrics cannot be read ({e})")
    if recorded and recorded.get("mean_iou") is not None:
        return {
            **{k: recorded.get(k) for k in keys},
            "source": f"the evaluation on the test split recorded with checkpoint step {run.step}",
        }
    reasons.append(f"checkpoint step {run.step} was saved without an evaluation")
    return {**dict.fromkeys(keys), "source": None, "reason": "; ".join(reasons)}


def export(
    checkpoint: str,
    output: str,
    *,
    dtype: str = "float32",
    which: str = "best",
    input_size: Sequence[int] | None = None,
    platforms: Sequence[str] = serving.PLATFORMS,
    overwrite: bool = False,
) -> list[pathlib.Path]:
    """The whole command; returns the written paths. Raises ``ExportError`` for user faults
    (nothing written), ``files.DiskFullError`` (unwrapped: exit status 1) for a full disk."""
    from drd_jax import runs

    try:
        out = serving.check_output_dir(output, overwrite=overwrite)
    except (OSError, ValueError) as e:
        raise ExportError(str(e)) from None
    try:
        config, config_fp = runs.read_run_config(checkpoint)
    except (FileNotFoundError, ValueError) as e:
        raise ExportError(f"--checkpoint: {e}") from None
    if config.get("mode") == "teacher":
        raise ExportError(teacher_refusal(checkpoint))
    try:
        run = runs.load_run(checkpoint, checkpoint=which)
    except (FileNotFoundError, ValueError) as e:
        raise ExportError(f"--checkpoint: {e}") from None
    if input_size is None:
        input_size = default_input_size(config)
    card_extra = {
        "source": {
            "workdir": str(run.workdir),
            "step": run.step,
            "checkpoint": which,
            "mode": config.get("mode"),
            "dataset": config.get("dataset"),
            "config_fingerprint": config_fp,
        },
        "metrics": measured_metrics(run),
    }
    try:
        return serving.export_network(
            out,
            model=run.make_model(),
            params=run.params,
            class_names=run.class_names,
            input_size=input_size,
            dtype=dtype,
            platforms=platforms,
            card_extra=card_extra,
            overwrite=overwrite,
        )
    except DiskFullError:
        raise  # one line with the space free and needed, exit status 1 (its own user error)
    except (OSError, ValueError) as e:
        raise ExportError(str(e)) from None


def main(argv):
    if len(argv) > 1:
        raise ExportError(f"unexpected arguments {argv[1:]}: export takes flags only")
    f = flags.FLAGS
    written = export(
        f.checkpoint,
        f.output,
        dtype=f.dtype,
        which=f.which,
        input_size=None if f.input_size is None else [int(v) for v in f.input_size],
        platforms=f.platforms,
        overwrite=f.overwrite,
    )
    for path in written:
        print(path)


if __name__ == "__main__":
    define_flags()
    cli.run(main, config_flags=())
