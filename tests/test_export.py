"""Tests of ``drd_jax.serving`` and ``experiments.export`` on a tiny synthetic_rgbd baseline run.

The export is written in-process (``experiments.export.export``) and once through the command in
a subprocess (the bfloat16 one). Its StableHLO and its params are checked against the run's own
model, and ``segment`` against both. XLA optimisations are off here and in the subprocesses
(``fast_compile``, ``JAX_DISABLE_MOST_OPTIMIZATIONS=1``), as in ``test_segment.py``.
"""

import hashlib
import json
import shutil
import sys

import jax
import numpy as np
import pytest
from flax import serialization
from flax.traverse_util import flatten_dict
from helpers import run_command, tiny
from PIL import Image

from drd_jax import runs, serving, train
from drd_jax.data import transforms
from experiments import export
from experiments import segment as segment_cmd

pytestmark = pytest.mark.usefixtures("fast_compile")

EXPORT_SIZE = (48, 64)  # (H, W) of every synthetic_rgbd/tiny test image: the default input size
OTHER_SIZE = (33, 47)  # an image of another size: segment runs an export at any size


@pytest.fixture(scope="module")
def baseline_run(data_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("baseline")
    train.train_and_evaluate(tiny(data_dir), workdir)
    return workdir


@pytest.fixture(scope="module")
def run(baseline_run):
    return runs.load_run(baseline_run)


@pytest.fixture(scope="module")
def export_dir(baseline_run, tmp_path_factory):
    """float32, default input size and platforms."""
    out = tmp_path_factory.mktemp("exports") / "float32"
    written = export.export(str(baseline_run), str(out))
    assert written == [out / serving.CARD_NAME, out / serving.PARAMS_NAME, out / serving.MODEL_NAME]
    return out


@pytest.fixture(scope="module")
def exported(export_dir):
    return serving.load_export(export_dir)


@pytest.fixture(scope="module")
def reference(run):
    """``images -> logits`` of the run's own model (``run.make_model().apply``)."""
    model = run.make_model()
    apply = jax.jit(lambda params, x: model.apply({"params": params}, x, train=False))
    return lambda images: np.asarray(apply(run.params, images))


def random_images(n: int, size, seed: int = 0) -> np.ndarray:
    """``n`` uint8 RGB images (n, H, W, 3) of random 8x8 blocks of colour."""
    h, w = size
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (n, h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return np.repeat(np.repeat(blocks, 8, 1), 8, 2)[:, :h, :w]


def assert_argmax(labels, logits):
    """``labels`` is the argmax of ``logits``, except where the two best are within float noise."""
    top2 = np.sort(logits, axis=-1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 1e-4 * np.abs(logits).max()
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(labels[clear], logits.argmax(-1)[clear])


def test_stablehlo_logits_equal_the_runs_model_at_any_batch_size(exported, reference):
    assert exported.stablehlo.platforms == serving.PLATFORMS == ("cpu", "cuda", "tpu")
    assert exported.input_size == EXPORT_SIZE
    (aval,) = exported.stablehlo.in_avals
    assert str(aval.shape[0]) == "b" and aval.shape[1:] == (*EXPORT_SIZE, 3)
    images = transforms.normalize_image(random_images(3, EXPORT_SIZE))
    expected = reference(images)
    for batch in (1, 3):  # one artifact, compiled for each batch size
        logits = np.asarray(exported.call(images[:batch]))
        assert logits.shape == (batch, *EXPORT_SIZE, 6) and logits.dtype == np.float32
        np.testing.assert_allclose(logits, expected[:batch], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="normalised float32"):
        exported.call(random_images(1, EXPORT_SIZE))  # uint8: not normalised
    with pytest.raises(ValueError, match=r"\(b, 48, 64, 3\).*predictor"):
        exported.call(images[:, :40])


def test_params_file_holds_the_params_alone(export_dir, run):
    params = serialization.msgpack_restore((export_dir / serving.PARAMS_NAME).read_bytes())
    flat, expected = flatten_dict(params), flatten_dict(run.params)
    assert flat.keys() == expected.keys()  # no optimiser state, no step: the params alone
    for key, value in expected.items():
        assert flat[key].dtype == np.float32
        np.testing.assert_array_equal(flat[key], value)


def test_card_describes_the_network_and_its_source(export_dir, exported, run, baseline_run):
    card = json.loads((export_dir / serving.CARD_NAME).read_text())
    assert card == exported.card
    assert card["format"] == serving.FORMAT and card["format_version"] == serving.FORMAT_VERSION
    assert [c["name"] for c in card["classes"]] == run.class_names == exported.class_names
    assert [c["id"] for c in card["classes"]] == list(range(6)) and card["num_classes"] == 6
    assert card["input"]["size"] == list(EXPORT_SIZE) and card["input"]["layout"] == "NHWC"
    norm = card["input"]["normalisation"]
    assert norm["scale"] == 255.0
    np.testing.assert_array_equal(np.float32(norm["mean"]), transforms.IMAGENET_MEAN)
    np.testing.assert_array_equal(np.float32(norm["std"]), transforms.IMAGENET_STD)
    assert card["output"]["shape"] == ["b", *EXPORT_SIZE, 6]
    model = card["model"]
    assert model["name"] == "DeepLabVGG16" and model["depth_aware"] is False
    assert (model["num_classes"], model["width"]) == (6, run.config.width)
    assert exported.model == run.make_model().clone(dtype=np.dtype("float32"))
    assert card["params"]["dtype"] == "float32" and card["platforms"] == ["cpu", "cuda", "tpu"]
    for name in (serving.PARAMS_NAME, serving.MODEL_NAME):
        data = (export_dir / name).read_bytes()
        assert card["files"][name] == {
            **card["files"][name],
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
        }
    source = card["source"]
    config_json = json.loads((baseline_run / "config.json").read_text())
    assert source["config_fingerprint"] == config_json["config_fingerprint"]
    assert (source["workdir"], source["step"]) == (str(baseline_run), run.step)
    assert (source["checkpoint"], source["mode"]) == ("best", "baseline")
    final = json.loads((baseline_run / runs.FINAL_METRICS_NAME).read_text())
    assert card["metrics"]["mean_iou"] == final["mean_iou"]
    assert card["metrics"]["mean_pixel_accuracy"] == final["mean_pixel_accuracy"]
    assert runs.FINAL_METRICS_NAME in card["metrics"]["source"]
    assert serving.is_export_dir(export_dir) and not serving.is_export_dir(baseline_run)


def test_segment_from_the_run_and_from_the_export_agree_with_the_stablehlo(
    baseline_run, export_dir, exported, reference, tmp_path
):
    paths = []
    for stem, size in (("first", EXPORT_SIZE), ("second", OTHER_SIZE)):
        paths.append(tmp_path / f"{stem}.png")
        Image.fromarray(random_images(1, size, seed=len(paths))[0]).save(paths[-1])
    labels = {}
    for name, checkpoint in (("run", baseline_run), ("export", export_dir)):
        out = tmp_path / name
        segment_cmd.segment(str(checkpoint), str(out), [str(p) for p in paths])
        labels[name] = [np.asarray(Image.open(out / f"{p.stem}_labels.png")) for p in paths]
        legend = json.loads((out / segment_cmd.LEGEND_NAME).read_text())
        assert (legend["checkpoint"], legend["step"], legend["mode"]) == (
            str(checkpoint),
            exported.card["source"]["step"],
            "baseline",
        )
    image = transforms.normalize_image(np.asarray(Image.open(paths[0])))[None]
    stablehlo_logits = np.asarray(exported.call(image))[0]
    assert_argmax(labels["run"][0], stablehlo_logits)
    assert_argmax(labels["export"][0], stablehlo_logits)
    other = reference(transforms.normalize_image(np.asarray(Image.open(paths[1])))[None])[0]
    assert labels["export"][1].shape == OTHER_SIZE
    assert_argmax(labels["export"][1], other)  # any size, through the rebuilt model
    depth = tmp_path / "depth.npy"
    np.save(depth, np.ones(EXPORT_SIZE, np.float32))
    with pytest.raises(segment_cmd.SegmentError, match="exported network.*drop --depth"):
        segment_cmd.segment(str(export_dir), str(tmp_path / "d"), [paths[0]], depths=[depth])
    assert not (tmp_path / "d").exists()


def test_bfloat16_export_through_the_command(baseline_run, export_dir, exported, tmp_path):
    out = tmp_path / "bf16"
    args = ["--dtype=bfloat16", "--which=latest", "--platforms=cpu", "--input_size=48,64"]
    command = [sys.executable, "-m", "experiments.export", f"--checkpoint={baseline_run}"]
    proc = run_command([*command, f"--output={out}", *args])
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = (serving.CARD_NAME, serving.PARAMS_NAME, serving.MODEL_NAME)
    assert proc.stdout.split() == [str(out / n) for n in names]
    bf16 = serving.load_export(out)
    assert bf16.card["params"]["dtype"] == "bfloat16" and bf16.card["platforms"] == ["cpu"]
    assert bf16.card["source"]["checkpoint"] == "latest"
    assert {str(x.dtype) for x in jax.tree.leaves(bf16.params)} == {"bfloat16"}
    size, size32 = ((d / serving.PARAMS_NAME).stat().st_size for d in (out, export_dir))
    assert size < 0.55 * size32
    images = transforms.normalize_image(random_images(3, EXPORT_SIZE, seed=5))
    logits, logits32 = np.asarray(bf16.call(images)), np.asarray(exported.call(images))
    assert logits.dtype == np.float32
    scale = np.abs(logits32).max()
    assert np.abs(logits - logits32).max() < 0.05 * scale  # bf16 rounding, not another network
    assert np.abs(logits - logits32).max() > 0  # it did compute in bfloat16
    assert (logits.argmax(-1) == logits32.argmax(-1)).mean() > 0.95


def test_teacher_and_non_runs_are_refused(data_dir, tmp_path):
    teacher = tmp_path / "teacher"  # one step, no evaluation: a teacher run directory, cheaply
    train.train_and_evaluate(tiny(data_dir, mode="teacher", stop_after_steps=1), teacher)
    out = tmp_path / "out"
    with pytest.raises(export.ExportError) as e:
        export.export(str(teacher), str(out))
    assert str(e.value) == export.teacher_refusal(teacher)
    assert "teacher run (RGB-D)" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(export.ExportError, match="not a training run"):
        export.export(str(tmp_path / "nothing"), str(out))
    assert not out.exists()


def test_non_empty_output_is_refused_and_left_untouched(baseline_run, export_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(export.ExportError, match=f"{out} already exists and is not empty"):
        export.export(str(baseline_run), str(out))
    with pytest.raises(export.ExportError, match="holds no drd-jax export"):
        export.export(str(baseline_run), str(out), overwrite=True)  # never someone else's files
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"
    # An export is replaced with overwrite, atomically: no temporary directory is left.
    previous = tmp_path / "previous"
    shutil.copytree(export_dir, previous)
    with pytest.raises(export.ExportError, match="already exists"):
        export.export(str(baseline_run), str(previous), platforms=("cpu",))
    export.export(str(baseline_run), str(previous), platforms=("cpu",), overwrite=True)
    assert serving.load_export(previous).card["platforms"] == ["cpu"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "previous"]


def test_damaged_or_foreign_files_are_refused_on_load(export_dir, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(export_dir, damaged)
    params = bytearray((damaged / serving.PARAMS_NAME).read_bytes())
    params[len(params) // 2] ^= 0xFF
    (damaged / serving.PARAMS_NAME).write_bytes(bytes(params))
    with pytest.raises(ValueError, match=rf"{damaged / serving.PARAMS_NAME}: damaged.*sha256"):
        serving.load_export(damaged)
    with pytest.raises(segment_cmd.SegmentError, match=f"{damaged / serving.PARAMS_NAME}"):
        segment_cmd.load_network(str(damaged), which="best", depths=None)

    missing = tmp_path / "missing"
    shutil.copytree(export_dir, missing)
    (missing / serving.MODEL_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=f"{missing / serving.MODEL_NAME}: no such file"):
        serving.load_export(missing)

    newer = tmp_path / "newer"
    shutil.copytree(export_dir, newer)
    card = json.loads((newer / serving.CARD_NAME).read_text())
    card["format_version"] = serving.FORMAT_VERSION + 1
    (newer / serving.CARD_NAME).write_text(json.dumps(card))
    assert serving.is_export_dir(newer)
    with pytest.raises(ValueError, match=f"{newer / serving.CARD_NAME}: export format version 2"):
        serving.load_export(newer)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / serving.CARD_NAME}: no such file"):
        serving.load_export(tmp_path)


def test_measured_metrics_come_from_what_evaluated_these_params(run, baseline_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(baseline_run, copy)
    final = json.loads((copy / runs.FINAL_METRICS_NAME).read_text())
    (copy / runs.FINAL_METRICS_NAME).unlink()
    recorded = export.measured_metrics(run._replace(workdir=copy))
    assert recorded["mean_iou"] == final["mean_iou"]  # recorded with the final checkpoint
    assert f"checkpoint step {run.step}" in recorded["source"]
    # Other params than the final evaluation's, at a step saved without an evaluation.
    other = jax.tree.map(lambda x: x + 1.0, run.params)
    unknown = export.measured_metrics(run._replace(params=other, step=2))
    assert unknown["mean_iou"] is None and unknown["source"] is None
    assert "evaluated other params" in unknown["reason"] and "step 2" in unknown["reason"]


# Modules of the training and data extras; loading an export must not need any of them.
BLOCKED = ("ml_collections", "grain", "tensorflow_datasets", "array_record", "orbax", "PIL")
LOAD_WITHOUT_EXTRAS = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import numpy as np
from drd_jax import serving
e = serving.load_export({path!r})
images = np.zeros((2, *e.input_size, 3), np.float32)
print(e.call(images).shape, e.predictor()(images[:, :31, :45]).shape)
"""


def test_an_export_loads_without_the_training_extras(export_dir):
    script = LOAD_WITHOUT_EXTRAS.format(blocked=BLOCKED, path=str(export_dir))
    proc = run_command([sys.executable, "-c", script])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("\n")[0] == "(2, 48, 64, 6) (2, 31, 45)"
