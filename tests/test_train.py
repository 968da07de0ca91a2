"""Tests of drd_jax.train and the experiments.train entry point, on synthetic_rgbd/tiny.

XLA optimisations are disabled for this module (``jax_disable_most_optimizations``): compiling the
tiny D-Conv teacher drops from minutes to seconds on a slow CPU. Everything compared within a test
runs under the same setting.
"""

import json
import logging
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import folder_stats, tiny

from drd_jax import config as config_lib
from drd_jax import input_pipeline, loop, parallel, runs, steps, train
from drd_jax import state as state_lib
from drd_jax.checkpointing import Checkpointer, UnreadableCheckpointError
from drd_jax.divergence import DivergenceMonitor
from drd_jax.metric_writers import read_jsonl
from experiments.configs import synthetic

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG_FILE = REPO_ROOT / "experiments" / "configs" / "synthetic.py"
NUM_CLASSES = 6


pytestmark = pytest.mark.usefixtures("fast_compile")


def read_final(workdir) -> dict:
    return json.loads((pathlib.Path(workdir) / "final_metrics.json").read_text())


@pytest.fixture(scope="module")
def teacher_run(tiny_teacher_run):
    """``(workdir, result)`` of the session's tiny teacher (read it, never write to it)."""
    return tiny_teacher_run


@pytest.fixture(scope="module")
def baseline_proc(data_dir, tmp_path_factory):
    """The tiny baseline through the absl entry point, with a ``--config.<field>`` override:
    ``(workdir, stderr)``.

    A subprocess: config_flags registers the override flags from ``sys.argv`` at import time.
    """
    workdir = tmp_path_factory.mktemp("baseline")
    env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.train",
            f"--config={CONFIG_FILE}:tiny",
            f"--workdir={workdir}",
            "--config.mode=baseline",
            f"--config.data_dir={data_dir}",
            "--config.write_curves=True",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["mode"] == "baseline" and summary["steps"] == 4
    return workdir, proc.stderr


@pytest.fixture(scope="module")
def baseline_run(baseline_proc):
    """The workdir of :func:`baseline_proc` (read it, never write to it: copy it first)."""
    return baseline_proc[0]


def test_entry_point_logs_quietly(baseline_proc):
    """No orbax INFO dumps, no 'tracked_metric' warning per save, no tqdm frames."""
    lines = baseline_proc[1].splitlines()
    assert not [line for line in lines if "orbax" in line or "checkpoint_manager" in line]
    assert "tracked_metric" not in baseline_proc[1] and "\r" not in baseline_proc[1]
    assert len(lines) < 40, "\n".join(lines)


def test_entry_point_baseline_writes_final_metrics(baseline_run):
    m = read_final(baseline_run)
    assert m["mode"] == "baseline" and m["steps"] == 4
    for key in ("pixel_accuracy", "mean_pixel_accuracy", "mean_iou"):
        assert math.isfinite(m[key]) and 0.0 <= m[key] <= 1.0, key
    assert m["class_names"] == ["wall", "floor", "box", "ball", "pole", "cone"]
    assert set(m["per_class_iou"]) == set(m["class_names"])
    assert re.fullmatch(r"[0-9a-f]{64}", m["params_fingerprint"])
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (NUM_CLASSES, NUM_CLASSES)
    assert cm.sum() == m["num_pixels"] > 0
    assert m["num_pixels"] <= 8 * 48 * 64  # the whole tiny test split, full resolution
    assert (baseline_run / "curves.png").is_file()
    records = read_jsonl(baseline_run / "metrics.jsonl")
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    assert train_steps == [1, 2, 3, 4]
    for r in records:
        if r["split"] == "train":
            assert {"loss", "lr", "images_per_sec", "vtce_loss"} <= set(r["scalars"])
            assert r["scalars"]["vtce_loss"] == 0.0
    assert [r["scalars"]["mean_iou"] for r in records if r["split"] == "eval"] == [m["mean_iou"]]
    # The final checkpoint carries the eval metrics and is the best one.
    body = json.loads((baseline_run / "config.json").read_text())
    ckpt = Checkpointer(baseline_run, config_fingerprint=body["config_fingerprint"])
    try:
        assert ckpt.latest_step() == 4 and ckpt.best_step() == 4
    finally:
        ckpt.close()


