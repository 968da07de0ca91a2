"""Trained runs read back from their workdirs, evaluated, and their final metrics.

A workdir written by ``drd_jax.train.train_and_evaluate`` holds ``config.json``, ``checkpoints/``
and, once finished, :data:`FINAL_METRICS_NAME`. ``segment``, ``reproduce`` and ``figures`` read
runs through :func:`load_run`; a student reads its teacher through :func:`load_teacher`. Readers
never write into the workdir and never take its lock (``drd_jax.workdir_lock``). What they read
is checked: ``config.json`` must have the fingerprint recorded with it (an edited config no longer
says how the checkpoints were trained: ``ValueError`` naming the file), and a checkpoint must
read back to the content digest recorded when it was saved; one that cannot raises
``checkpointing.UnreadableCheckpointError``, one line naming it and what to do. A finished run
(:func:`finished_run`) whose final checkpoint does not vouch for its ``final_metrics.json``
raises :class:`FinishedRunError`: its rerun writes nothing.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import pathlib
from typing import Any, NamedTuple

import jax
import numpy as np

from drd_jax import input_pipeline, loop, metrics
from drd_jax.checkpointing import (
    Checkpointer,
    UnreadableCheckpointError,
    recorded_config_fingerprint,
)
from drd_jax.config import (
    TEACHER_CHECKPOINTS,
    field_error,
    fingerprint,
    legacy_fingerprints,
    resolve_data_dir,
)
from drd_jax.errors import CheckpointError, ConfigError, MissingFileError, UserError
from drd_jax.extras import require
from drd_jax.files import atomic_write_text
from drd_jax.models import DeepLabVGG16
from drd_jax.parallel import DataParallel
from drd_jax.state import create_train_state, make_model, params_fingerprint
from drd_jax.steps import eval_step, jitted_predict

ml_collections = require("ml_collections", extra="train")

__all__ = [
    "FINAL_METRICS_NAME",
    "FinishedRunError",
    "RunCheckpoint",
    "TEACHER_KEY",
    "eval_summary",
    "evaluate_run",
    "final_metrics",
    "finished_run",
    "load_run",
    "check_same_teacher",
    "check_teacher_classes",
    "load_teacher",
    "read_run_config",
    "config_fingerprint_for",
    "teacher_params_fingerprint",
    "write_final_metrics",
]

FINAL_METRICS_NAME = "final_metrics.json"


class RunCheckpoint(NamedTuple):
    """A trained run read back from its workdir (see :func:`load_run`)."""

    workdir: pathlib.Path
    config: ml_collections.ConfigDict
    params: Any  # host (numpy) param tree
    class_names: list[str]
    step: int

    def make_model(self, **overrides: Any) -> DeepLabVGG16:
        """The run's model (``depth_aware`` as trained unless overridden)."""
        return make_model(self.config, len(self.class_names), **overrides)

    def predictor(self):
        """``(image, depth=None) -> class ids`` (N, H, W) int32 numpy of normalised images
        (N, H, W, 3); depth (N, H, W) in metres is read only by a teacher. The params go to the
        device once; the function is compiled once per input shape."""
        predict = jitted_predict(self.make_model())
        params = jax.device_put(self.params)
        return lambda image, depth=None: np.asarray(predict(params, image, depth))


def read_run_config(workdir: str | os.PathLike) -> tuple[ml_collections.ConfigDict, str]:
    """``(config, config_fingerprint)`` recorded in ``<workdir>/config.json`` by a training run."""
    workdir = pathlib.Path(workdir).expanduser()
    path = workdir / "config.json"
    if not path.is_file():
        raise MissingFileError(
            f"{workdir} is not a training run: it has no config.json (run experiments.train first)"
        )
    try:
        body = json.loads(path.read_text())
        config = ml_collections.ConfigDict(body["config"])
        recorded = str(body["config_fingerprint"])
        found = fingerprint(config)
        accepted = {found, *legacy_fingerprints(config)}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: not a drd-jax run config ({type(e).__name__}: {e})") from e
    if recorded not in accepted:
        raise CheckpointError(
            f"{path} was edited: its config has fingerprint {found[:12]}..., the run (and its "
            f"checkpoints) recorded {recorded[:12]}...; its config no longer says how the "
            "checkpoints were trained. Restore the file, or train a new run"
        )
    return config, recorded


