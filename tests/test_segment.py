"""Tests of the ``experiments.segment`` command on the session's tiny synthetic_rgbd runs.

The command runs in a subprocess (absl parses flags once per process). Its predictions are checked
against the run's model applied here, in-process, to the image normalised by the evaluation
pipeline (``transforms.eval_transform``). XLA optimisations are disabled here and in the
subprocesses (``JAX_DISABLE_MOST_OPTIMIZATIONS=1``), as in ``test_train.py``, for fast compiles.
"""

import functools
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from drd_jax import runs, visualize
from drd_jax.data import transforms

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_CLASSES = 6
SIZES = {"first": (40, 56), "second": (33, 47)}  # (H, W): two distinct shapes, not /8


pytestmark = pytest.mark.usefixtures("fast_compile")


@pytest.fixture(scope="module")
def baseline_run(tiny_baseline_run):
    """The session's tiny baseline run (read it, never write to it)."""
    return tiny_baseline_run.workdir


@pytest.fixture(scope="module")
def teacher_run(tiny_teacher_run):
    """The session's tiny teacher run (read it, never write to it)."""
    return tiny_teacher_run.workdir


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two RGB images of different sizes (PNG and JPEG) with random blocks of colour."""
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for (stem, (h, w)), ext in zip(SIZES.items(), ("png", "jpg"), strict=True):
        blocks = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        pixels = np.repeat(np.repeat(blocks, 8, 0), 8, 1)[:h, :w]
        path = d / f"{stem}.{ext}"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def run_segment(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1", JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", "experiments.segment", *map(str, args)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


@functools.lru_cache
def _restored(workdir: pathlib.Path):
    """The run and its jitted model, restored once per workdir."""
    run = runs.load_run(workdir)
    model = run.make_model()

    @jax.jit
    def apply(params, image, depth):
        return model.apply({"params": params}, image, depth, train=False)

    return run, model, apply


def reference_logits(workdir, image_path, depth=None) -> np.ndarray:
    """The run's model in-process on the image normalised by the evaluation pipeline."""
    run, model, apply = _restored(workdir)
    rgb = np.asarray(Image.open(image_path).convert("RGB"))
    h, w = rgb.shape[:2]
    example = {
        "image": rgb,
        "depth": np.zeros((h, w), np.float32) if depth is None else depth,
        "label": np.zeros((h, w), np.uint8),
    }
    ex = transforms.eval_transform(example, num_classes=len(run.class_names))
    depth = jnp.asarray(ex["depth"])[None] if model.depth_aware else None
    return np.asarray(apply(run.params, jnp.asarray(ex["image"])[None], depth))[0]


def read_png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def assert_matches_reference(labels, logits):
    """``labels`` is the argmax of ``logits``, except where the two best are within float noise."""
    top2 = np.sort(logits, axis=-1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 1e-3 * np.abs(logits).max()
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(labels[clear], logits.argmax(-1)[clear])


def assert_failed_naming(proc, *names):
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for name in names:
        assert str(name) in proc.stderr, proc.stderr[-3000:]


def test_segments_images_at_full_resolution(baseline_run, images, tmp_path):
    out = tmp_path / "new" / "out"  # created, with its parent
    proc = run_segment(f"--checkpoint={baseline_run}", f"--output_dir={out}", *images)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected_files = {f"{s}_{kind}.png" for s in SIZES for kind in ("labels", "color")}
    assert set(os.listdir(out)) == expected_files | {"legend.json"}  # no temporary files left
    for name in expected_files | {"legend.json"}:
        assert str(out / name) in proc.stdout

    run = runs.load_run(baseline_run)
    palette = visualize.class_palette(NUM_CLASSES)
    legend = json.loads((out / "legend.json").read_text())
    assert legend["step"] == run.step and legend["mode"] == "baseline"
    assert [c["id"] for c in legend["classes"]] == list(range(NUM_CLASSES))
    assert [c["name"] for c in legend["classes"]] == run.class_names
    assert [c["color"] for c in legend["classes"]] == palette.tolist()

    for image in images:
        stem = image.stem
        labels = read_png(out / f"{stem}_labels.png")
        assert labels.dtype == np.uint8 and labels.shape == SIZES[stem]
        assert labels.max() < NUM_CLASSES
        color = read_png(out / f"{stem}_color.png")
        np.testing.assert_array_equal(color, visualize.colorize_labels(labels, palette))
        assert_matches_reference(labels, reference_logits(baseline_run, image))


def test_unreadable_image_fails_and_writes_nothing(baseline_run, images, tmp_path):
    bad = tmp_path / "x.png"
    bad.write_text("not an image")
    out = tmp_path / "out"
    out.mkdir()
    proc = run_segment(f"--checkpoint={baseline_run}", f"--output_dir={out}", images[0], bad)
    assert_failed_naming(proc, bad)
    assert "expected" in proc.stderr
    assert os.listdir(out) == []


def test_missing_image_fails_and_writes_nothing(baseline_run, images, tmp_path):
    missing = tmp_path / "missing.png"
    out = tmp_path / "out"
    proc = run_segment(f"--checkpoint={baseline_run}", f"--output_dir={out}", missing, images[1])
    assert_failed_naming(proc, missing, "no such file")
    assert not out.exists()


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["empty", "absent"])
def test_not_a_run_checkpoint_fails(kind, images, tmp_path):
    checkpoint = tmp_path / "not_a_run"
    if kind == "empty":
        checkpoint.mkdir()
    out = tmp_path / "out"
    proc = run_segment(f"--checkpoint={checkpoint}", f"--output_dir={out}", images[0])
    assert_failed_naming(proc, checkpoint, "not a training run")
    assert not out.exists()