def test_teacher_runs_with_depth(teacher_run):
    workdir, result = teacher_run
    assert result == read_final(workdir)
    assert result["mode"] == "teacher"
    assert math.isfinite(result["mean_iou"])
    records = read_jsonl(workdir / "metrics.jsonl")
    assert all(math.isfinite(r["scalars"]["loss"]) for r in records if r["split"] == "train")


def test_teacher_model_uses_depth(data_dir):
    c = tiny(data_dir, mode="teacher")
    assert state_lib.make_model(c, NUM_CLASSES).depth_aware
    assert not state_lib.make_model(tiny(data_dir), NUM_CLASSES).depth_aware


def test_student_shares_teacher_params_and_adds_vtce(teacher_run, data_dir, tmp_path):
    teacher_dir, teacher_result = teacher_run
    c = tiny(
        data_dir,
        mode="student",
        init="teacher",
        teacher_workdir=str(teacher_dir),
        parallel="pmap",
        vtce_weight=1.0,
        eval_every_steps=2,
    )
    # Parameter sharing: the student starts from exactly the teacher's final (best) params.
    _, teacher_params = runs.load_teacher(c, NUM_CLASSES)
    state = state_lib.create_train_state(
        c, jax.random.PRNGKey(c.seed), num_classes=NUM_CLASSES, teacher_params=teacher_params
    )
    assert state_lib.params_fingerprint(state.params) == teacher_result["params_fingerprint"]
    fresh = state_lib.create_train_state(
        tiny(data_dir, mode="student"), jax.random.PRNGKey(c.seed), num_classes=NUM_CLASSES
    )
    assert state_lib.params_fingerprint(fresh.params) != teacher_result["params_fingerprint"]

    result = train.train_and_evaluate(c, tmp_path / "student")
    assert result["mode"] == "student" and math.isfinite(result["mean_iou"])
    train_records = [
        r["scalars"]
        for r in read_jsonl(tmp_path / "student" / "metrics.jsonl")
        if r["split"] == "train"
    ]
    assert len(train_records) == 4
    records = read_jsonl(tmp_path / "student" / "metrics.jsonl")
    assert [r["step"] for r in records if r["split"] == "eval"] == [2, 4]
    for s in train_records:
        assert s["vtce_loss"] > 0.0
        assert s["loss"] == pytest.approx(s["ce_loss"] + s["vtce_loss"], rel=1e-5)
        assert s["temperature"] == pytest.approx(math.exp(-0.9), rel=1e-5)  # epoch 0 and 1


def test_student_trains_through_the_vanishing_temperature(teacher_run, data_dir, tmp_path):
    """The paper's schedule reaches T ≈ 1e-31 at epoch 13, 1.1e-36 at 14, a subnormal at 15 and
    0 from 16. With one step per epoch (batch = the 16 training images) a student gets there in
    16 steps; after 40 more at a constant learning rate it must be finite, with logits no larger
    than those of the same student trained with CE alone. (With the gradient that dropped q^s
    below T ≈ 1e-30, the logits grew every step and this run blew up near step 48.)"""
    teacher_dir, _ = teacher_run

    def student(vtce_weight):
        c = tiny(
            data_dir,
            mode="student",
            init="teacher",
            teacher_workdir=str(teacher_dir),
            vtce_weight=vtce_weight,
            batch_size=16,
            num_train_steps=56,
            lr_power=0.0,
            checkpoint_every_steps=56,
            dropout_rate=0.0,
        )
        workdir = tmp_path / f"vtce_{vtce_weight}"
        result = train.train_and_evaluate(c, workdir)
        records = [r for r in read_jsonl(workdir / "metrics.jsonl") if r["split"] == "train"]
        return c, result, [r["scalars"] for r in records], runs.load_run(workdir).params

    c, result, scalars, params = student(1.0)
    assert math.isfinite(result["mean_iou"])
    assert len(scalars) == 56
    temperatures = [s["temperature"] for s in scalars]  # of steps (= epochs) 0..55
    assert temperatures[13] == pytest.approx(math.exp(-0.9 * (13 * 13 - 13 + 2) / 2), rel=1e-5)
    assert 0.0 < temperatures[14] < 1e-35 and temperatures[16:] == [0.0] * 40
    for s in scalars:
        assert all(math.isfinite(v) for v in s.values()), s
        assert s["loss"] < 5.0, s  # CE starts near log 6 ≈ 1.8, VTCE at T = 0.4 near 0.7
    _, _, ce_scalars, ce_params = student(0.0)

    source = input_pipeline.load_data_source(c.dataset, "test", data_dir=data_dir)
    images = next(iter(input_pipeline.create_eval_dataset(source, num_classes=6, batch_size=4)))
    model = state_lib.make_model(c, NUM_CLASSES)
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))
    largest = float(np.abs(apply(params, images["image"])).max())
    largest_ce = float(np.abs(apply(ce_params, images["image"])).max())
    assert np.isfinite(largest) and largest < 2.0 * largest_ce + 0.5, (largest, largest_ce)
    assert scalars[-1]["ce_loss"] < 1.2 * ce_scalars[-1]["ce_loss"]


