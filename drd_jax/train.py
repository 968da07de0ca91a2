"""Training and evaluation of the DeepLab-VGG16 teacher, student and baseline (flax-examples shape).

``train_and_evaluate(config, workdir)`` runs one of three modes (``config.mode``):

* ``'baseline'``: RGB only, plain convs, pixel-wise cross-entropy (BL).
* ``'teacher'``: RGB-D, depth-aware convs (D-Conv), cross-entropy (TN).
* ``'student'``: RGB only, plain convs, ``CE + config.vtce_weight * VTCE`` (and any other
  distillation term switched on by its weight) against a frozen teacher restored from
  ``config.teacher_workdir`` (its best-by-mIoU checkpoint, or its latest with
  ``config.teacher_checkpoint='latest'``); the teacher is never checkpointed with the student.
  ``config.init``: ``'teacher'`` (parameter sharing: the student starts from a copy of the
  teacher's param tree), ``'scratch'`` or ``'imagenet'`` (``config.pretrained_path``).
  The ablation rows: BL+VTCE = student/scratch; BL+PS = student/teacher with ``vtce_weight=0``;
  BL+PS+VTCE = student/teacher.

The training loop is written out in ``_train``: each step is dispatched without waiting; at a
sync step (one that is logged, evaluated or saved, and the last) the metrics of every step since
the previous one reach the host in one transfer and are checked, in order; then the step is
logged, evaluated, saved. Where the other pieces live: config fields and fingerprint
(``drd_jax.config``), model, optimiser and state (``state``), the compiled steps and the loss
(``steps``), the loop's host-side helpers (``loop``), runs read back and final metrics
(``runs``), distillation (``distillation``), jit/pmap (``parallel``), checkpoints
(``checkpointing``). ``config.batch_size`` is the global
batch; on several hosts (``experiments/train.py --multihost``) each process reads its own shard
and only process 0 writes logs and ``final_metrics.json``.

Resume: checkpoints every ``config.checkpoint_every_steps`` steps, at every evaluation
(``config.eval_every_steps``; the best by ``mean_iou`` is kept) and at the end; a rerun with the
same config fingerprint continues from the latest, data position included, to the same params as
an uninterrupted run. ``config.stop_after_steps = k`` saves at step ``k`` and returns.

Start: everything is checked before anything is written into the workdir: the config (errors name
the field), the workdir itself (a file, under a file, not writable, or holding an export of
``experiments.export``: ``files.UnusableDirectoryError`` or ``ValueError`` naming it), the
workdir's recorded config (a workdir holding checkpoints of another config is refused; one without
checkpoints takes the new config), the devices, every record of the train and test splits
(``input_pipeline.check_readable``: each record's stored hash), ``config.eval_pad_to`` against the
test images and the teacher. A finished run (its ``final_metrics.json`` for this config) is
returned as it is, with nothing written, once its final checkpoint reads back (content verified) to
the params the file reports; otherwise ``runs.FinishedRunError`` says so and still nothing is
written: a rerun never retrains over a finished run's results. A student's teacher is identified by
its params fingerprint, recorded with the student's checkpoints and final metrics (not by
``teacher_workdir``, which may move with the runs); resuming or reusing a student against another
teacher is refused. Then process 0 takes the workdir's lock for the run (``drd_jax.workdir_lock``:
a second live run on the workdir is refused at once, naming the holder's pid and host; a killed
run's lock never blocks).

Faults: a non-finite loss, gradient or parameter (``FloatingPointError``) or a cross-entropy that
explodes while finite (``divergence.TrainingDivergedError``; ``config.divergence_factor``, not in
the fingerprint: rerun with a larger value, or 0, to resume past it) stops the run naming the step
and the last good checkpoint; every step is checked before a later one is logged or saved.
Config errors raise ``ValueError`` naming the field. A damaged latest checkpoint of an unfinished
run (unreadable, or its content differs from the digest recorded at save) is moved to
``damaged_checkpoints/`` with a warning and the run resumes from the newest good one (to the
same params). A full disk raises ``files.DiskFullError`` (one message naming the path and the
space needed); the same command resumes once space is freed.

Outputs in ``workdir``: ``config.json``, ``checkpoints/``, ``metrics.jsonl``, ``tensorboard/``,
``curves.png`` (``MetricWriter``) and ``final_metrics.json`` (``runs.final_metrics``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pathlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import numpy as np

from drd_jax import distillation as distillation_lib
from drd_jax import input_pipeline, loop, runs, serving
from drd_jax.checkpointing import Checkpointer, check_workdir_config
from drd_jax.config import field_error, resolve_data_dir, validate_config
from drd_jax.divergence import DivergenceMonitor, TrainingDivergedError
from drd_jax.errors import CheckpointError
from drd_jax.extras import require
from drd_jax.files import DiskFullError, check_writable_dir, disk_full_error, is_disk_full
from drd_jax.metric_writers import MetricWriter
from drd_jax.parallel import DataParallel, main_process_first
from drd_jax.state import create_train_state, make_model, params_fingerprint
from drd_jax.steps import eval_step, make_train_step
from drd_jax.workdir_lock import WorkdirLock, WorkdirLockedError

ml_collections = require("ml_collections", extra="train")

__all__ = ["train_and_evaluate"]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
    """Trains (resuming from ``workdir`` if it holds a checkpoint), evaluates on the test split.

    Returns the dict written to ``<workdir>/final_metrics.json`` (read back, nothing written, when
    the run has finished already); with ``config.stop_after_steps`` reached first,
    ``{"stopped_at_step", "steps", "mode"}`` (no evaluation, nothing written).
    """
    validate_config(config)
    workdir = _check_workdir(workdir)
    config_fp = runs.config_fingerprint_for(workdir, config)
    check_workdir_config(workdir, config_fp)
    par = _data_parallel(config)
    done = runs.finished_run(workdir, config)
    if done is not None:
        logging.info("%s holds this finished run: its final metrics (nothing written)", workdir)
        return done
    teacher = _load_teacher(config)
    data = _load_data(config)
    if teacher.params is not None:
        runs.check_teacher_classes(config, teacher.params, len(data.class_names))
    with _disk_full_named(workdir), _workdir_lock(workdir):
        ckpt = Checkpointer(
            workdir,
            config_fingerprint=config_fp,
            config=config.to_dict(),
            max_to_keep=config.max_checkpoints_to_keep,
            save_interval_steps=config.checkpoint_every_steps,
            best_metric="mean_iou",
        )
        try:
            result = _train(config, workdir, ckpt, par, data, teacher)
        except BaseException:
            _close_after_error(ckpt.close, ckpt.checkpoint_dir)
            raise
        ckpt.close()
        return result


def _check_workdir(workdir) -> pathlib.Path:
    """``workdir`` as an absolute path, if a run may write there (``UnusableDirectoryError``
    naming it otherwise: a file, under a file, not writable); a directory holding an export
    (``experiments.export``) is refused, so that neither overwrites the other's files."""
    workdir = check_writable_dir(workdir, what="workdir")
    if serving.is_export_dir(workdir):
        raise CheckpointError(
            f"workdir {workdir} holds an export ({serving.CARD_NAME}, written by "
            "experiments.export), not a training run: train into another directory"
        )
    return workdir


