"""A run's files vouch for each other: checkpoints by their content, ``config.json`` by the
fingerprint recorded with them, and no command writes over a finished run or into a directory
it does not own (tiny synthetic config, XLA optimisations off as in ``test_train.py``)."""

import json
import pathlib
import shutil
import subprocess
import sys

import pytest
from helpers import folder_contents, run_command, tiny, train_command

from drd_jax import runs, serving, train
from drd_jax.checkpointing import UnreadableCheckpointError
from drd_jax.files import UnusableDirectoryError

pytestmark = pytest.mark.usefixtures("fast_compile")


@pytest.fixture(scope="module")
def finished(tiny_baseline_run) -> pathlib.Path:
    """The session's finished tiny baseline run (read it, never write to it: copy it first)."""
    return tiny_baseline_run.workdir


def copy_run(workdir: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    return copy


def flip_bytes(step_dir: pathlib.Path, count: int = 16) -> pathlib.Path:
    """Inverts ``count`` bytes in the middle of the largest data file of a checkpoint's state,
    as a silently failing disk or copy would: orbax reads them back without an error."""
    data = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    path = max(data, key=lambda p: p.stat().st_size)
    body = bytearray(path.read_bytes())
    middle = len(body) // 2
    for i in range(middle, middle + 4 * count, 4):
        body[i] ^= 0xFF
    path.write_bytes(bytes(body))
    return path


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The ``error: ...`` line of a refused command (exit status 2, no traceback)."""
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), proc.stderr[-2000:]
    return last


def test_damaged_bytes_are_refused_by_readers_and_never_retrained_over(
    finished, data_dir, tmp_path
):
    workdir = copy_run(finished, tmp_path)
    damaged = workdir / "checkpoints" / "4"
    flip_bytes(damaged)
    for which in ("best", "latest"):
        with pytest.raises(UnreadableCheckpointError, match="differs from the checksum") as info:
            runs.load_run(workdir, checkpoint=which)
        assert str(damaged) in str(info.value) and "\n" not in str(info.value)
    before = folder_contents(workdir)
    with pytest.raises(runs.FinishedRunError, match="final checkpoint .* is damaged"):
        train.train_and_evaluate(tiny(data_dir), workdir)
    # The command line says it in one line too, and nothing changed: results, checkpoints, logs.
    line = one_error_line(
        run_command(train_command(workdir, data_dir, "--config.num_train_steps=4"))
    )
    assert str(damaged) in line and "final_metrics.json" in line
    assert folder_contents(workdir) == before


def test_export_and_segment_refuse_a_damaged_checkpoint(finished, tmp_path):
    from experiments import export

    workdir = copy_run(finished, tmp_path)
    flip_bytes(workdir / "checkpoints" / "4")
    with pytest.raises(export.ExportError, match="differs from the checksum"):
        export.export(str(workdir), str(tmp_path / "out"), input_size=(32, 32), platforms=["cpu"])
    assert not (tmp_path / "out").exists()
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (32, 24)).save(image)
    proc = run_command(
        [
            sys.executable,
            "-m",
            "experiments.segment",
            f"--checkpoint={workdir}",
            f"--output_dir={tmp_path / 'seg'}",
            str(image),
        ]
    )
    assert proc.returncode != 0 and "differs from the checksum" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "seg").exists()


def test_an_edited_config_json_is_refused(finished, data_dir, tmp_path):
    """A run's config.json no longer matching the fingerprint recorded with its checkpoints: a
    teacher's params would be run as plain convolutions, and an export card would claim them."""
    from experiments import export

    workdir = copy_run(finished, tmp_path)
    path = workdir / "config.json"
    body = json.loads(path.read_text())
    body["config"]["mode"] = "student"
    path.write_text(json.dumps(body))
    with pytest.raises(ValueError, match="config.json was edited"):
        runs.load_run(workdir)
    with pytest.raises(export.ExportError, match="config.json was edited"):
        export.export(str(workdir), str(tmp_path / "out"), input_size=(32, 32), platforms=["cpu"])
    before = folder_contents(workdir)
    with pytest.raises(ValueError, match="config.json was edited"):
        train.train_and_evaluate(tiny(data_dir), workdir)
    assert folder_contents(workdir) == before


def test_a_directory_holding_an_export_is_not_a_workdir(data_dir, tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    card = {"format": serving.FORMAT, "format_version": serving.FORMAT_VERSION}
    (out / serving.CARD_NAME).write_text(json.dumps(card))
    before = folder_contents(out)
    with pytest.raises(ValueError, match="holds an export"):
        train.train_and_evaluate(tiny(data_dir), out)
    assert folder_contents(out) == before


@pytest.fixture
def read_only_dir(small_tmpfs) -> pathlib.Path:
    """A directory on a read-only file system (a tmpfs remounted read-only: root too is
    refused); skips where mounting is not allowed."""
    path = small_tmpfs("1m")
    (path / "inside").mkdir()
    done = subprocess.run(
        ["mount", "-o", "remount,ro", str(path)], capture_output=True, text=True, check=False
    )
    if done.returncode:
        pytest.skip(f"cannot remount a tmpfs read-only here: {done.stderr.strip()}")
    yield path
    subprocess.run(["mount", "-o", "remount,rw", str(path)], check=False)


def test_an_unusable_workdir_is_one_line_naming_it(data_dir, tmp_path, small_tmpfs):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    for workdir, expected in (
        (a_file, "is a file, not a directory"),
        (a_file / "run", f"{a_file} is a file"),
    ):
        with pytest.raises(UnusableDirectoryError, match=expected) as info:
            train.train_and_evaluate(tiny(data_dir), workdir)
        assert "\n" not in str(info.value)
    assert a_file.read_text() == "not a directory"


def test_a_read_only_workdir_is_one_line_naming_it(data_dir, read_only_dir):
    for workdir in (read_only_dir / "inside", read_only_dir / "new" / "run"):
        proc = run_command(train_command(workdir, data_dir))
        line = one_error_line(proc)
        assert str(workdir) in line and "read-only file system" in line


def test_eval_pad_to_smaller_than_the_images_is_refused_before_writing(data_dir, tmp_path):
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"config\.eval_pad_to: .*smaller than the largest"):
        train.train_and_evaluate(tiny(data_dir, eval_pad_to=(8, 8)), workdir)
    assert not workdir.exists()


def test_a_non_finite_first_interval_says_there_is_no_checkpoint(data_dir, tmp_path):
    c = tiny(data_dir, learning_rate=1e30, checkpoint_every_steps=100, num_train_steps=6)
    c.eval_every_steps = 0
    with pytest.raises(FloatingPointError) as info:
        train.train_and_evaluate(c, tmp_path / "run")
    assert "step None" not in str(info.value)
    assert "no checkpoint was written yet" in str(info.value)


def test_a_students_fingerprint_names_its_teacher_by_params_not_path(data_dir, tmp_path):
    from drd_jax import config as config_lib

    config = tiny(data_dir, mode="student", teacher_workdir="/old/place/tn")
    moved = tiny(data_dir, mode="student", teacher_workdir="/new/place/tn")
    assert config_lib.fingerprint(config) == config_lib.fingerprint(moved)
    assert runs.config_fingerprint_for(tmp_path / "new", config) == config_lib.fingerprint(config)
    # A student recorded by an earlier version (its teacher's path in its fingerprint) keeps it
    # in place: resumed and reused, its config.json accepted by readers.
    (legacy,) = config_lib.legacy_fingerprints(config)
    assert legacy != config_lib.fingerprint(config)
    old = tmp_path / "old"
    old.mkdir()
    body = {"config_fingerprint": legacy, "config": config.to_dict()}
    (old / "config.json").write_text(json.dumps(body))
    assert runs.config_fingerprint_for(old, config) == legacy
    assert runs.read_run_config(old)[1] == legacy