def test_duplicate_stems_fail(baseline_run, images, tmp_path):
    other = tmp_path / "other" / f"{images[0].stem}.jpg"
    other.parent.mkdir()
    Image.open(images[0]).save(other)
    out = tmp_path / "out"
    proc = run_segment(f"--checkpoint={baseline_run}", f"--output_dir={out}", images[0], other)
    assert_failed_naming(proc, images[0], other, "same stem")
    assert not out.exists()


def test_depth_refused_for_rgb_run(baseline_run, images, tmp_path):
    depth = tmp_path / "d.npy"
    np.save(depth, np.ones(SIZES["first"], np.float32))
    out = tmp_path / "out"
    proc = run_segment(
        f"--checkpoint={baseline_run}", f"--output_dir={out}", f"--depth={depth}", images[0]
    )
    assert_failed_naming(proc, baseline_run, "--depth")
    assert not out.exists()


EXIF_ORIENTATION = 0x0112  # TIFF/EXIF tag; 6: stored turned, a viewer turns it 90 degrees cw


def test_turned_jpeg_and_16bit_png_segment_as_upright_8bit_pngs(baseline_run, tmp_path):
    """In-process (``segment.segment``): EXIF orientation applied, 16-bit grey scaled by 1/257."""
    from experiments import segment as segment_cmd

    rng = np.random.default_rng(3)
    h, w = 24, 40  # as stored; shown (40, 24)
    blocks = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    turned = tmp_path / "turned.jpg"
    Image.fromarray(np.repeat(np.repeat(blocks, 8, 0), 8, 1)).save(turned, exif=exif, quality=95)
    with Image.open(turned) as im:
        decoded = np.asarray(im.convert("RGB"))  # the stored pixels, as decoded
    upright = tmp_path / "upright.png"
    Image.fromarray(np.ascontiguousarray(np.rot90(decoded, k=-1))).save(upright)

    grey = np.repeat(np.repeat(rng.integers(64, 192, (4, 6), dtype=np.uint8), 8, 0), 8, 1)
    grey16, grey8, clipped = tmp_path / "grey16.png", tmp_path / "grey8.png", tmp_path / "c.png"
    Image.fromarray(grey.astype(np.uint16) * 257).save(grey16)  # PIL mode I;16
    Image.fromarray(grey).save(grey8)
    Image.fromarray(np.full_like(grey, 255)).save(clipped)  # as it was read: clipped to 255

    out = tmp_path / "out"
    paths = (turned, upright, grey16, grey8)
    segment_cmd.segment(str(baseline_run), str(out), [str(p) for p in paths])
    labels = {p.stem: read_png(out / f"{p.stem}_labels.png") for p in paths}
    assert labels["turned"].shape == (w, h)
    np.testing.assert_array_equal(labels["turned"], labels["upright"])
    assert labels["grey16"].shape == grey.shape
    np.testing.assert_array_equal(labels["grey16"], labels["grey8"])
    # The check can tell: the clipped (white) image gets other classes.
    assert (reference_logits(baseline_run, clipped).argmax(-1) != labels["grey8"]).mean() > 0.02


@pytest.fixture(scope="module")
def depth_files(images, tmp_path_factory):
    """Depth of the first image as a 16-bit PNG (mm), of the second as .npy (metres)."""
    d = tmp_path_factory.mktemp("depth")
    rng = np.random.default_rng(1)
    (h0, w0), (h1, w1) = SIZES.values()
    mm = rng.integers(500, 6000, (h0, w0), dtype=np.uint16)
    mm[:4, :4] = 0  # no reading
    png = d / "first_depth.png"
    Image.fromarray(mm).save(png)
    npy = d / "second_depth.npy"
    np.save(npy, rng.uniform(0.5, 6.0, (h1, w1)).astype(np.float32))
    return png, npy, mm.astype(np.float32) / 1000.0, np.load(npy)


def test_teacher_needs_depth(teacher_run, images, tmp_path):
    out = tmp_path / "out"
    proc = run_segment(f"--checkpoint={teacher_run}", f"--output_dir={out}", *images)
    assert_failed_naming(proc, teacher_run, "--depth")
    assert not out.exists()


