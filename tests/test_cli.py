"""The entry points' command line (experiments/cli.py): a user error is one line on
stderr with exit status 2, a bug keeps its traceback, and the default log is quiet.

The commands run in subprocesses (absl parses flags once per process); the errors come before
any training, so each takes only the start-up time.
"""

import ast
import json
import pathlib
import subprocess
import sys

import pytest
from absl import app
from helpers import run_command

from drd_jax.errors import ConfigError, DataError, UserError
from drd_jax.files import DiskFullError
from drd_jax.workdir_lock import WorkdirLockedError
from experiments import cli

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = "--config=experiments/configs/synthetic.py:tiny"


def run(module: str, *args, timeout: int = 600) -> subprocess.CompletedProcess:
    return run_command([sys.executable, "-m", f"experiments.{module}", *args], timeout=timeout)


def assert_one_line_error(proc, *fragments):
    """Exit status 2 and exactly one stderr line, ``error: ...`` holding every fragment."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--config.learning_rate=inf"], ["config.learning_rate: must be a finite number"]),
        (["--config.mode=distill"], ["config.mode: must be one of"]),
        (
            ["--config.learnin_rate=0.1"],
            ["--config.learnin_rate", "no config field 'learnin_rate'", "--config.learning_rate"],
        ),
        (["--config.learning_rate.x=1"], ["--config.learning_rate is a float"]),
        (["--config.learning_rate=abc"], ["--config.learning_rate=abc"]),
        (
            ["--config.dataset=synthetic_rgbd/huge"],
            ["config.dataset: synthetic_rgbd/huge", "default, uncalibrated, tiny"],
        ),
        (["--bogus=1"], ["bogus"]),
        (["unexpected"], ["unexpected arguments"]),
    ],
)
def test_train_user_errors_are_one_line(tmp_path, args, fragments):
    workdir = tmp_path / "run"
    assert_one_line_error(run("train", TINY, f"--workdir={workdir}", *args), *fragments)
    assert not workdir.exists()  # refused before anything was written


def test_train_config_file_and_required_flags(tmp_path):
    missing = tmp_path / "nope.py"
    proc = run("train", f"--config={missing}", f"--workdir={tmp_path / 'run'}")
    assert_one_line_error(proc, f"--config={missing}", "did not load", "No such file")
    proc = run("train", "--config=experiments/configs/synthetic.py:huge", "--workdir=x")
    assert_one_line_error(proc, "unknown config variant 'huge'")
    assert_one_line_error(run("train", TINY), "--workdir")


def test_train_missing_teacher_workdir_is_one_error_line(tmp_path):
    proc = run(
        "train",
        TINY,
        f"--workdir={tmp_path / 'run'}",
        "--config.mode=student",
        "--config.init=teacher",
        f"--config.teacher_workdir={tmp_path / 'no_teacher'}",
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "Traceback" in line or "rror" in line]
    assert errors == [errors[-1]] and errors[-1].startswith("error: config.teacher_workdir: ")


def test_reproduce_and_segment_user_errors_are_one_line(tmp_path):
    workdir = tmp_path / "repro"
    assert_one_line_error(run("reproduce", TINY, f"--workdir={workdir}", "--table=9"), "--table")
    proc = run("reproduce", TINY, f"--workdir={workdir}", "--config.beta=0")
    assert_one_line_error(proc, "config.beta: must be a finite number in (0, inf)")
    assert not (workdir / "runs").exists()  # checked before the data and the runs
    proc = run("reproduce", TINY, f"--workdir={workdir}", "--config.bta=0.5")
    assert_one_line_error(proc, "--config.beta")
    out = tmp_path / "seg"
    proc = run("segment", f"--checkpoint={tmp_path}", f"--output_dir={out}", "--which=first", "a")
    assert_one_line_error(proc, "--which")


def test_help_with_a_config_lists_its_fields_and_exits_0(tmp_path):
    """``--help`` with ``--config`` (and an override) prints absl's help, then every field with
    its value in that config, meaning and allowed values; nothing runs, nothing is written."""
    from drd_jax.config import FIELDS

    workdir = tmp_path / "run"
    proc = run("train", TINY, f"--workdir={workdir}", "--config.seed=7", "--help", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not workdir.exists() and proc.stderr == ""
    out = proc.stdout
    assert "Train and evaluate one drd-jax run" in out and "--workdir:" in out  # absl's help
    lines = out.splitlines()
    assert "  --config.beta=0.9" in lines and "  --config.seed=7" in lines  # the override
    words = " ".join(out.split())
    assert " ".join(FIELDS["beta"].help.split()) in words
    assert "(allowed: a finite number in (0, inf))" in words
    assert all(f"  --config.{name}=" in out for name in FIELDS)
    # Without --config it says how to list them.
    proc = run("train", "-h", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "add --config=<file>[:<variant>] to --help" in proc.stdout


def test_default_log_is_quiet_and_verbosity_shows_the_libraries(tmp_path):
    """A tiny run on a fresh data dir: our INFO lines only (no orbax/TFDS/JAX INFO, no OpenCV
    warning, no "Downloading and preparing", no progress bar frames); stdout is the summary."""
    args = [TINY, "--config.num_train_steps=2", f"--config.data_dir={tmp_path / 'data'}"]
    proc = run("train", *args, f"--workdir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["steps"] == 2  # stdout: the summary line alone
    for noise in ("OpenCV", "Downloading and preparing", "orbax", "xla_bridge", "\r", "Traceback"):
        assert noise not in proc.stderr, (noise, proc.stderr[-3000:])
    log_lines = [line for line in proc.stderr.splitlines() if line[:1] in "IWEF" and "]" in line]
    sources = {line.split("]")[0].split()[-1].split(":")[0] for line in log_lines}
    assert sources <= {"train.py", "runs.py", "_common.py", "checkpointing.py", "loop.py"}, sources
    assert "synthetic_rgbd/tiny 2.0.0: preparing the dataset" in proc.stderr
    assert "final metrics" in proc.stderr
    verbose = run("train", *args, f"--workdir={tmp_path / 'run2'}", "--verbosity=1")
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert "dataset_info.py" in verbose.stderr  # TFDS's INFO, shown on request


# ------------------------------------------------------------------------------------------------
# In-process: what is a user error, and the close names
# ------------------------------------------------------------------------------------------------


def _raised(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        return e
    raise AssertionError("did not raise")


def test_a_user_error_is_one_line_wherever_it_is_raised_and_a_bug_keeps_its_traceback():
    import jax.numpy as jnp
    from ml_collections import ConfigDict

    from drd_jax import config as config_lib
    from drd_jax import ops

    config_error = _raised(lambda: config_lib.validate_config(ConfigDict({"mode": "x"})))
    assert isinstance(config_error, ConfigError) and isinstance(config_error, ValueError)
    assert cli.is_user_error(config_error)
    shape_bug = _raised(lambda: jnp.zeros((2, 3)).reshape(4))  # raised inside JAX
    assert isinstance(shape_bug, (ValueError, TypeError)) and not cli.is_user_error(shape_bug)
    op_bug = _raised(  # a check of the ops, hit by a caller's bug: keeps its traceback
        lambda: ops.depth_aware_conv(jnp.zeros((1, 4, 4, 2)), jnp.ones((1, 4, 4)), jnp.zeros(3))
    )
    assert isinstance(op_bug, ValueError) and not cli.is_user_error(op_bug)
    assert not cli.is_user_error(_raised(lambda: {}["key"]))
    # The class decides, not the module that raises it (here: this test module).
    assert cli.is_user_error(_raised(_raise(DataError("a damaged record"))))
    held = _raised(_raise(WorkdirLockedError("held by another run")))
    assert isinstance(held, RuntimeError) and cli.is_user_error(held)
    assert not cli.is_user_error(_raised(_raise(ValueError("a bug"))))
    assert not cli.is_user_error(_raised(_raise(RuntimeError("a bug"))))
    assert cli.is_user_error(_raised(_raise(app.UsageError("a bad flag"))))


def _raise(error):
    def fn():
        raise error

    return fn


def test_a_user_error_exits_with_its_status(capsys, monkeypatch):
    monkeypatch.setattr(cli, "quiet_logs", lambda: None)  # no filter in the test process

    def main(argv):
        raise DiskFullError("no space left on /x: 3 MiB needed", "/x")

    with pytest.raises(SystemExit) as info:
        cli._guarded(main)(["prog"])
    assert info.value.code == 1 == DiskFullError.exit_status
    assert capsys.readouterr().err == "error: no space left on /x: 3 MiB needed\n"

    class Refused(ConfigError):
        """Raised in a test module, outside the library: still one line, status 2."""

    def refuse(argv):
        raise Refused("--flag: refused")

    with pytest.raises(SystemExit) as info:
        cli._guarded(refuse)(["prog"])
    assert info.value.code == 2 == UserError.exit_status
    assert capsys.readouterr().err == "error: --flag: refused\n"


def test_a_plain_value_error_raised_in_the_trainer_keeps_its_traceback(capsys, monkeypatch):
    """A ValueError that is not a UserError is a bug, even when the trainer's own code raises
    it: ``cli`` re-raises it (``app.run`` prints its traceback) and prints no error line."""
    import traceback

    from drd_jax import train

    monkeypatch.setattr(cli, "quiet_logs", lambda: None)
    # int() is a builtin: its ValueError is raised by train_and_evaluate's own line.
    monkeypatch.setattr(train, "validate_config", int)

    def main(argv):
        return train.train_and_evaluate("not a config", "/nonexistent/run")

    with pytest.raises(ValueError, match="invalid literal for int") as info:
        cli._guarded(main)(["prog"])
    assert not isinstance(info.value, UserError) and not cli.is_user_error(info.value)
    raised_in = traceback.extract_tb(info.value.__traceback__)[-1].filename
    assert pathlib.Path(raised_in) == REPO_ROOT / "drd_jax" / "train.py"
    assert capsys.readouterr().err == ""


# Identifiers of the old rule (a user error by the file that raised it, or by a class attribute).
OLD_RULE_NAMES = {"CHECKING_MODULES", "USER_ERROR_TYPES", "_raised_in", "user_error"}


def _identifiers(tree: ast.AST):
    """``(line, name)`` of every name, attribute, import, def, class and string in ``tree``."""
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        for attr in ("id", "attr", "name", "asname", "arg"):
            name = getattr(node, attr, None)
            if isinstance(name, str):
                yield line, name
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield line, node.value


def test_no_module_marks_user_errors_but_by_their_class():
    """Every user error is a ``drd_jax.errors.UserError``: no class sets ``user_error``, and no
    list of checking modules (or the other names of that rule) is left in the code."""
    found = []
    for package in ("drd_jax", "experiments", "tfds_builders"):
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            where = path.relative_to(REPO_ROOT)
            for node in ast.walk(tree):
                if not isinstance(node, ast.ClassDef):
                    continue
                for stmt in node.body:
                    targets = getattr(stmt, "targets", None) or [getattr(stmt, "target", None)]
                    if any(getattr(t, "id", None) == "user_error" for t in targets):
                        found.append(f"{where}:{stmt.lineno}: class {node.name} sets user_error")
            found += [
                f"{where}:{line}: {name}"
                for line, name in _identifiers(tree)
                if name in OLD_RULE_NAMES
            ]
    assert not found, "\n".join(found)


def test_unknown_override_names_the_close_fields():
    from ml_collections import ConfigDict

    config = ConfigDict({"learning_rate": 0.1, "lr_power": 0.9, "model": {"width": 1.0}})
    assert cli.unknown_override(config, "config", "learning_rate") is None
    assert cli.unknown_override(config, "config", "model.width") is None
    message = cli.unknown_override(config, "config", "learnin_rate")
    assert message == "no config field 'learnin_rate'; did you mean --config.learning_rate?"
    assert "--config.lr_power" in cli.unknown_override(config, "config", "lr")
    assert "--config.model.width" in cli.unknown_override(config, "config", "model.widht")
    assert "is a float" in cli.unknown_override(config, "config", "learning_rate.x")
    assert "none of the 3 fields" in cli.unknown_override(config, "config", "zzz")
