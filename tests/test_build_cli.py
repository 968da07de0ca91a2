"""``python -m tfds_builders.build``: name/config resolution, errors, a real (tiny) build."""

import errno
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tfds_builders import build
from tfds_builders.nyuv2 import testing as nyu_testing

REPO_ROOT = build.pathlib.Path(__file__).resolve().parents[1]


def _tiny_nyu_manual(root):
    """Three 8x12 frames, a 1/2 split and synthetic class maps: no real data needed."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    frames = {
        k: {
            "image": rng.integers(0, 256, (8, 12, 3), dtype=np.uint8),
            "depth": rng.uniform(1, 5, (8, 12)).astype(np.float32),
            "raw_depth": rng.uniform(0, 5, (8, 12)).astype(np.float32),
            "label": rng.integers(0, 895, (8, 12)),
        }
        for k in (1, 2, 3)
    }
    nyu_testing.write_labeled_mat(root / "nyu_depth_v2_labeled.mat", 3, frames, height=8, width=12)
    nyu_testing.write_splits_mat(root / "splits.mat", [2], [1, 3])
    map40 = np.concatenate([[0], np.arange(894) % 40 + 1])
    map13 = np.concatenate([[0], np.arange(40) % 13 + 1])
    nyu_testing.write_class_maps(root, map40, map13)
    return frames, map40


def test_available_datasets():
    names = build.available_datasets()
    assert {"nyuv2", "sunrgbd"} <= set(names)
    assert not any(n.startswith("_") for n in names)


def test_unknown_dataset(tmp_path, capsys):
    assert build.main(["nyu", "--data_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'nyu'" in err and "nyuv2" in err and "sunrgbd" in err


def test_unknown_config(tmp_path, capsys):
    assert build.main(["nyuv2", "--config", "41", "--data_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no config '41'" in err and "40, 13, 894" in err


def test_missing_manual_files(tmp_path, capsys):
    (tmp_path / "manual").mkdir()
    (tmp_path / "manual" / "README").write_text("not the data")
    code = build.main(
        ["sunrgbd", "--data_dir", str(tmp_path / "d"), "--manual_dir", str(tmp_path / "manual")]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "SUNRGBD.zip" in err and "allsplit.mat" in err and "rgbd.cs.princeton.edu" in err


def test_build_nyuv2_13_and_reuse(tmp_path, capsys):
    frames, map40 = _tiny_nyu_manual(tmp_path / "manual")
    argv = ["nyuv2", "--config", "13", "--data_dir", str(tmp_path / "data")]
    argv += ["--manual_dir", str(tmp_path / "manual")]
    assert build.main(argv) == 0
    captured = capsys.readouterr()
    assert "nyuv2/13/1.0.0: test 2, train 1 examples" in captured.out
    # Not a terminal (captured): one plain line, no tqdm frames.
    assert captured.err == f"nyuv2/13/1.0.0: building in {tmp_path / 'data'} ...\n"
    source = tfds.data_source("nyuv2/13", data_dir=str(tmp_path / "data"))
    example = source["train"][0]
    map13 = np.concatenate([[0], np.arange(40) % 13 + 1])
    np.testing.assert_array_equal(example["label"], map13[map40[frames[2]["label"]]])
    assert build.main(argv) == 0  # already prepared: reused, not rebuilt
    assert build.main([*argv, "--overwrite"]) == 0


def test_module_entry_point(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tfds_builders.build", "nope", "--data_dir", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "unknown dataset 'nope'" in result.stderr


@pytest.mark.skipif(
    importlib.util.find_spec("tfds_builders.synthetic_rgbd") is None,
    reason="tfds_builders.synthetic_rgbd not present",
)
def test_synthetic_rgbd_needs_no_manual_dir(tmp_path, capsys):
    argv = ["synthetic_rgbd", "--data_dir", str(tmp_path), "--max_examples_per_split", "2"]
    assert build.main(argv) == 0
    assert "synthetic_rgbd/" in capsys.readouterr().out


def test_a_builder_leaves_nothing_in_the_temporary_folder(tmp_path, monkeypatch):
    """Every builder on a data dir not yet prepared (where TFDS looks up published metadata, in
    its constructor, and left an empty folder per builder): nothing is left in the temporary
    folder."""
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    for name in build.available_datasets():
        builder = tfds.builder(name, data_dir=str(tmp_path / "data"))
        assert builder.info.name == name
    assert list(temp.iterdir()) == []


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("under", [False, True], ids=["a_file", "under_a_file"])
def test_data_dir_that_is_a_file(tmp_path, capsys, under):
    (tmp_path / "f").write_text("not a folder")
    data_dir = tmp_path / "f" / "d" if under else tmp_path / "f"
    assert build.main(["synthetic_rgbd", "--data_dir", str(data_dir)]) == 2
    err = _one_error_line(capsys)
    assert f"--data_dir {data_dir}: " in err and "expected a folder" in err


@pytest.mark.parametrize("under", [False, True], ids=["a_file", "under_a_file"])
def test_manual_dir_that_is_a_file(tmp_path, capsys, under):
    (tmp_path / "f").write_text("not a folder")
    manual = tmp_path / "f" / "m" if under else tmp_path / "f"
    argv = ["nyuv2", "--data_dir", str(tmp_path / "d"), "--manual_dir", str(manual)]
    assert build.main(argv) == 2
    err = _one_error_line(capsys)
    assert f"--manual_dir {manual}: " in err and "expected the folder holding the manual" in err
    assert not (tmp_path / "d" / "nyuv2").exists()


def test_data_dir_where_nothing_can_be_written(tmp_path, capsys, monkeypatch):
    """Root writes through permission bits: the refusal of a read-only file system, simulated."""

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), kwargs.get("dir"))

    monkeypatch.setattr(build.tempfile, "TemporaryFile", read_only)
    assert build.main(["synthetic_rgbd", "--data_dir", str(tmp_path / "d")]) == 2
    err = _one_error_line(capsys)
    assert f"--data_dir {tmp_path / 'd'}: cannot write there (read-only file system)" in err


def _mount_read_only(source, target):
    """Bind-mounts ``source`` read-only at ``target``; skips where that is not allowed."""
    target.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting needs root")
    done = subprocess.run(
        ["mount", "--bind", "-o", "ro", str(source), str(target)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        pytest.skip(f"cannot bind-mount read-only here: {done.stderr.strip()}")


def _unmount(*targets):
    for target in targets:
        subprocess.run(["umount", "-l", str(target)], check=False)


def test_data_dir_on_a_read_only_mount(tmp_path, capsys):
    """A real read-only mount: refused for a build, fine for a dataset already prepared there."""
    argv = ["synthetic_rgbd", "--max_examples_per_split", "2", "--data_dir"]
    assert build.main([*argv, str(tmp_path / "data")]) == 0
    (tmp_path / "empty").mkdir()
    try:
        _mount_read_only(tmp_path / "empty", tmp_path / "ro_empty")
        _mount_read_only(tmp_path / "data", tmp_path / "ro_data")
        capsys.readouterr()
        assert build.main([*argv, str(tmp_path / "ro_empty")]) == 2
        err = _one_error_line(capsys)
        assert f"--data_dir {tmp_path / 'ro_empty'}: cannot write there (read-only file" in err
        assert build.main([*argv, str(tmp_path / "ro_data")]) == 0  # already there: reused
    finally:
        _unmount(tmp_path / "ro_empty", tmp_path / "ro_data")


def test_a_read_only_manual_dir_is_fine(tmp_path, capsys):
    """The builders only read the manual downloads."""
    _tiny_nyu_manual(tmp_path / "manual")
    try:
        _mount_read_only(tmp_path / "manual", tmp_path / "ro")
        argv = ["nyuv2", "--config", "13", "--data_dir", str(tmp_path / "data")]
        assert build.main([*argv, "--manual_dir", str(tmp_path / "ro")]) == 0
        assert "nyuv2/13/1.0.0: test 2, train 1 examples" in capsys.readouterr().out
    finally:
        _unmount(tmp_path / "ro")


def _status(argv) -> int:
    """``build.main(argv)``'s exit status, also when argparse exits."""
    try:
        return build.main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("value", ["-3", "0", "abc"])
