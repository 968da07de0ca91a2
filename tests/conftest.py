"""Shared pytest setup.

Before JAX is imported anywhere, the environment (which the tests' subprocesses inherit) asks for:

* two host CPU devices, so multi-device tests (pmap, psum, NamedSharding) run on a CPU-only
  machine;
* fast XLA compiles: ``JAX_DISABLE_MOST_OPTIMIZATIONS=1`` and XLA:CPU's plain elemental emitters
  (``--xla_cpu_use_fusion_emitters=false``) compile the tiny D-Conv teacher's train step about
  six times faster. The suite compiles far more than it computes; results differ from XLA's
  default programs in the last bits only, and every comparison in a test is between programs
  compiled under the same settings. Set ``JAX_DISABLE_MOST_OPTIMIZATIONS`` or ``XLA_FLAGS``
  yourself to run the suite otherwise (``XLA_FLAGS`` then needs
  ``--xla_force_host_platform_device_count=2``);
* one persistent compilation cache per session (:func:`pytest_configure`).

Real dataset fixtures are read from ``../shared/data`` (override with ``DRD_SHARED_DATA``); tests
that need them skip when the folder is absent.

Training tests share ``data_dir`` (``synthetic_rgbd/tiny``, built once per session, read only)
and the session's finished tiny runs (:func:`tiny_baseline_run`, :func:`tiny_teacher_run`: read
them, never write to them; copy one first).

Marker ``integration``: the tests that train (they need ``data_dir``), take a whole train step,
run a command or Python in a subprocess, build a dataset or install a package. This file marks
those that need ``data_dir`` and the files of :data:`INTEGRATION`; the other files mark theirs
with ``@pytest.mark.integration``. ``make test-fast`` runs the rest: the unit tests.
"""

import contextlib
import os
import pathlib
import shutil
import tempfile
from typing import NamedTuple

os.environ.setdefault(
    "XLA_FLAGS", "--xla_force_host_platform_device_count=2 --xla_cpu_use_fusion_emitters=false"
)
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"