class _Data(NamedTuple):
    """The splits of ``config.dataset``, checked readable, its class names and the canvas
    evaluation pads the test images to (``input_pipeline.eval_pad_size``; None: no padding)."""

    train: Any
    test: Any
    class_names: list[str]
    eval_pad_to: tuple[int, int] | None


def _eval_canvas(config, test) -> tuple[int, int] | None:
    """The evaluation canvas of ``config.eval_pad_to`` on ``test``; a canvas smaller than the
    largest test image raises the field's error now, not at the first evaluation."""
    largest = input_pipeline.eval_pad_size(test, (0, 0))  # None: every image has one size
    pad_to = tuple(config.eval_pad_to)
    if pad_to == (0, 0):
        return largest
    if largest is None:
        largest = tuple(np.shape(input_pipeline.read_record(test, 0)["depth"])[:2])
    if pad_to[0] < largest[0] or pad_to[1] < largest[1]:
        raise field_error(
            "eval_pad_to",
            f"{list(pad_to)} is smaller than the largest test image of {config.dataset}, "
            f"{list(largest)} (H, W); use at least that, or 0,0 to pad to the largest",
        )
    return input_pipeline.eval_pad_size(test, pad_to)


def _load_data(config) -> _Data:
    """Builds the dataset if needed (synthetic data; one process of a multi-host job), opens its
    splits, verifies every record of both (``CorruptDataError`` naming the shard and the rebuild
    command) and checks ``config.eval_pad_to`` against the test images."""
    data_dir = resolve_data_dir(config)
    train = main_process_first(  # one process builds synthetic data
        lambda: input_pipeline.load_data_source(
            config.dataset, "train", data_dir=data_dir, prepare=True
        ),
        "prepare the dataset",
    )
    test = input_pipeline.load_data_source(config.dataset, "test", data_dir=data_dir)
    for source in (train, test):
        check = input_pipeline.check_readable(source, dataset=config.dataset, data_dir=data_dir)
        logging.info(
            "%s: verified %d records (%.1f MB) in %.1f s",
            config.dataset,
            check.records,
            check.bytes / 1e6,
            check.seconds,
        )
    class_names = input_pipeline.dataset_class_names(config.dataset, train)
    return _Data(train, test, class_names, _eval_canvas(config, test))


