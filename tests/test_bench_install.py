"""``experiments.benchmarks.bench_install``: one ``make install`` timed from no ``.venv``, on a
stand-in Makefile (the real install takes half a minute)."""

import shutil

import pytest

from experiments.benchmarks import bench_install

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")

MAKEFILE = """install:
\ttest ! -e .venv
\tmkdir -p .venv/lib/__pycache__
\ttouch .venv/lib/__pycache__/a.cpython-311.pyc .venv/lib/__pycache__/b.cpython-311.pyc
\techo $(PYTHON) > .venv/python
"""


def test_each_install_starts_from_no_venv_and_counts_its_pyc_files(tmp_path):
    (tmp_path / "Makefile").write_text(MAKEFILE)
    for _ in range(2):  # the second run finds the first one's .venv and must delete it first
        seconds, pyc_files = bench_install.make_install(tmp_path, "python3.11")
        assert seconds > 0 and pyc_files == 2
    assert (tmp_path / ".venv" / "python").read_text() == "python3.11\n"


def test_a_failing_install_is_an_error_with_makes_output(tmp_path):
    (tmp_path / "Makefile").write_text("install:\n\techo no index here >&2; exit 3\n")
    with pytest.raises(RuntimeError, match=r"(?s)make install failed in .*no index here"):
        bench_install.make_install(tmp_path, "python3.11")


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--python=python0.1", "--python: 'python0.1' is not on PATH"),
        ("--repeats=0", "--repeats: expected >= 1, got 0"),
        ("--revisions=no-such-revision", "'no-such-revision' is not a git revision"),
    ],
)
def test_bad_flags_are_named_before_anything_is_checked_out(flag, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_install.parse_args([flag])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
