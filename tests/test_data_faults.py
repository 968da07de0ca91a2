"""Damaged built datasets: found before step 0 (every record verified) or at the read, always as
one line naming the file and the builder's command that rebuilds the dataset."""

import pathlib
import shutil
import sys

import helpers
import pytest
from helpers import run_command, train_command

from drd_jax import input_pipeline as ip
from drd_jax.errors import UserError
from tfds_builders import build

DATASET = "synthetic_rgbd/tiny"


def _copy(data_dir, tmp_path) -> pathlib.Path:
    """A writable copy of the session's tiny dataset (the fixture's own is read only)."""
    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy)
    return copy


def _flip_middle(copy: pathlib.Path, split: str = "train") -> pathlib.Path:
    """Inverts 16 bytes in the middle of ``split``'s shard: a record far from its first and last
    records, whose size and footer are intact."""
    (shard,) = copy.rglob(f"synthetic_rgbd-{split}.array_record-*")
    data = bytearray(shard.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    shard.write_bytes(bytes(data))
    return shard


def _damage_dataset_info(copy: pathlib.Path) -> pathlib.Path:
    """Overwrites the dataset's ``dataset_info.json`` with text that is not JSON."""
    (info_file,) = copy.rglob("dataset_info.json")
    info_file.write_text("{ this is not JSON")
    return info_file


def _rebuild(copy) -> str:
    return (
        f"python -m tfds_builders.build synthetic_rgbd --config tiny --data_dir {copy} --overwrite"
    )


def _bad_record(source) -> int:
    """The record that the damage hit (reads every record, decoded)."""
    bad = []
    for index in range(len(source)):
        try:
            source[index]
        except Exception:  # noqa: BLE001 - any reader error
            bad.append(index)
    assert len(bad) == 1, bad
    return bad[0]


def test_damage_in_the_middle_of_a_shard_is_found_before_step_0(data_dir, tmp_path):
    copy = _copy(data_dir, tmp_path)
    shard = _flip_middle(copy)
    source = ip.load_data_source(DATASET, "train", data_dir=str(copy))
    bad = _bad_record(source)
    assert 0 < bad < len(source) - 1  # not a first or last record: those were always read
    with pytest.raises(ip.CorruptDataError) as info:
        ip.check_readable(source, dataset=DATASET, data_dir=str(copy))
    message = str(info.value)
    assert "\n" not in message
    assert f"shard {shard} (record {bad}:" in message and "hash mismatch" in message
    assert _rebuild(copy) in message
    # The first and last records alone do not see it (what check_readable read before).
    ip.check_readable(source, dataset=DATASET, data_dir=str(copy), verify_all=False)


def test_verify_records_reads_every_byte_of_an_intact_split(data_dir):
    for split in ("train", "test"):
        source = ip.load_data_source(DATASET, split, data_dir=data_dir)
        (shard,) = pathlib.Path(data_dir).rglob(f"synthetic_rgbd-{split}.array_record-*")
        nbytes = ip.verify_records(source, num_threads=3)
        assert 0 < nbytes < shard.stat().st_size  # the records' stored bytes, not the index
        check = ip.check_readable(source, dataset=DATASET, data_dir=data_dir)
        assert check.records == len(source) and check.bytes == nbytes and check.seconds > 0


def test_the_training_stream_raises_one_line_at_the_damaged_record(data_dir, tmp_path):
    copy = _copy(data_dir, tmp_path)
    shard = _flip_middle(copy)
    source = ip.load_data_source(DATASET, "train", data_dir=str(copy))
    it = ip.create_train_iterator(source, batch_size=2, crop_size=(16, 16), num_classes=6, seed=0)
    with pytest.raises(ip.CorruptDataError) as info:
        for _ in range(len(source)):  # one epoch reads every record
            next(it)
    message = str(info.value)
    assert "\n" not in message and str(shard) in message and _rebuild(copy) in message
    assert isinstance(info.value, UserError)  # experiments.cli: one line from grain's threads too


def test_dataset_info_that_is_not_json_is_one_line_and_the_rebuild_command_works(
    data_dir, tmp_path, capsys
):
    copy = _copy(data_dir, tmp_path)
    info_file = _damage_dataset_info(copy)
    with pytest.raises(ip.CorruptDataError) as info:
        ip.load_data_source(DATASET, "train", data_dir=str(copy))
    message = str(info.value)
    assert "\n" not in message
    assert f"cannot read {info_file} (" in message and _rebuild(copy) in message
    # The builder refuses it too, naming the file, and rebuilds it with --overwrite.
    argv = ["synthetic_rgbd", "--config", "tiny", "--data_dir", str(copy)]
    assert build.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and str(info_file) in err
    assert "--overwrite" in err
    assert build.main([*argv, "--overwrite"]) == 0
    source = ip.load_data_source(DATASET, "train", data_dir=str(copy))
    ip.check_readable(source, dataset=DATASET, data_dir=str(copy))


@pytest.mark.parametrize("damage", [_flip_middle, _damage_dataset_info], ids=["shard", "info"])
def test_train_refuses_damaged_data_in_one_line_before_step_0(data_dir, tmp_path, damage):
    copy = _copy(data_dir, tmp_path)
    damaged = damage(copy)
    workdir = tmp_path / "run"
    result = run_command(train_command(workdir, copy))
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert str(damaged) in errors[0] and _rebuild(copy) in errors[0]
    assert not (workdir / "checkpoints").exists() and not (workdir / "metrics.jsonl").exists()


def test_the_rebuild_hint_of_a_manual_dataset_is_the_builders_command():
    command = ip.rebuild_command("nyuv2/40", "/d")
    assert command.startswith("python -m tfds_builders.build nyuv2 --config 40 --data_dir /d ")
    assert "--manual_dir" in command and "--overwrite" in command


@pytest.mark.integration
def test_train_without_nyuv2_suggests_the_builders_manual_dir(tmp_path):
    """``experiments.train`` has no ``--manual_dir``: the hint is the builder's whole command."""
    config = f"--config={helpers.REPO_ROOT / 'experiments' / 'configs' / 'nyuv2.py'}"
    result = run_command(
        [
            sys.executable,
            "-m",
            "experiments.train",
            config,
            f"--workdir={tmp_path / 'run'}",
            f"--config.data_dir={tmp_path / 'data'}",
            "--config.batch_size=2",  # the tests' two CPU devices
        ]
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    hint = result.stderr.strip().splitlines()[-1]
    assert hint.startswith("Then build the dataset with the builder's command: ")
    assert (
        f"python -m tfds_builders.build nyuv2 --config 40 --data_dir {tmp_path / 'data'} "
        "--manual_dir <folder holding them>" in hint
    )
    assert "Pass the folder holding them with --manual_dir" not in result.stderr