def config_fingerprint_for(workdir: str | os.PathLike, config) -> str:
    """The fingerprint a run of ``config`` has in ``workdir``: ``config.fingerprint(config)``, or
    one of its :func:`~drd_jax.config.legacy_fingerprints` when ``<workdir>/config.json``
    records that (a run written by an earlier version, resumed and reused in place)."""
    current = fingerprint(config)
    legacy = legacy_fingerprints(config)
    if not legacy:
        return current
    try:
        recorded = recorded_config_fingerprint(pathlib.Path(workdir).expanduser())
    except ValueError:  # an unreadable config.json records no earlier fingerprint
        return current
    return recorded if recorded in legacy else current


def load_run(workdir: str | os.PathLike, *, checkpoint: str = "best") -> RunCheckpoint:
    """Reads a run's params back: its best-by-mIoU checkpoint (else its latest), or its latest.

    Args:
      workdir: a directory written by ``train_and_evaluate``.
      checkpoint: ``'best'`` (falls back to the latest when no checkpoint has eval metrics) or
        ``'latest'``.

    Raises:
      FileNotFoundError: not a run directory, or no checkpoint in it.
      UnreadableCheckpointError: the checkpoint asked for cannot be read (one line naming its
        directory and what to do; never silently another checkpoint instead).
      ValueError: a bad ``checkpoint`` value or a corrupt/mismatched ``config.json``.
    """
    if checkpoint not in TEACHER_CHECKPOINTS:
        raise ConfigError(f"checkpoint must be one of {TEACHER_CHECKPOINTS}, got {checkpoint!r}")
    workdir = pathlib.Path(workdir).expanduser().absolute()
    config, config_fp = read_run_config(workdir)
    ckpt = Checkpointer(workdir, config_fingerprint=config_fp, async_save=False, read_only=True)
    try:
        step = ckpt.best_step() if checkpoint == "best" else None
        step = step if step is not None else ckpt.latest_step()
        if step is None:
            raise MissingFileError(f"{workdir} has no checkpoint yet")
        class_names = ckpt.read_extra(step).get("class_names")
        if not class_names:  # checkpoints written before class names were recorded
            source = input_pipeline.load_data_source(
                config.dataset, "test", data_dir=resolve_data_dir(config)
            )
            class_names = input_pipeline.dataset_class_names(config.dataset, source)
        template_config = ml_collections.ConfigDict(config.to_dict())
        template_config.init = "scratch"  # same tree; no teacher or weights file needed
        template = jax.eval_shape(
            lambda: create_train_state(
                template_config, jax.random.PRNGKey(0), num_classes=len(class_names)
            )
        )
        # Onto this process's first device, whatever devices (hosts, GPUs) the run saved from.
        here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        template = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=here), template
        )
        try:
            state, _ = ckpt.restore(step, target=template)
        except UnreadableCheckpointError as e:
            raise _with_choices(e, ckpt, checkpoint) from e.__cause__
    finally:
        ckpt.close()
    logging.info("restored %s step %d", workdir, step)
    return RunCheckpoint(workdir, config, jax.device_get(state.params), list(class_names), step)


def _with_choices(
    error: UnreadableCheckpointError, ckpt: Checkpointer, checkpoint: str
) -> UnreadableCheckpointError:
    """``error`` plus the other ``checkpoint=`` choice of :func:`load_run`, when it reads another
    step."""
    latest = ckpt.latest_step()
    if checkpoint == "best" and latest is not None and latest != error.step:
        hint = (
            f"; checkpoint='latest' reads step {latest} (load_run(..., checkpoint='latest'), "
            "segment --which=latest, a student's --config.teacher_checkpoint=latest)"
        )
        return UnreadableCheckpointError(
            str(error) + hint, path=error.path, step=error.step, reason=error.reason
        )
    return error


class FinishedRunError(UserError, RuntimeError):
    """A finished run whose results cannot be vouched for by its final checkpoint (missing,
    damaged, or holding other params): the rerun refuses, writing nothing (one line naming the
    workdir and what to do)."""