def _train_few_steps(config, kind, num_devices, state0, batches):
    par = parallel.DataParallel(kind, num_devices)
    fn = par.compile(steps.make_train_step(config, num_classes=NUM_CLASSES, num_train_images=16))
    state = par.put_state(state0)
    losses = []
    for batch in batches:
        if kind == "pmap":
            n = len(par.devices)
            batch = {k: v.reshape((n, v.shape[0] // n) + v.shape[1:]) for k, v in batch.items()}
        state, m = fn(state, par.shard_batch(batch), None)
        losses.append(float(par.host(m)["loss"]))
    return jax.device_get(par.unreplicate(state).params), losses


def test_pmap_jit_and_single_device_agree(data_dir):
    # dropout_rate=0: the pmap path folds the device index into the dropout key (documented).
    c = tiny(data_dir, dropout_rate=0.0, learning_rate=0.05)
    source = input_pipeline.load_data_source(c.dataset, "train", data_dir=data_dir)
    it = input_pipeline.create_train_iterator(
        source,
        batch_size=c.batch_size,
        crop_size=c.crop_size,
        num_classes=NUM_CLASSES,
        seed=0,
        scale_range=c.scale_range,
    )
    batches = [next(it) for _ in range(2)]
    # Void pixels on the first device's half only: a per-device mean (instead of the global
    # valid-pixel mean) would give another gradient.
    batches[0]["label"][0, :20] = 255
    state0 = state_lib.create_train_state(c, jax.random.PRNGKey(0), num_classes=NUM_CLASSES)
    p0 = jax.device_get(state0.params)
    results = {
        name: _train_few_steps(c, kind, n, state0, batches)
        for name, kind, n in (("single", "jit", 1), ("jit", "jit", 2), ("pmap", "pmap", 2))
    }
    ref_params, ref_losses = results["single"]
    ref_delta = jax.tree.map(lambda a, b: a - b, ref_params, p0)
    assert max(float(np.abs(d).max()) for d in jax.tree.leaves(ref_delta)) > 0
    for name in ("jit", "pmap"):
        params, losses = results[name]
        np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, err_msg=name)
        delta = jax.tree.map(lambda a, b: a - b, params, p0)
        for d, r in zip(jax.tree.leaves(delta), jax.tree.leaves(ref_delta), strict=True):
            scale = float(np.abs(r).max()) + 1e-12
            np.testing.assert_allclose(d, r, rtol=0, atol=1e-3 * scale, err_msg=name)


def test_resume_gives_same_params(baseline_run, data_dir, tmp_path):
    expected = read_final(baseline_run)["params_fingerprint"]
    workdir = tmp_path / "resumed"
    out = train.train_and_evaluate(tiny(data_dir, stop_after_steps=3), workdir)
    assert out == {"stopped_at_step": 3, "steps": 3, "mode": "baseline"}
    assert not (workdir / "final_metrics.json").exists()
    # Simulate a crash after step 3 but before its checkpoint: resume from the periodic one (2).
    shutil.rmtree(workdir / "checkpoints" / "3")
    result = train.train_and_evaluate(tiny(data_dir), workdir)
    assert result["params_fingerprint"] == expected
    steps = [r["step"] for r in read_jsonl(workdir / "metrics.jsonl") if r["split"] == "train"]
    assert steps == [1, 2, 3, 4]  # no duplicated log lines after the resume

    # The same workdir with another config is refused, naming the workdir.
    with pytest.raises(ValueError, match="different config"):
        train.train_and_evaluate(tiny(data_dir, learning_rate=0.5), workdir)
    # Execution-only fields may change (they are not in the fingerprint): nothing left to train.
    again = train.train_and_evaluate(tiny(data_dir, parallel="pmap"), workdir)
    assert again["params_fingerprint"] == expected


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data_dir, tmp_path):
    c = tiny(data_dir, learning_rate=1e30, checkpoint_every_steps=1, num_train_steps=6)
    with pytest.raises(FloatingPointError, match=r"at step \d+") as info:
        train.train_and_evaluate(c, tmp_path)
    bad_step = int(re.search(r"at step (\d+)", str(info.value)).group(1))
    assert bad_step >= 1  # step 0 starts from finite params, its loss is finite
    body = json.loads((tmp_path / "config.json").read_text())
    ckpt = Checkpointer(tmp_path, config_fingerprint=body["config_fingerprint"])
    try:
        assert ckpt.latest_step() == bad_step  # saved after every good step, not after the bad one
        template = state_lib.create_train_state(c, jax.random.PRNGKey(0), num_classes=NUM_CLASSES)
        state, _ = ckpt.restore(target=template)
    finally:
        ckpt.close()
    assert int(state.step) == bad_step
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state.params)))
    assert not (tmp_path / "final_metrics.json").exists()