def pytest_configure(config):
    """One JAX persistent compilation cache for the whole session (a fresh temporary folder, or
    ``$JAX_COMPILATION_CACHE_DIR`` if set), shared by the xdist workers and the subprocesses they
    start through the environment: the same tiny train step, compiled in many tests and commands,
    is compiled once. A cached executable is the compiled one, so results are the same bit for
    bit; only the time to get it changes.

    Under ``--dist loadfile``, the files go to the workers in collection order
    (:func:`pytest_collection_modifyitems` puts the slowest first), not xdist's default order by
    number of tests, which left the long one-test files (a whole soak, two processes training as
    one job) for last, one worker running them while the other had finished."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False
    if hasattr(config, "workerinput") or os.environ.get(_CACHE_ENV):
        return  # an xdist worker (the controller set it up) or a cache of the user's
    config.drd_jax_compilation_cache = tempfile.mkdtemp(prefix="drd_jax_test_jit_cache_")
    os.environ[_CACHE_ENV] = config.drd_jax_compilation_cache
    # Every program but the smallest (an eager operation compiles in milliseconds; writing it
    # would cost about as much): with XLA optimisations off, a train step compiles in a second.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")


def pytest_unconfigure(config):
    cache = getattr(config, "drd_jax_compilation_cache", None)
    if cache:
        shutil.rmtree(cache, ignore_errors=True)
        del os.environ[_CACHE_ENV]


# Files whose tests run the command-line tools or a fresh venv in subprocesses, build TFDS
# datasets or run the experiments' tools (most tests that train need ``data_dir`` and are marked
# through it).
INTEGRATION = frozenset(
    {
        "test_build_cli.py",
        "test_cli.py",
        "test_depth_weight_stats.py",
        "test_init_protocol.py",
        "test_multihost.py",
        "test_multihost_flags.py",
        "test_nyuv2_builder.py",
        "test_packaging.py",
        "test_readme.py",
        "test_sunrgbd_builder.py",
    }
)


# The files that take longest (on 2 CPU cores, about 20 to 60 s each), slowest first: they run
# first (the other files keep their order), so that the two workers of ``-n 2 --dist loadfile``
# end close together.
SLOWEST_FIRST = (
    "test_multihost.py",
    "test_train.py",
    "test_distillation.py",
    "test_bench_gpu.py",
    "test_cli.py",
    "test_soak_resume.py",
    "test_depth_conv.py",
    "test_segment.py",
    "test_padded_eval.py",
    "test_reproduce.py",
    "test_packaging.py",
    "test_resume_sigkill.py",
    "test_depth_conv_pallas.py",
    "test_disk_full.py",
    "test_export.py",
    "test_losses.py",
    "test_fault_probes.py",
    "test_models.py",
)


def pytest_collection_modifyitems(config, items):
    """Marks ``integration`` the tests that need the session's data (to train, or to run a tool
    on it) and those of :data:`INTEGRATION`; ``-m "not integration"`` leaves the unit tests.
    Puts the files of :data:`SLOWEST_FIRST` first, in that order."""
    for item in items:
        if "data_dir" in item.fixturenames or item.path.name in INTEGRATION:
            item.add_marker(pytest.mark.integration)
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: keeps the rest


def _shared_data_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("DRD_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@contextlib.contextmanager
def xla_optimisations_off():
    """``jax_disable_most_optimizations`` on inside the block, whatever the environment asked."""
    import jax

    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", old)


@pytest.fixture(scope="module")
def fast_compile():
    """XLA optimisations off for a module (``jax_disable_most_optimizations``), even where the
    environment turned them back on.

    Compiling the tiny D-Conv teacher drops from minutes to seconds on a slow CPU. Results (e.g.
    ``params_fingerprint``) only compare between runs compiled under the same setting: the
    session's tiny runs and the tests' subprocesses use this one.
    """
    with xla_optimisations_off():
        yield


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """A TFDS data dir with `synthetic_rgbd/tiny`, built once per session; do not write to it."""
    from drd_jax import input_pipeline

    d = tmp_path_factory.mktemp("synthetic_tiny")
    input_pipeline.load_data_source("synthetic_rgbd/tiny", "train", data_dir=str(d), prepare=True)
    return str(d)


class TinyRun(NamedTuple):
    """A finished run of the session: its workdir and what ``train_and_evaluate`` returned."""

    workdir: pathlib.Path
    result: dict


def _session_run(data_dir, tmp_path_factory, name: str, **overrides):
    """Trains ``helpers.tiny(data_dir, **overrides)`` in ``<tmp>/<name>/run`` (XLA optimisations
    off, as under ``fast_compile``); after the session, fails if a test wrote into it."""
    from helpers import folder_contents, tiny

    from drd_jax import train

    workdir = tmp_path_factory.mktemp(name) / "run"
    with xla_optimisations_off():
        result = train.train_and_evaluate(tiny(data_dir, **overrides), workdir)
    before = folder_contents(workdir)
    yield TinyRun(workdir, result)
    changed = folder_contents(workdir) != before
    assert not changed, f"a test wrote into the session's {name} run: copy it"


@pytest.fixture(scope="session")
def tiny_baseline_run(data_dir, tmp_path_factory):
    """The session's finished tiny baseline run (``helpers.tiny``: ``synthetic.py:tiny``, 4
    steps), trained once per session (per xdist worker). Read it, never write to it: copy it
    first (checked after the session)."""
    yield from _session_run(data_dir, tmp_path_factory, "tiny_baseline")


@pytest.fixture(scope="session")
def tiny_teacher_run(data_dir, tmp_path_factory):
    """The session's finished tiny teacher run (as :func:`tiny_baseline_run`, mode teacher)."""
    yield from _session_run(data_dir, tmp_path_factory, "tiny_teacher", mode="teacher")


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """Path of the real NYUv2 / SUN RGB-D fixture files; skips the test when they are absent."""
    path = _shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real dataset fixtures not found at {path}")
    return path


@pytest.fixture
def small_tmpfs(tmp_path):
    """``mount(size) -> path``: a tmpfs of ``size`` (e.g. ``'1m'``) under ``tmp_path``, unmounted
    after the test; skips without root or permission to mount (a disk that fills up for real)."""
    import shutil
    import subprocess

    mounted = []

    def mount(size: str) -> pathlib.Path:
        path = tmp_path / f"tmpfs_{len(mounted)}"
        path.mkdir()
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a small tmpfs needs root")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode:
            pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)
