"""Tests of ``drd_jax.serving`` and ``experiments.export`` on a tiny synthetic_rgbd baseline run.

The export is written in-process (``experiments.export.export``) and once through the command in
a subprocess (the bfloat16 one). Its StableHLO and its params are checked against the run's own
model, and ``segment`` against both. XLA optimisations are off here and in the subprocesses
(``fast_compile``, ``JAX_DISABLE_MOST_OPTIMIZATIONS=1``), as in ``test_segment.py``.
"""

import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import serialization
from flax.traverse_util import flatten_dict
from helpers import run_command
from PIL import Image

import drd_jax
from drd_jax import runs, serving
from drd_jax.data import transforms
from drd_jax.files import DiskFullError
from experiments import export
from experiments import segment as segment_cmd

pytestmark = pytest.mark.usefixtures("fast_compile")

EXPORT_SIZE = (48, 64)  # (H, W) of every synthetic_rgbd/tiny test image: the default input size
OTHER_SIZE = (33, 47)  # an image of another size: segment runs an export at any size


@pytest.fixture(scope="module")
def baseline_run(tiny_baseline_run):
    """The session's tiny baseline run (read it, never write to it: copy it first)."""
    return tiny_baseline_run.workdir


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


def test_teacher_and_non_runs_are_refused(tiny_teacher_run, tmp_path):
    teacher = tiny_teacher_run.workdir
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
    newer_version = f"export format version {serving.FORMAT_VERSION + 1}"
    with pytest.raises(ValueError, match=f"{newer / serving.CARD_NAME}: {newer_version}"):
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