def test_metrics_reach_the_host_at_sync_steps_and_every_step_is_checked_before_a_later_save(
    data_dir, tmp_path, monkeypatch
):
    """The loop dispatches steps without waiting. Their metrics reach the host only at a sync step
    (logged: every 5; checkpointed: every 7); there every step since the previous sync is checked,
    in order, before anything after it is logged or saved. Step 8 is made non-finite: the loop
    learns of it at the sync after step 10, and nothing after step 7's checkpoint is kept."""
    transfers, checked, saved = [], [], []
    real_to_host, real_check, real_save = (
        loop.PendingMetrics.to_host,
        DivergenceMonitor.check,
        Checkpointer.save,
    )

    def to_host(self, par):
        fetched = real_to_host(self, par)
        transfers.append([step for step, _ in fetched])
        return fetched

    def check(self, ce_loss):  # every finite step's cross-entropy, in the order checked
        checked.append(ce_loss)
        return real_check(self, ce_loss)

    def save(self, step, state, **kw):
        saved.append(step)
        return real_save(self, step, state, **kw)

    def poisoned_train_step(*args, **kwargs):
        step_fn = steps.make_train_step(*args, **kwargs)

        def step(state, batch, *rest, **kw):
            new_state, metrics = step_fn(state, batch, *rest, **kw)
            finite = jnp.where(state.step == 8, False, metrics["finite"])
            return new_state, {**metrics, "finite": finite}

        return step

    monkeypatch.setattr(loop.PendingMetrics, "to_host", to_host)
    monkeypatch.setattr(DivergenceMonitor, "check", check)
    monkeypatch.setattr(Checkpointer, "save", save)
    monkeypatch.setattr(train, "make_train_step", poisoned_train_step)
    c = tiny(data_dir, num_train_steps=12, log_every_steps=5, checkpoint_every_steps=7)
    with pytest.raises(FloatingPointError, match="at step 8"):
        train.train_and_evaluate(c, tmp_path)
    assert transfers == [[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]]  # at steps 5, 7 and 10 only
    # Steps 0..7 checked, in order (their losses are those logged), then step 8 stops the run.
    assert len(checked) == 8
    assert saved == [7]  # nothing after the bad step is kept
    train_rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == [5]  # logged where due, up to the bad step
    assert train_rows[0]["scalars"]["ce_loss"] == checked[4]  # step 5's (index 4), checked first


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"mode": "distill"}, "mode"),
        ({"init": "random"}, "init"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"parallel": "pjit"}, "parallel"),
        ({"dataset": "no_such_dataset/x"}, "dataset"),
        ({"mode": "student", "vtce_weight": 1.0}, "teacher_workdir"),
        ({"mode": "student", "init": "teacher", "vtce_weight": 0.0}, "teacher_workdir"),
        ({"init": "teacher"}, "init"),
        ({"init": "imagenet"}, "pretrained_path"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 3}, "batch_size"),  # not divisible by the 2 devices
        ({"momentum": 1.0}, "momentum"),
        ({"dropout_rate": 1.0}, "dropout_rate"),
        ({"crop_size": (32,)}, "crop_size"),
        ({"eval_pad_to": (0, 32)}, "eval_pad_to"),
        ({"eval_pad_to": (-1, -1)}, "eval_pad_to"),
        ({"teacher_checkpoint": "first"}, "teacher_checkpoint"),
    ],
)
def test_config_errors_name_the_field(overrides, field, tmp_path):
    c = tiny(str(tmp_path))
    c.unlock()
    for k, v in overrides.items():
        c[k] = v
    with pytest.raises(ValueError, match=rf"config\.{field}\b"):
        train.train_and_evaluate(c, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before touching the workdir


def test_config_missing_field_and_tiny_variant():
    c = synthetic.get_config()
    del c["beta"]
    with pytest.raises(ValueError, match="beta"):
        config_lib.validate_config(c)
    with pytest.raises(ValueError, match="variant"):
        synthetic.get_config("huge")
    config_lib.validate_config(synthetic.get_config())
    config_lib.validate_config(synthetic.get_config("tiny"))


def test_student_refuses_a_non_teacher_workdir(baseline_run, data_dir):
    c = tiny(data_dir, mode="student", teacher_workdir=str(baseline_run))
    with pytest.raises(ValueError, match="config.teacher_workdir"):
        runs.load_teacher(c, NUM_CLASSES)


def test_imagenet_init_merges_the_trunk(data_dir):
    c = tiny(data_dir, mode="student", init="imagenet", pretrained_path="unused.npz")
    fresh = state_lib.create_train_state(
        tiny(data_dir), jax.random.PRNGKey(0), num_classes=NUM_CLASSES
    ).params
    pretrained = {
        name: {k: np.full(np.shape(v), 0.5, np.float32) for k, v in fresh[name].items()}
        for name in fresh
        if name.startswith("conv")
    }
    assert len(pretrained) == 13
    state = state_lib.create_train_state(
        c, jax.random.PRNGKey(0), num_classes=NUM_CLASSES, pretrained=pretrained
    )
    for name, layer in state.params.items():
        for k, v in layer.items():
            if name.startswith("conv"):
                np.testing.assert_array_equal(v, 0.5)
            else:  # fc6..fc8 keep their initialisation
                np.testing.assert_array_equal(v, fresh[name][k])


def test_learning_rate_schedule_and_optimizers(data_dir):
    c = tiny(data_dir, learning_rate=0.1, num_train_steps=10)
    lr = state_lib.make_learning_rate_fn(c)
    assert float(lr(0)) == pytest.approx(0.1)
    assert float(lr(5)) == pytest.approx(0.1 * 0.5**0.9, rel=1e-5)
    assert float(lr(10)) == 0.0
    params = {"w": np.ones(3, np.float32)}
    grads = {"w": np.full(3, 2.0, np.float32)}
    for name in ("sgd", "adam"):
        c = tiny(data_dir, optimizer=name, learning_rate=0.1, weight_decay=0.5)
        tx = state_lib.make_optimizer(c)
        updates, _ = tx.update(grads, tx.init(params), params)
        if name == "sgd":  # -lr * (g + wd * w): decay added to the gradient
            np.testing.assert_allclose(updates["w"], -0.1 * (2.0 + 0.5), rtol=1e-6)
        else:  # Adam's first step is -lr * sign(g + wd * w)
            np.testing.assert_allclose(updates["w"], -0.1, rtol=1e-4)


def copy_run(workdir, tmp_path) -> pathlib.Path:
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    return copy


def test_a_refused_start_leaves_the_workdir_to_the_corrected_config(data_dir, tmp_path):
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"config\.batch_size.*divisible"):
        train.train_and_evaluate(tiny(data_dir, batch_size=3), workdir)
    assert not workdir.exists()
    # What a refused start used to leave: the config.json of its config, and no checkpoint.
    refused = config_lib.fingerprint(tiny(data_dir, batch_size=3))
    Checkpointer(workdir, config_fingerprint=refused).close()
    corrected = tiny(data_dir, batch_size=2, num_train_steps=2)
    assert train.train_and_evaluate(corrected, workdir)["steps"] == 2
    body = json.loads((workdir / "config.json").read_text())
    assert body["config_fingerprint"] == config_lib.fingerprint(corrected)


