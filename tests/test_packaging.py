"""What a user installs: the wheel (contents, metadata, extras), the library alone in a fresh
venv running the README's VTCE example, and the TFDS builders registering on ``import
tfds_builders``."""

import email.parser
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import venv
import zipfile

import pytest

import drd_jax
from tfds_builders import build

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# What the wheel is built from (pyproject.toml's package list; everything else stays out).
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "drd_jax", "tfds_builders")
BUILDER_FILES = ("README.md", "CITATIONS.bib", "TAGS.txt", "checksums.tsv")
# Modules of the extras, which `pip install drd_jax` alone must not bring.
EXTRA_MODULES = ("grain", "tensorflow_datasets", "array_record", "ml_collections", "tensorboardX")
# The fresh venv's processes see only what is installed there: no PYTHONPATH of the caller's.
ISOLATED_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def readme_python_block(heading: str) -> str:
    """The first ```python block of README.md after the line ``heading``."""
    after = README[README.index(f"\n{heading}\n") :]
    return re.search(r"```python\n(.*?)```", after, flags=re.DOTALL).group(1)


def run(command, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(a) for a in command], capture_output=True, text=True, check=False, **kwargs
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    """The wheel built from a copy of the sources (so no stale ``build/`` of the checkout leaks
    in) with the pinned setuptools of this venv (no build isolation, no download)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(path, src / name)
    dist = tmp / "dist"
    run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", dist, src]
    )
    (whl,) = dist.glob("drd_jax-*.whl")
    return whl


def test_wheel_ships_the_library_and_the_builders_with_their_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    top = {n.split("/")[0] for n in names}
    assert top == {"drd_jax", "tfds_builders", f"drd_jax-{drd_jax.__version__}.dist-info"}
    for dataset in build.available_datasets():
        for file in BUILDER_FILES:
            assert f"tfds_builders/{dataset}/{file}" in names, (dataset, file)
    assert f"drd_jax-{drd_jax.__version__}.dist-info/licenses/LICENSE" in names
    for module in ("ops/depth_conv.py", "losses.py", "metrics.py", "models/deeplab_vgg16.py"):
        assert f"drd_jax/{module}" in names


def test_wheel_metadata_license_floors_and_extras(wheel):
    with zipfile.ZipFile(wheel) as z:
        meta = email.parser.Parser().parsestr(
            z.read(f"drd_jax-{drd_jax.__version__}.dist-info/METADATA").decode()
        )
    assert meta["Version"] == drd_jax.__version__
    assert meta["License-Expression"] == "Apache-2.0"
    requires = meta.get_all("Requires-Dist")
    core = sorted(r for r in requires if "extra ==" not in r)
    names = [re.match(r"[\w-]+", r).group(0) for r in core]
    assert names == ["flatbuffers", "flax", "jax", "numpy", "optax"]
    assert all(">=" in r for r in core), core  # every core dependency has a floor
    assert set(meta.get_all("Provides-Extra")) >= {"data", "train", "test"}

    def extra(name):
        return {
            re.match(r"[\w-]+", r).group(0).lower().replace("_", "-")
            for r in requires
            if f'extra == "{name}"' in r
        }

    assert {"tensorflow-datasets", "array-record", "grain"} <= extra("data")
    assert {"drd-jax", "tensorboardx", "tqdm", "orbax-checkpoint", "ml-collections"} <= extra(
        "train"
    )
    assert {"drd-jax", "pytest", "chex"} <= extra("test")


def test_installed_builders_keep_their_citation(wheel, tmp_path):
    """The builders' CITATIONS.bib are package data: read from the installed wheel, not the
    checkout."""
    target = tmp_path / "site"
    run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile"]
        + ["--target", target, wheel]
    )
    code = (
        "import tensorflow_datasets as tfds, tfds_builders\n"
        "assert tfds_builders.__file__.startswith({!r}), tfds_builders.__file__\n"
        "import json\n"
        "print(json.dumps({{n: tfds.builder(n, data_dir={!r}).info.citation for n in {!r}}}))\n"
    ).format(str(target), str(tmp_path / "tfds"), build.available_datasets())
    out = run(
        [sys.executable, "-c", code], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(target))
    )
    citations = json.loads(out.stdout)
    assert set(citations) == set(build.available_datasets())
    for name, citation in citations.items():
        expected = (ROOT / "tfds_builders" / name / "CITATIONS.bib").read_text().strip()
        assert "@" in expected and citation.strip() == expected, name


@pytest.mark.slow
def test_wheel_alone_in_a_fresh_venv_runs_the_readme_vtce_example(wheel, tmp_path):
    """``pip install drd_jax`` (no extras) into a new venv brings jax, flax, optax, numpy and
    flatbuffers and nothing of the extras; the README's "use VTCE in your own project" example
    runs there against the installed package, and an export (``drd_jax.serving``) is written and
    read back."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    # The pinned versions (requirements.txt as constraints): the ones tested, and in pip's cache.
    run(
        [python, "-m", "pip", "install", "-q", "--no-compile", "--disable-pip-version-check"]
        + ["-c", ROOT / "requirements.txt", wheel],
        env=ISOLATED_ENV,
    )
    missing = run(
        [
            python,
            "-c",
            "import importlib.util as u; "
            f"print(' '.join(m for m in {EXTRA_MODULES!r} if u.find_spec(m) is None))",
        ],
        cwd=tmp_path,
        env=ISOLATED_ENV,
    ).stdout.split()
    assert missing == list(EXTRA_MODULES), "an extra's package came with the library alone"

    example = readme_python_block("## Use VTCE in your own project")
    script = tmp_path / "vtce_example.py"
    script.write_text(
        "import drd_jax\n"
        f"assert drd_jax.__file__.startswith({str(env_dir)!r}), drd_jax.__file__\n" + example
    )
    out = run([python, script], cwd=tmp_path, env=ISOLATED_ENV).stdout
    assert re.fullmatch(r"T = 0\.1653, loss = \d+\.\d{4}, grad norm = \d\.\d{3}e[-+]\d\d\n", out)

    # An export (drd_jax.serving) is written and read back with the library alone.
    serving = tmp_path / "serving_example.py"
    serving.write_text(
        "import jax, numpy as np\n"
        "from drd_jax import serving\n"
        "from drd_jax.models import DeepLabVGG16\n"
        "model = DeepLabVGG16(num_classes=3, width=1 / 32)\n"
        "x = np.zeros((2, 24, 32, 3), np.float32)\n"
        "params = model.init(jax.random.PRNGKey(0), x[:1])['params']\n"
        "serving.export_network('export', model=model, params=params, class_names='abc',\n"
        "                       input_size=(24, 32), platforms=('cpu',))\n"
        "net = serving.load_export('export')\n"
        "want = model.apply({'params': params}, x)\n"
        "print(float(np.abs(np.asarray(net.call(x)) - np.asarray(want)).max()))\n"
    )
    assert float(run([python, serving], cwd=tmp_path, env=ISOLATED_ENV).stdout) < 1e-4

    # What needs an extra says which one.
    err = subprocess.run(
        [python, "-c", "import tfds_builders"],
        cwd=tmp_path,
        env=ISOLATED_ENV,
        capture_output=True,
        text=True,
    ).stderr
    assert "pip install 'drd_jax[data]'" in err, err


