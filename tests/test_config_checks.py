"""Config values refused by ``validate_config`` before anything is written: fields that used to be
checked only later (the input pipeline, the model, the pretrained weights), and values that used to
be silently ignored. Each message names the field (``config.<field>: ...``)."""

import math
import sys

import h5py
import ml_collections
import numpy as np
import pytest
from helpers import REPO_ROOT, TINY_CONFIG, run_command

from drd_jax import config as config_lib
from drd_jax import pretrained
from drd_jax.models import scaled_width
from drd_jax.models.deeplab_vgg16 import VGG16_BLOCKS
from experiments import protocols, reproduce
from experiments.configs import nyuv2, sunrgbd, synthetic

TINY_WIDTH = synthetic.get_config("tiny").width


def _config(**fields):
    c = ml_collections.ConfigDict(synthetic.get_config("tiny").to_dict())
    for k, v in fields.items():
        c[k] = v
    return c


def _error(**fields) -> str:
    with pytest.raises(ValueError) as info:
        config_lib.validate_config(_config(**fields))
    return str(info.value)


# -- scale_range and the other pairs -------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [(0.0, 1.0), (-0.5, 1.0), (1.5, 1.0), (math.nan, 1.0), (0.5, math.inf), ("a", 1.0)]
)
def test_scale_range_is_checked_with_the_config(value):
    message = _error(scale_range=value)
    assert message.startswith("config.scale_range: must be (min, max) with 0 < min <= max"), message
    assert repr(tuple(value))[:-1] in message or repr(list(value))[:-1] in message


def test_good_scale_ranges_pass():
    for value in [(0.5, 2.0), (1.0, 1.0), [0.75, 1.75], (1, 2)]:
        config_lib.validate_config(_config(scale_range=value))


@pytest.mark.parametrize("field", ["crop_size", "eval_pad_to"])
def test_pairs_of_ints_refuse_bools(field):
    assert _error(**{field: (True, True)}).startswith(f"config.{field}: ")


def test_knowledge_adaptation_leaves_room_for_its_second_seed():
    ka = dict(mode="student", adaptation_weight=50.0, teacher_workdir="/runs/tn")
    message = _error(seed=2**32 - 1, **ka)
    assert message.startswith("config.seed: must be below 4294967295 with knowledge adaptation")
    config_lib.validate_config(_config(seed=2**32 - 2, **ka))
    config_lib.validate_config(_config(seed=2**32 - 1))  # no second data order without KA


# -- values that were silently ignored -----------------------------------------------------------


@pytest.mark.parametrize("mode", ["baseline", "teacher"])
def test_a_teacher_workdir_outside_student_mode_is_refused(mode):
    message = _error(mode=mode, teacher_workdir="/runs/tn")
    assert message.startswith("config.teacher_workdir: "), message
    assert f"mode={mode!r}" in message and "'/runs/tn'" in message


def test_every_shipped_config_and_every_reproduce_run_passes():
    configs = [synthetic.get_config(v) for v in ("", "tiny", "demo")]
    configs += [nyuv2.get_config(), sunrgbd.get_config()]
    for base in configs:
        base.data_dir = "/nonexistent"  # never read by validate_config
        config_lib.validate_config(base)
        rows = [r for t in protocols.TABLES for r in protocols.table_rows(t, alpha=8.3, beta=0.9)]
        for run in protocols.runs_in_order(rows):
            config_lib.validate_config(reproduce.run_config(base, run, REPO_ROOT / "runs"))


# -- init='imagenet': the pretrained weights file ------------------------------------------------


def _trunk(width, *, skip=(), bad=None):
    """``{'conv1_1/kernel': HWIO, 'conv1_1/bias': ..., ...}`` zeros at ``width``."""
    flat, cin = {}, 3
    for _, layers in VGG16_BLOCKS:
        for name, channels in layers:
            cout = scaled_width(channels, width)
            if name not in skip:
                kernel = (3, 3, cin, cout) if name != bad else (3, 3, cin + 1, cout)
                flat[f"{name}/kernel"] = np.zeros(kernel, np.float32)
                flat[f"{name}/bias"] = np.zeros(cout, np.float32)
            cin = cout
    return flat