def finished_run(workdir: str | os.PathLike, config) -> dict | None:
    """The final metrics of the finished run of ``config`` in ``workdir``, or None.

    Finished: :data:`FINAL_METRICS_NAME` records the run's config fingerprint
    (:func:`config_fingerprint_for`). Its latest checkpoint must then read back (content
    verified) to the ``params_fingerprint`` the file reports; otherwise :class:`FinishedRunError`
    is raised and nothing is written or moved: a rerun of a finished run never retrains it over
    its results, whatever it finds. None when there is no such file, or it does not parse, or it
    records another config. A finished student's teacher (:func:`teacher_params_fingerprint`,
    read only then) must be the one it recorded
    (:func:`check_same_teacher`). Reads only.
    """
    workdir = pathlib.Path(workdir).expanduser().absolute()
    path = workdir / FINAL_METRICS_NAME
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(result, dict):
        return None
    if result.get("config_fingerprint") != config_fingerprint_for(workdir, config):
        return None
    if result.get(TEACHER_KEY):
        check_same_teacher(workdir, result[TEACHER_KEY], teacher_params_fingerprint(config))
    keep = (
        f"its results ({path}) are kept as they are. To train the run again from its newest "
        f"good checkpoint, move {path.name} out of {workdir} and rerun"
    )
    try:
        run = load_run(workdir, checkpoint="latest")
    except FileNotFoundError:
        raise FinishedRunError(
            f"{workdir} holds a finished run but no checkpoint to vouch for it; {keep}"
        ) from None
    except UnreadableCheckpointError as e:
        raise FinishedRunError(
            f"{workdir} holds a finished run whose final checkpoint {e.path} is damaged "
            f"({e.reason}); {keep}"
        ) from None
    if params_fingerprint(run.params) != result.get("params_fingerprint"):
        raise FinishedRunError(
            f"{workdir} holds a finished run, but its latest checkpoint (step {run.step}) does "
            f"not hold the params {path.name} reports; {keep}"
        )
    return result


TEACHER_KEY = "teacher_params_fingerprint"  # in a student's final metrics and checkpoints


def check_same_teacher(workdir, recorded: str | None, found: str | None) -> None:
    """``ValueError`` (naming ``teacher_workdir`` and ``workdir``) when a student run recorded a
    teacher (its params fingerprint) other than the one ``config.teacher_workdir`` holds now.
    Nothing to check when either is unknown (runs of earlier versions recorded none)."""
    if recorded and found and recorded != found:
        raise field_error(
            "teacher_workdir",
            f"the student in {workdir} was trained against another teacher (params "
            f"{recorded[:12]}...) than the one there now ({found[:12]}...); use a new workdir "
            "for a student of this teacher",
        )


def load_teacher(config, num_classes: int | None = None) -> tuple[ml_collections.ConfigDict, Any]:
    """``(teacher_config, teacher_params)`` from ``config.teacher_workdir`` (host arrays); its
    class count is checked against ``num_classes`` when given (:func:`check_teacher_classes`)."""
    workdir = pathlib.Path(config.teacher_workdir).expanduser()
    try:
        tconfig, _ = read_run_config(workdir)
    except (FileNotFoundError, ValueError) as e:
        raise field_error("teacher_workdir", f"{e}; train the teacher there first") from e
    if tconfig.get("mode") != "teacher":
        raise field_error(
            "teacher_workdir", f"{workdir} is a {tconfig.get('mode')!r} run, not a teacher"
        )
    for field in ("width", "dataset"):
        if tconfig.get(field) != config[field]:
            raise field_error(
                field,
                f"{config[field]!r} differs from the teacher's {tconfig.get(field)!r} ({workdir})",
            )
    try:
        run = load_run(workdir, checkpoint=config.teacher_checkpoint)
    except (FileNotFoundError, UnreadableCheckpointError) as e:
        raise field_error("teacher_workdir", str(e)) from e
    if num_classes is not None:
        check_teacher_classes(config, run.params, num_classes)
    logging.info("teacher: %s step %d", workdir, run.step)
    return tconfig, run.params


def teacher_params_fingerprint(config) -> str | None:
    """The params fingerprint of a student's teacher (``config.teacher_workdir``), None for
    other runs: what :func:`finished_run` checks a finished student against."""
    if config.get("mode") != "student" or not config.get("teacher_workdir"):
        return None
    return params_fingerprint(load_teacher(config)[1])


def check_teacher_classes(config, teacher_params: Any, num_classes: int) -> None:
    """``ValueError`` naming ``teacher_workdir`` unless the teacher's classifier has
    ``num_classes`` outputs."""
    found = int(np.shape(jax.tree.leaves(teacher_params["fc8"])[0])[-1])
    if found != num_classes:
        raise field_error(
            "teacher_workdir",
            f"the teacher in {config.teacher_workdir} has {found} classes, the data {num_classes}",
        )