def tree(root) -> dict:
    """Every entry under ``root``: relative path -> file bytes, ``'dir'`` or ``'-> target'``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                out[rel] = f"-> {os.readlink(path)}"
            elif os.path.isdir(path):
                out[rel] = "dir"
            else:
                with open(path, "rb") as f:
                    out[rel] = f.read()
    return out


def export_copy(export_dir, tmp_path, name="copy"):
    copy = tmp_path / name
    shutil.copytree(export_dir, copy)
    return copy


def test_overwrite_refuses_an_export_with_other_files_beside_it(baseline_run, export_dir, tmp_path):
    out = export_copy(export_dir, tmp_path, "out")
    (out / "notes.txt").write_text("mine")
    (out / "sub").mkdir()
    (out / "sub" / "data.bin").write_bytes(b"\0\1")
    before = tree(out)
    with pytest.raises(export.ExportError) as e:
        export.export(str(baseline_run), str(out), platforms=("cpu",), overwrite=True)
    message = str(e.value)
    assert message.startswith(f"output {out} holds an export and files that are not part of it: ")
    assert "notes.txt, sub/;" in message and "never others" in message and "\n" not in message
    assert tree(out) == before  # everything survives, the export included
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary directory left


def test_overwrite_through_the_command_never_deletes_a_run_holding_an_export(
    baseline_run, export_dir, tmp_path
):
    work = tmp_path / "work"  # a run's workdir, an export written into it by mistake
    shutil.copytree(baseline_run, work)
    for name in (serving.CARD_NAME, serving.PARAMS_NAME, serving.MODEL_NAME):
        shutil.copy(export_dir / name, work / name)
    assert serving.is_export_dir(work)
    before = tree(work)
    command = [sys.executable, "-m", "experiments.export", f"--checkpoint={baseline_run}"]
    proc = run_command([*command, f"--output={work}", "--overwrite", "--platforms=cpu"])
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: output {work} holds an export and files that are not part")
    assert "checkpoints/, config.json, " in line
    assert tree(work) == before


@pytest.mark.parametrize("kind", ["folder", "symlink"])
def test_an_export_file_name_as_a_folder_or_symlink_is_refused(export_dir, tmp_path, kind):
    out = export_copy(export_dir, tmp_path, "out")
    model = out / serving.MODEL_NAME
    elsewhere = tmp_path / "elsewhere.stablehlo"
    model.rename(elsewhere)
    if kind == "folder":
        model.mkdir()
        (model / "inside").write_text("mine")
        shown = f"{serving.MODEL_NAME}/"
    else:
        model.symlink_to(elsewhere)
        shown = f"{serving.MODEL_NAME} (symlink)"
    before = tree(tmp_path)
    pattern = rf"output {out} holds an export and files .*: {re.escape(shown)};"
    with pytest.raises(ValueError, match=pattern):
        serving.check_output_dir(out, overwrite=True)
    assert tree(tmp_path) == before


def write_export(run, out, **kwargs):
    return serving.export_network(
        out,
        model=run.make_model(),
        params=run.params,
        class_names=run.class_names,
        input_size=EXPORT_SIZE,
        platforms=("cpu",),
        **kwargs,
    )


def test_a_file_written_after_the_first_check_is_never_deleted(
    run, export_dir, tmp_path, monkeypatch
):
    out = export_copy(export_dir, tmp_path, "out")
    before = tree(out)
    rename = os.rename

    def write_then_rename(src, dst):  # another process writes just before out is moved aside
        if os.fspath(src) == os.fspath(out):
            (out / "late.txt").write_text("mine")
        rename(src, dst)

    monkeypatch.setattr(os, "rename", write_then_rename)
    with pytest.raises(ValueError, match=f"output {out} holds an export and files .*: late.txt;"):
        write_export(run, out, overwrite=True)
    monkeypatch.undo()
    assert tree(out) == {**before, "late.txt": b"mine"}  # back in place, the export untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_file_written_after_the_last_check_is_never_deleted(
    run, export_dir, tmp_path, monkeypatch
):
    out = export_copy(export_dir, tmp_path, "out")
    rename = os.rename

    def write_then_rename(src, dst):  # written into the old export once it was checked aside
        if os.fspath(dst) == os.fspath(out):
            (old,) = tmp_path.glob(".out.old-*")
            (old / "late.txt").write_text("mine")
        rename(src, dst)

    monkeypatch.setattr(os, "rename", write_then_rename)
    with pytest.warns(UserWarning, match=f"previous export of {out} was moved to .*left there"):
        write_export(run, out, overwrite=True)
    monkeypatch.undo()
    assert serving.load_export(out).card["platforms"] == ["cpu"]  # the new export is in place
    (old,) = tmp_path.glob(".out.old-*")
    assert tree(old) == {"late.txt": b"mine"}  # the old export's own files deleted, not late.txt
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", old.name])


def test_an_output_under_a_file_is_refused_naming_it(baseline_run, tmp_path):
    file = tmp_path / "file.txt"
    file.write_text("mine")
    out = file / "out"
    with pytest.raises(export.ExportError) as e:
        export.export(str(baseline_run), str(out), platforms=("cpu",))
    assert str(e.value) == (
        f"output {out} cannot be created: {file} is a file, not a directory (--output)"
    )
    with pytest.raises(NotADirectoryError):
        serving.check_output_dir(out)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nothing")
    with pytest.raises(NotADirectoryError, match=f"output {link} is a symlink"):
        serving.check_output_dir(link)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "link"]


def test_a_read_only_output_is_refused_naming_it(run, baseline_run, small_tmpfs, monkeypatch):
    fs = small_tmpfs("1m")
    subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True, capture_output=True)
    out = fs / "out"
    with pytest.raises(export.ExportError) as e:  # before anything is loaded or written
        export.export(str(baseline_run), str(out), platforms=("cpu",))
    message = str(e.value)
    assert message.startswith(f"output {out} is not writable") and "read-only" in message
    # A write fault (the checks passed: e.g. the disk was remounted read-only since).
    monkeypatch.setattr(serving, "check_output_dir", lambda path, **_: pathlib.Path(path))
    with pytest.raises(export.ExportError) as e:
        export.export(str(baseline_run), str(out), platforms=("cpu",), input_size=(32, 32))
    assert str(e.value) == f"output {out}: cannot write the export there (Read-only file system)"
    assert isinstance(e.value.__context__, OSError) and e.value.__context__.errno == 30  # EROFS
    assert os.listdir(fs) == []


def test_a_full_disk_is_one_line_naming_the_output_and_leaves_nothing(
    run, baseline_run, small_tmpfs
):
    fs = small_tmpfs("64k")
    out = fs / "out"
    with pytest.raises(DiskFullError) as e:  # passed through by the command: exit status 1
        export.export(str(baseline_run), str(out), platforms=("cpu",))
    message = str(e.value)
    assert re.fullmatch(
        rf"no space left on device writing the export to {re.escape(str(out))} "
        r"\([\d.]+ KB free there\); it needs about [\d.]+ KB\. Free some space, then export "
        "again",
        message,
    ), message
    needed = float(re.search(r"needs about ([\d.]+) KB", message)[1])
    assert needed > 64  # more than the whole disk
    assert e.value.filename == str(out) and type(e.value).exit_status == 1
    assert os.listdir(fs) == []  # nothing left behind


def test_the_card_records_its_own_checksum(export_dir):
    card = json.loads((export_dir / serving.CARD_NAME).read_text())
    body = {k: v for k, v in card.items() if k != serving.CARD_SHA256_KEY}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")
    assert card[serving.CARD_SHA256_KEY] == hashlib.sha256(canonical).hexdigest()
    assert serving.card_sha256(card) == card["card_sha256"]
    assert serving.FORMAT_VERSION == 2 and card["format_version"] == 2


def edit_card(export_dir, tmp_path, edit, *, recompute: bool = False):
    """A copy of the export whose card ``edit(card)`` changed (its checksum then recomputed)."""
    copy = export_copy(export_dir, tmp_path, "edited")
    card = json.loads((copy / serving.CARD_NAME).read_text())
    edit(card)
    if recompute:
        card[serving.CARD_SHA256_KEY] = serving.card_sha256(card)
    (copy / serving.CARD_NAME).write_text(json.dumps(card, indent=2))
    return copy


EDITS = {
    "class name": lambda card: card["classes"][0].update(name="edited"),
    "width": lambda card: card["model"].update(width=2 * card["model"]["width"]),
    "input size": lambda card: card["input"].update(size=[EXPORT_SIZE[0] + 8, EXPORT_SIZE[1]]),
}


@pytest.mark.parametrize("edit", EDITS)
def test_an_edited_card_is_refused(export_dir, tmp_path, edit):
    edited = edit_card(export_dir, tmp_path, EDITS[edit])
    card = edited / serving.CARD_NAME
    with pytest.raises(ValueError, match=f"^{card}: edited or damaged: its sha256") as e:
        serving.load_export(edited)
    assert "\n" not in str(e.value)
    with pytest.raises(segment_cmd.SegmentError, match=f"^--checkpoint: {card}: edited"):
        segment_cmd.load_network(str(edited), which="best", depths=None)


RECOMPUTED = {
    "wider model": (EDITS["width"], serving.PARAMS_NAME, "params do not fit DeepLabVGG16"),
    "input size": (
        EDITS["input size"],
        serving.MODEL_NAME,
        r"takes \(b, 48, 64, 3\) float32, but card.json says \(b, 56, 64, 3\) float32",
    ),
    "platforms": (
        lambda card: card.update(platforms=["cpu", "cuda"]),
        serving.MODEL_NAME,
        r"lowered for platforms \['cpu', 'cuda', 'tpu'\], but card.json says \['cpu', 'cuda'\]",
    ),
    "num_classes": (
        lambda card: card.update(num_classes=5),
        serving.CARD_NAME,
        "6 classes listed, but num_classes 5",
    ),
}


@pytest.mark.parametrize("edit", RECOMPUTED)
def test_a_card_edited_with_its_checksum_recomputed_is_still_refused(export_dir, tmp_path, edit):
    change, name, reason = RECOMPUTED[edit]
    edited = edit_card(export_dir, tmp_path, change, recompute=True)
    with pytest.raises(ValueError, match=f"^{edited / name}: {reason}") as e:
        serving.load_export(edited)
    assert "\n" not in str(e.value)


def test_a_format_1_export_is_refused_with_a_clear_message(export_dir, tmp_path):
    def version_1(card):
        card["format_version"] = 1
        card.pop("card_sha256", None)  # format 1 had none

    old = edit_card(export_dir, tmp_path, version_1)
    with pytest.raises(ValueError) as e:
        serving.load_export(old)
    assert str(e.value) == (
        f"{old / serving.CARD_NAME}: export format version 1; drd_jax {drd_jax.__version__} "
        "reads version 2: export the run again with this version"
    )


def test_the_segment_command_prints_one_line_for_an_edited_export(export_dir, tmp_path):
    edited = edit_card(export_dir, tmp_path, EDITS["class name"])
    image = tmp_path / "image.png"
    Image.fromarray(random_images(1, EXPORT_SIZE)[0]).save(image)
    out = tmp_path / "seg"
    command = [sys.executable, "-m", "experiments.segment", f"--checkpoint={edited}"]
    proc = run_command([*command, f"--output_dir={out}", image])
    assert proc.returncode == 1, proc.stderr[-3000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"segment: error: --checkpoint: {edited / serving.CARD_NAME}: edited")
    assert not out.exists()