class _Teacher(NamedTuple):
    """A student's teacher: its config, params (host arrays) and params fingerprint, which
    identifies it in the student's checkpoints and final metrics (all None without one)."""

    config: Any = None
    params: Any = None
    params_fingerprint: str | None = None


def _load_teacher(config) -> _Teacher:
    """The teacher of a student with one (``config.teacher_workdir``), else an empty one."""
    if config.mode == "student" and config.teacher_workdir:
        tconfig, params = runs.load_teacher(config)
        return _Teacher(tconfig, params, params_fingerprint(params))
    return _Teacher()


@contextlib.contextmanager
def _workdir_lock(workdir: pathlib.Path) -> Iterator[None]:
    """Process 0 holds the workdir's lock for the run; on a multi-host job every process stops
    when process 0 cannot take it."""
    lock, refused = None, None
    if jax.process_index() == 0:
        try:
            lock = WorkdirLock(workdir).acquire()
        except WorkdirLockedError as e:
            refused = e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        ok = multihost_utils.broadcast_one_to_all(np.int32(refused is None))
        if not int(ok) and refused is None:
            raise WorkdirLockedError(
                f"workdir {workdir} is in use by another run: process 0 could not lock it "
                "(its log names the holder)"
            )
    if refused is not None:
        raise refused
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


@contextlib.contextmanager
def _disk_full_named(workdir: pathlib.Path) -> Iterator[None]:
    """A full disk met anywhere in the run (logs, curves, final metrics) raises one
    ``DiskFullError`` naming the file (checkpoints name their own)."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as e:
        if not is_disk_full(e):
            raise
        raise disk_full_error(
            e.filename or workdir,
            what="the run's outputs",
            needed=None,
            then="rerun the same command: it resumes from the newest checkpoint",
        ) from None  # its message says it all


def _close_after_error(close: Callable[[], None], what) -> None:
    """Closes ``what`` while an error propagates: a second error there (e.g. the same full
    disk) is logged in one line instead of raised over the first."""
    try:
        close()
    except Exception as e:  # noqa: BLE001 - the first error is the one to report
        logging.warning("while stopping, %s did not close cleanly: %s", what, str(e)[:300])


def _data_parallel(config) -> DataParallel:
    par = DataParallel(config.parallel, config.num_devices)
    n = par.num_devices
    for field in ("batch_size", "eval_batch_size"):
        size = config[field] or n  # eval_batch_size 0: one image per device
        if size % n:
            raise field_error(field, f"{size} must be divisible by the number of devices {n}")
    return par


def _train_iterator(config, source, par: DataParallel, num_classes: int, *, seed, start_step):
    return input_pipeline.create_train_iterator(
        source,
        batch_size=config.batch_size,
        crop_size=tuple(config.crop_size),
        num_classes=num_classes,
        seed=seed,
        start_step=start_step,
        num_devices=par.pipeline_num_devices,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        scale_range=tuple(config.scale_range),
        flip_prob=config.flip_prob,
        color_jitter=config.color_jitter,
        num_workers=config.num_workers,
    )


def _check_step(m, step: int, *, monitor: DivergenceMonitor, ckpt: Checkpointer) -> None:
    """Stops the run (before anything of this step is saved) on a non-finite or exploded step,
    raising ``FloatingPointError`` or ``TrainingDivergedError`` (logged too) that names the step
    and the last good checkpoint."""
    latest = ckpt.latest_step()
    last_good = (
        f"the state was not saved; last good checkpoint: step {latest} in {ckpt.checkpoint_dir}"
        if latest is not None
        else "the state was not saved; no checkpoint was written yet (a rerun starts afresh)"
    )
    if not bool(m["finite"]):
        message = (
            f"non-finite training loss/gradients/params at step {step} "
            f"(loss={float(m['loss'])}, grad_norm={float(m['grad_norm'])}); {last_good}"
        )
        logging.error(message)
        raise FloatingPointError(message)
    problem = monitor.check(float(m["ce_loss"]))
    if problem is not None:
        message = (
            f"training diverged at step {step}: cross-entropy {problem} "
            f"(loss={float(m['loss']):.3g}, grad_norm={float(m['grad_norm']):.3g}); {last_good}. "
            "Rerun the same command with a larger --config.divergence_factor (0 = off) to resume "
            "from it, or start a new workdir with a lower learning rate"
        )
        logging.error(message)
        raise TrainingDivergedError(message)


class _Start(NamedTuple):
    """A run's placed state, first step, distillation and placed teacher (None, None if off)."""

    state: Any
    step: int
    distillation: distillation_lib.Distillation | None
    teacher_params: Any