def evaluate_run(
    run: RunCheckpoint, *, depth_aware: bool | None = None, data_dir: str | None = None
) -> dict:
    """``metrics.compute_metrics`` plus ``"confusion_matrix"`` of a run on its test split.

    Full resolution; images of mixed sizes are padded into one canvas as the run's
    ``eval_pad_to`` says (``input_pipeline.eval_pad_size``). One device and batch 1 in a single
    process; in a multi-process job every process must call it, each evaluates its shard on its
    devices, and all get the whole split's result. ``depth_aware=False`` applies a teacher's
    params with plain convs and no depth: where a parameter-sharing student starts.
    """
    num_classes = len(run.class_names)
    model = run.make_model(depth_aware=depth_aware)
    source = input_pipeline.load_data_source(
        run.config.dataset, "test", data_dir=data_dir or resolve_data_dir(run.config)
    )
    pad_to = input_pipeline.eval_pad_size(source, run.config.get("eval_pad_to", (0, 0)))
    par = DataParallel("jit", 1 if jax.process_count() == 1 else 0)
    eval_fn = par.compile(
        functools.partial(eval_step, model=model, num_classes=num_classes, padded=bool(pad_to))
    )
    eval_ds = input_pipeline.create_eval_dataset(
        source,
        num_classes=num_classes,
        batch_size=par.num_devices,
        num_devices=par.pipeline_num_devices,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        pad_to=pad_to,
    )
    cm = loop.evaluate(eval_fn, par.put_state(run.params), eval_ds, par, num_classes)
    return {**metrics.compute_metrics(cm), "confusion_matrix": cm.tolist()}


def eval_summary(cm: np.ndarray) -> dict[str, float]:
    """``mean_iou``, ``mean_pixel_accuracy`` and ``pixel_accuracy`` of a confusion matrix (NaN
    where undefined): what an evaluation during training logs and checkpoints."""
    m = metrics.compute_metrics(cm)
    return {
        k: (math.nan if m[k] is None else m[k])
        for k in ("mean_iou", "mean_pixel_accuracy", "pixel_accuracy")
    }


def final_metrics(
    config,
    cm: np.ndarray,
    class_names: list[str],
    params: Any,
    *,
    config_fingerprint: str | None = None,
    teacher_params_fingerprint: str | None = None,
) -> dict:
    """What a finished run reports (``<workdir>/final_metrics.json``)::

    {"mode", "init", "dataset", "steps", "params_fingerprint", "config_fingerprint",
     "pixel_accuracy", "mean_pixel_accuracy", "mean_iou", "per_class_iou": {name: iou},
     "per_class_pixel_accuracy": {name: acc}, "class_names", "num_present_classes",
     "num_pixels", "confusion_matrix"}
    """
    m = metrics.compute_metrics(cm)
    return {
        "mode": config.mode,
        "init": config.init,
        "dataset": config.dataset,
        "steps": config.num_train_steps,
        "params_fingerprint": params_fingerprint(params),
        "config_fingerprint": config_fingerprint or fingerprint(config),
        "pixel_accuracy": m["pixel_accuracy"],
        "mean_pixel_accuracy": m["mean_pixel_accuracy"],
        "mean_iou": m["mean_iou"],
        "per_class_iou": dict(zip(class_names, m["per_class_iou"], strict=True)),
        "per_class_pixel_accuracy": dict(
            zip(class_names, m["per_class_pixel_accuracy"], strict=True)
        ),
        "class_names": class_names,
        "num_present_classes": m["num_present_classes"],
        "num_pixels": m["num_pixels"],
        "confusion_matrix": cm.tolist(),
        **({TEACHER_KEY: teacher_params_fingerprint} if teacher_params_fingerprint else {}),
    }


def write_final_metrics(workdir: pathlib.Path, result: dict) -> None:
    """Writes ``result`` (:func:`final_metrics`) to ``<workdir>/final_metrics.json`` atomically
    (strict JSON) and logs it with its confusion table."""
    text = json.dumps(result, indent=2, allow_nan=False) + "\n"
    atomic_write_text(workdir / FINAL_METRICS_NAME, text)
    logging.info(
        "final metrics: mIoU %s mPA %s PA %s\n%s",
        result["mean_iou"],
        result["mean_pixel_accuracy"],
        result["pixel_accuracy"],
        metrics.format_confusion_table(
            np.asarray(result["confusion_matrix"]), result["class_names"]
        ),
    )