def test_import_tfds_builders_registers_every_builder(data_dir, tmp_path):
    """In a fresh interpreter, ``import tfds_builders`` alone makes every builder (each folder of
    ``tfds_builders``, and each config) known to TFDS by name, and ``tfds.data_source`` reads a
    built one."""
    names = [
        f"{n}/{c}"
        for n in build.available_datasets()
        for c in build.config_names(build.builder_class(n))
    ]
    assert len(names) >= 8  # nyuv2 40/13/894, sunrgbd bfx/raw, synthetic_rgbd tiny/default/...
    code = (
        "import tensorflow_datasets as tfds, tfds_builders\n"
        f"for name in {names!r}:\n"
        f"    b = tfds.builder(name, data_dir={str(tmp_path)!r})\n"
        "    assert (b.name, b.builder_config.name) == tuple(name.split('/')), name\n"
        f"source = tfds.data_source('synthetic_rgbd/tiny', split='test', data_dir={data_dir!r})\n"
        "print(len(source), sorted(source[0]))\n"
    )
    out = run([sys.executable, "-c", code], cwd=tmp_path).stdout
    count, keys = out.split(" ", 1)
    assert int(count) > 0
    assert "'depth'" in keys and "'image'" in keys and "'label'" in keys


def test_citation_cff_matches_the_package():
    """CITATION.cff's version and license are the package's, and it cites the paper by DOI."""
    import tomllib

    import yaml

    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert str(cff["version"]) == drd_jax.__version__
    assert cff["license"] == project["license"] == "Apache-2.0"
    paper = cff["preferred-citation"]
    assert paper["title"] == "Depth Removal Distillation for RGB-D Semantic Segmentation"
    assert [a["family-names"] for a in paper["authors"]] == ["Fang", "Liang", "Shao", "Dong", "Li"]
    assert paper["doi"] in project["urls"]["Paper"]
    assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")


def test_a_missing_extra_is_named(tmp_path, monkeypatch):
    from drd_jax.extras import require

    assert require("json", extra="data").dumps([1]) == "[1]"
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'drd_jax\[data\]'") as e:
        require("no_such_module_of_drd_jax", extra="data")
    assert e.value.name == "no_such_module_of_drd_jax"
    # A module that is there but imports a missing one: that error, unexplained.
    (tmp_path / "half_installed.py").write_text("import no_such_dependency_of_it\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_of_it") as e:
        require("half_installed", extra="train")
    assert "drd_jax[" not in str(e.value)