def _npz(path, flat):
    np.savez(path, **flat)
    return str(path)


def _keras_h5(path, width):
    with h5py.File(path, "w") as f:
        for key, array in _trunk(width).items():
            name, leaf = key.split("/")
            keras = pretrained.KERAS_LAYER_NAMES[name]
            f[f"{keras}/{keras}/{'kernel' if leaf == 'kernel' else 'bias'}:0"] = array
    return str(path)


def _imagenet_error(path) -> str:
    message = _error(mode="teacher", init="imagenet", pretrained_path=str(path))
    assert message.startswith("config.pretrained_path: "), message
    assert str(path) in message and "\n" not in message, message
    return message


def test_a_pretrained_file_that_is_not_weights_is_refused_with_the_config(tmp_path):
    assert "not found" in _imagenet_error(tmp_path / "missing.npz")
    (tmp_path / "text.npz").write_text("not weights\n")
    assert "not a readable .npz file" in _imagenet_error(tmp_path / "text.npz")
    (tmp_path / "text.h5").write_text("not weights\n")
    assert "not a readable HDF5 file" in _imagenet_error(tmp_path / "text.h5")
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    assert "cannot infer the weights format" in _imagenet_error(tmp_path / "weights.bin")
    (tmp_path / "dir.npz").mkdir()
    assert "not a file" in _imagenet_error(tmp_path / "dir.npz")
    other = _npz(tmp_path / "other.npz", {"w": np.zeros(3), "b": np.zeros(3)})
    assert "'w' is not '<layer>/kernel'" in _imagenet_error(other)
    partial = _npz(tmp_path / "partial.npz", _trunk(TINY_WIDTH, skip=("conv5_3",)))
    assert "missing VGG16 layers: conv5_3" in _imagenet_error(partial)


def test_a_pretrained_file_of_other_shapes_is_refused_naming_the_width(tmp_path):
    full = _npz(tmp_path / "full.npz", _trunk(1.0))  # full-width weights, a 1/16-width model
    message = _imagenet_error(full)
    assert "conv1_1/kernel" in message and "config.width" in message, message
    bad = _npz(tmp_path / "bad.npz", _trunk(TINY_WIDTH, bad="conv3_2"))
    assert "conv3_2/kernel" in _imagenet_error(bad)
    config_lib.validate_config(
        _config(mode="teacher", init="imagenet", pretrained_path=full, width=1.0)
    )


def test_good_pretrained_files_pass_and_match_what_loads(tmp_path):
    for path in (
        _npz(tmp_path / "tiny.npz", _trunk(TINY_WIDTH)),
        _keras_h5(tmp_path / "tiny.h5", TINY_WIDTH),
    ):
        config_lib.validate_config(_config(mode="teacher", init="imagenet", pretrained_path=path))
        pretrained.check_vgg16_file(path, width=TINY_WIDTH)
        loaded = pretrained.load_vgg16_params(path)
        assert set(pretrained.VGG16_CONV_NAMES) <= set(loaded)
    with pytest.raises(ValueError, match=r"conv1_1/kernel.*\(3, 3, 3, 4\).*\(3, 3, 3, 64\)"):
        pretrained.check_vgg16_file(tmp_path / "tiny.h5")  # width 1 by default


def test_torchvision_weights_without_torch_are_refused_before_the_run(tmp_path):
    pytest.importorskip("h5py")
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("torch is installed")
    path = tmp_path / "vgg16.pth"
    path.write_bytes(b"PK\x03\x04")
    assert "needs torch" in _imagenet_error(path)


@pytest.mark.integration
def test_train_refuses_a_bad_pretrained_file_in_one_line_before_writing(tmp_path):
    (tmp_path / "vgg16.npz").write_text("not weights\n")
    workdir = tmp_path / "run"
    proc = run_command(
        [
            sys.executable,
            "-m",
            "experiments.train",
            TINY_CONFIG,
            f"--workdir={workdir}",
            "--config.mode=teacher",
            "--config.init=imagenet",
            f"--config.pretrained_path={tmp_path / 'vgg16.npz'}",
        ]
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert lines[-1].startswith(f"error: config.pretrained_path: npz file {tmp_path}/vgg16.npz")
    assert not workdir.exists()