def test_teacher_depth_size_mismatch_fails(teacher_run, images, depth_files, tmp_path):
    png, npy, *_ = depth_files
    out = tmp_path / "out"
    proc = run_segment(
        f"--checkpoint={teacher_run}", f"--output_dir={out}", f"--depth={npy},{png}", *images
    )
    assert_failed_naming(proc, npy, png, "differs from image")
    assert not out.exists()


def test_teacher_segments_with_depth(teacher_run, images, depth_files, tmp_path):
    png, npy, depth0, depth1 = depth_files
    out = tmp_path / "out"
    proc = run_segment(
        f"--checkpoint={teacher_run}", f"--output_dir={out}", f"--depth={png},{npy}", *images
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "legend.json").read_text())["mode"] == "teacher"
    for image, depth in zip(images, (depth0, depth1), strict=True):
        labels = read_png(out / f"{image.stem}_labels.png")
        assert labels.shape == SIZES[image.stem]
        logits = reference_logits(teacher_run, image, depth)
        assert_matches_reference(labels, logits)
        # The check can tell: with a constant depth map the teacher predicts other classes.
        flat = reference_logits(teacher_run, image, np.full_like(depth, 3.0))
        assert (flat.argmax(-1) != logits.argmax(-1)).mean() > 0.05


# ------------------------------------------------------------------------------------------------
# Depth units: a .npy in millimetres is refused, --depth_scale names the unit
# ------------------------------------------------------------------------------------------------


def _depth_file(path, values):
    """``values`` (H, W) written as .npy (floats) or 16-bit PNG (uint16), by suffix."""
    if path.suffix == ".npy":
        np.save(path, np.asarray(values, np.float32))
    else:
        Image.fromarray(np.asarray(values, np.uint16)).save(path)
    return path


@pytest.mark.parametrize(
    "name, values, unit",
    [
        ("mm.npy", np.full((6, 7), 2500.0), "millimetres"),  # a .npy in millimetres
        ("cm.npy", np.full((6, 7), 250.0), "centimetres"),
        ("tenth_mm.png", np.full((6, 7), 25000), "tenths of a millimetre"),  # a PNG in 0.1 mm
    ],
)
def test_read_depth_refuses_an_implausible_unit_naming_it(tmp_path, name, values, unit):
    from experiments.segment import SegmentError, read_depth

    path = _depth_file(tmp_path / name, values)
    with pytest.raises(SegmentError, match=rf"depth {path}: .*looks like {unit}.*--depth_scale"):
        read_depth(path)


def test_read_depth_scale_and_plausible_files(tmp_path):
    from experiments.segment import read_depth

    rng = np.random.default_rng(3)
    mm = rng.integers(500, 5000, (6, 7)).astype(np.float32)
    mm[0, 0] = 0.0  # no reading stays 0
    npy = _depth_file(tmp_path / "mm.npy", mm)
    np.testing.assert_allclose(read_depth(npy, scale=0.001), mm / 1000.0, rtol=1e-6)
    png = _depth_file(tmp_path / "mm.png", mm)
    np.testing.assert_allclose(read_depth(png), mm / 1000.0, rtol=1e-6)  # PNG: millimetres
    np.testing.assert_allclose(read_depth(png, scale=0.0001), mm / 10000.0, rtol=1e-6)
    metres = _depth_file(tmp_path / "m.npy", mm / 1000.0)
    np.testing.assert_allclose(read_depth(metres), mm / 1000.0, rtol=1e-6)
    far = _depth_file(tmp_path / "far.npy", np.full((6, 7), 19.0))  # under 20 m: accepted
    assert read_depth(far).max() == np.float32(19.0)
    empty = _depth_file(tmp_path / "empty.npy", np.zeros((6, 7)))  # no reading at all
    assert not read_depth(empty).any()


def test_teacher_refuses_millimetre_npy_and_takes_depth_scale(
    teacher_run, images, depth_files, tmp_path
):
    png, npy, depth0, depth1 = depth_files
    mm = tmp_path / "second_depth_mm.npy"
    np.save(mm, depth1 * 1000.0)  # the same depth in millimetres
    out = tmp_path / "out"
    args = [f"--checkpoint={teacher_run}", f"--output_dir={out}"]
    proc = run_segment(*args, f"--depth={png},{mm}", *images)
    assert proc.returncode == 1
    assert_failed_naming(proc, mm, "millimetres", "--depth_scale=0.001")
    assert not out.exists()
    proc = run_segment(*args, f"--depth={npy},{npy}", "--depth_scale=-1", images[1], images[1])
    assert proc.returncode == 2 and proc.stderr.startswith("error: flag --depth_scale=-1")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    proc = run_segment(*args, f"--depth={mm}", "--depth_scale=0.001", images[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    labels = read_png(out / f"{images[1].stem}_labels.png")
    assert_matches_reference(labels, reference_logits(teacher_run, images[1], depth1))