def test_bad_max_examples_per_split(tmp_path, capsys, value):
    argv = ["synthetic_rgbd", "--data_dir", str(tmp_path / "d"), "--max_examples_per_split", value]
    assert _status(argv) == 2
    err = _one_error_line(capsys)
    assert "--max_examples_per_split" in err
    assert ("positive number" in err) if value != "abc" else ("invalid int value" in err)
    assert not (tmp_path / "d" / "synthetic_rgbd").exists()


def test_progress_bars_on_a_terminal_only(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    argv = ["synthetic_rgbd", "--data_dir", str(tmp_path), "--max_examples_per_split", "2"]
    assert build.main(argv) == 0
    assert "Generating" in capsys.readouterr().err  # TFDS's tqdm progress bars


def test_quiet_off_a_terminal(tmp_path):
    """A log gets one plain line and the summary: no tqdm frames, no OpenCV warning (TFDS logs
    it the first time it decodes an image, e.g. in a script that builds then reads)."""
    script = (
        "import sys; from absl import logging; from tfds_builders import build; "
        "code = build.main(sys.argv[1:]); "
        "logging.warning('OpenCV is not installed. We recommend using OpenCV because it is "
        "faster'); logging.warning('a warning that stays'); sys.exit(code)"
    )
    argv = ["synthetic_rgbd", "--data_dir", str(tmp_path), "--max_examples_per_split", "2"]
    result = subprocess.run(
        [sys.executable, "-c", script, *argv],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert "\r" not in result.stderr and "OpenCV" not in result.stderr
    assert lines[0] == f"synthetic_rgbd/default/2.0.0: building in {tmp_path} ..."
    assert len(lines) == 2 and "a warning that stays" in lines[1], result.stderr
    assert result.stdout.startswith("synthetic_rgbd/default/2.0.0: ")
