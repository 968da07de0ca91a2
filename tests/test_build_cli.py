"""``python -m tfds_builders.build``: name/config resolution, errors, a real (tiny) build."""

import importlib.util
import subprocess
import sys

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
    assert "Generating" in captured.err  # TFDS's tqdm progress bar
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