def test_a_finished_run_is_read_without_writing(baseline_run, data_dir, tmp_path):
    """Readers never write (a finished run on a read-only file system): rerunning the training
    command, ``load_run``, ``read_jsonl`` and ``reproduce.eval_curves`` change nothing."""
    from experiments import reproduce

    workdir = copy_run(baseline_run, tmp_path)
    before = folder_stats(workdir)
    assert train.train_and_evaluate(tiny(data_dir), workdir) == read_final(workdir)
    assert runs.load_run(workdir).step == 4
    assert runs.load_run(workdir, checkpoint="latest").step == 4
    assert len(read_jsonl(workdir / "metrics.jsonl")) == 5
    assert reproduce.eval_curves({"bl": workdir})["bl"][0][0] == 4
    assert folder_stats(workdir) == before


def truncate_largest_file(step_dir: pathlib.Path) -> pathlib.Path:
    path = max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    os.truncate(path, path.stat().st_size // 2)
    return path


def test_a_damaged_checkpoint_is_named_and_resume_falls_back_past_it(
    baseline_run, data_dir, tmp_path, caplog
):
    expected = read_final(baseline_run)
    workdir = copy_run(baseline_run, tmp_path)
    damaged = workdir / "checkpoints" / "4"
    truncate_largest_file(damaged)
    # Readers: one line naming the damaged checkpoint and what to do.
    for which in ("best", "latest"):
        with pytest.raises(UnreadableCheckpointError) as info:
            runs.load_run(workdir, checkpoint=which)
        message = str(info.value)
        assert str(damaged) in message and "\n" not in message and "step 2" in message
    # The run had finished: its rerun refuses and writes nothing, results included.
    before = folder_stats(workdir)
    with pytest.raises(runs.FinishedRunError) as info:
        train.train_and_evaluate(tiny(data_dir), workdir)
    assert str(damaged) in str(info.value) and "final_metrics.json" in str(info.value)
    assert folder_stats(workdir) == before
    # Asked to retrain it (its results moved away), the training command falls back to step 2,
    # keeps the damaged step, and ends as before.
    (workdir / "final_metrics.json").rename(tmp_path / "kept.json")
    with caplog.at_level(logging.INFO):
        result = train.train_and_evaluate(tiny(data_dir), workdir)
    assert result == expected
    assert re.search(r"resumed .* at step 2\b", caplog.text)
    assert str(damaged) in caplog.text
    assert (workdir / "damaged_checkpoints" / "4").is_dir()
    records = read_jsonl(workdir / "metrics.jsonl")
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4]
    assert [r["step"] for r in records if r["split"] == "eval"] == [4]
    assert runs.load_run(workdir).step == 4


def test_a_corrupt_shard_is_refused_before_anything_is_written(data_dir, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy)
    (shard,) = copy.rglob("synthetic_rgbd-test.array_record-*")
    os.truncate(shard, shard.stat().st_size // 2)
    with pytest.raises(input_pipeline.CorruptDataError) as info:
        train.train_and_evaluate(tiny(str(copy)), tmp_path / "run")
    assert str(shard) in str(info.value) and "tfds_builders.build" in str(info.value)
    assert not (tmp_path / "run").exists()