def _start(config, workdir, ckpt: Checkpointer, par: DataParallel, teacher, num_classes) -> _Start:
    """The initial state, restored from the newest readable checkpoint when there is one
    (damaged newer ones are moved aside with a warning: ``Checkpointer.restore(fall_back=True)``;
    one trained against another teacher is refused); ``teacher`` is :func:`_load_teacher`'s."""
    tconfig, teacher_params, teacher_fp = teacher
    distillation = None
    if tconfig is not None:
        teacher_model = make_model(tconfig, num_classes, depth_aware=True)
        distillation = distillation_lib.make_distillation(config, teacher_model)
    rng = jax.random.PRNGKey(config.seed)
    state = create_train_state(config, rng, num_classes=num_classes, teacher_params=teacher_params)
    step = 0
    if ckpt.latest_step() is not None:
        # jit: restore straight into the replicated global arrays (multi-host safe).
        target = state if par.kind == "pmap" else par.put_state(state)
        state, extra = ckpt.restore(target=target, fall_back=True)
        runs.check_same_teacher(workdir, extra.get(runs.TEACHER_KEY), teacher_fp)
        step = int(state.step)
        logging.info("resumed %s at step %d", workdir, step)
    if distillation is None or not distillation.any_term:
        # baseline, teacher, or BL+PS (no distillation term): no teacher in the step
        return _Start(par.put_state(state), step, None, None)
    return _Start(par.put_state(state), step, distillation, par.put_state(teacher_params))


def _pretrain_autoencoder(config, state, distillation, teacher_params, source, par, workdir):
    """Knowledge adaptation's first stage (before the student's first step), on its own data
    order (``seed + 1``); returns ``state`` with the trained ``autoencoder_params``."""
    num_classes = distillation.teacher_model.num_classes
    batches = _train_iterator(config, source, par, num_classes, seed=config.seed + 1, start_step=0)
    params = distillation_lib.pretrain_autoencoder(
        state.autoencoder_params,
        distillation,
        teacher_params,
        batches,
        par,
        steps=int(config.ka_autoencoder_steps),
        learning_rate=float(config.ka_autoencoder_learning_rate),
        global_batch_size=config.batch_size,
        log_every_steps=config.log_every_steps,
        workdir=workdir,
        write_curves=bool(config.write_curves),
    )
    return state.replace(autoencoder_params=params)


def _train(config, workdir: pathlib.Path, ckpt: Checkpointer, par, data: _Data, teacher) -> dict:
    is_main = jax.process_index() == 0
    train_source, test_source, class_names, pad_to = data
    num_classes = len(class_names)
    state, start_step, distillation, teacher_params = _start(
        config, workdir, ckpt, par, teacher, num_classes
    )
    compiled_train_step = par.compile(
        make_train_step(
            config,
            num_classes=num_classes,
            num_train_images=len(train_source),
            distillation=distillation,
        ),
        donate_state=True,
    )
    model = make_model(config, num_classes)
    compiled_eval_step = par.compile(
        functools.partial(
            eval_step, model=model, num_classes=num_classes, padded=pad_to is not None
        )
    )
    eval_ds = input_pipeline.create_eval_dataset(
        test_source,
        num_classes=num_classes,
        pad_to=pad_to,
        batch_size=config.eval_batch_size or par.num_devices,
        num_devices=par.pipeline_num_devices,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    total = config.num_train_steps
    end = min(total, config.stop_after_steps) if config.stop_after_steps else total
    writer = MetricWriter(
        workdir, resume_step=start_step, active=is_main, curves_on_close=bool(config.write_curves)
    )
    checkpoint_extra = {"class_names": class_names}  # and "data_step", the steps done
    if teacher.params_fingerprint:
        checkpoint_extra[runs.TEACHER_KEY] = teacher.params_fingerprint

    def evaluate(step: int, state) -> tuple[np.ndarray, dict]:
        """The test split's confusion matrix and summary after ``step`` steps (summary logged)."""
        cm = loop.evaluate(compiled_eval_step, state.params, eval_ds, par, num_classes)
        summary = runs.eval_summary(cm)
        writer.write_scalars(step, summary, split="eval")
        return cm, summary

    try:
        if start_step == 0 and distillation is not None and distillation.uses_autoencoder:
            state = _pretrain_autoencoder(
                config, state, distillation, teacher_params, train_source, par, workdir
            )
        bar = loop.progress_bar(
            total=total,
            initial=start_step,
            desc=config.mode,
            enabled=bool(config.progress_bar and is_main),
        )
        train_log = loop.TrainLog(
            writer,
            log_every_steps=config.log_every_steps,
            end_step=end,
            batch_size=config.batch_size,
            start_step=start_step,
            bar=bar,
        )
        monitor = DivergenceMonitor(float(config.divergence_factor))
        train_batches = _train_iterator(
            config, train_source, par, num_classes, seed=config.seed, start_step=start_step
        )
        pending = loop.PendingMetrics()
        for step in range(start_step, end):
            # Dispatched without waiting: the step's metrics stay on the devices for now.
            batch = par.shard_batch(next(train_batches))
            state, metrics = compiled_train_step(state, batch, teacher_params)
            pending.add(step, metrics)
            train_log.tick()
            done = step + 1  # steps done
            # What this step is due for. The last step's evaluation and save (done == total)
            # are the final evaluation's, after the loop.
            log_now = train_log.due(done)
            eval_now = done < total and bool(config.eval_every_steps)
            eval_now = eval_now and done % config.eval_every_steps == 0
            save_now = done < total and (done == end or eval_now or ckpt.should_save(done))
            if not (log_now or save_now or done == end):
                continue
            # A sync step: the metrics of every step since the last one reach the host in one
            # transfer, and each is checked, in order, before anything after it is logged or kept.
            for pending_step, host_metrics in pending.to_host(par):
                _check_step(host_metrics, pending_step, monitor=monitor, ckpt=ckpt)
            if log_now:
                train_log.write(done, host_metrics)
            eval_summary = evaluate(done, state)[1] if eval_now else None
            if save_now:  # the state is unreplicated only to be saved
                ckpt.save(
                    done,
                    par.unreplicate(state),
                    metrics=eval_summary,
                    extra={"data_step": done, **checkpoint_extra},
                    force=eval_now or done == end,
                )
        bar.close()
        final_step = int(par.host(state.step))
        if final_step < total:
            ckpt.wait()
            result = {"stopped_at_step": final_step, "steps": final_step, "mode": config.mode}
        else:
            cm, summary = evaluate(total, state)
            final_state = par.unreplicate(state)
            ckpt.save(
                total,
                final_state,
                metrics=summary,
                extra={"data_step": total, **checkpoint_extra},
                force=True,
            )
            result = runs.final_metrics(
                config,
                cm,
                class_names,
                final_state.params,
                config_fingerprint=ckpt.config_fingerprint,
                teacher_params_fingerprint=teacher.params_fingerprint,
            )
            ckpt.wait()  # final_metrics.json only once the final checkpoint is on disk
            if is_main:
                runs.write_final_metrics(workdir, result)
    except BaseException:
        _close_after_error(writer.close, writer.jsonl_path)
        raise
    writer.close()
    return result
