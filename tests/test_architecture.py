"""The library's shape: import layers without cycles, ``__all__`` as the modules' public surface,
one name per distillation term, and config fingerprints that stay what workdirs recorded."""

import ast
import dataclasses
import importlib
import os
import pathlib
import subprocess
import sys

import ml_collections
import pytest

from drd_jax import config as config_lib
from drd_jax import distillation
from experiments.configs import base

ROOT = pathlib.Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "drd_jax"

# Each module may import only modules of a lower layer (or of its own package). A new module
# gets a layer here.
LAYERS = {
    "drd_jax": 0,
    "drd_jax.errors": 0,
    "drd_jax.files": 0,
    "drd_jax.workdir_lock": 0,
    "drd_jax.extras": 0,
    "drd_jax.json_values": 0,
    "drd_jax.data": 1,
    "drd_jax.data.transforms": 1,
    "drd_jax.ops": 1,
    "drd_jax.ops.windows": 1,
    "drd_jax.ops.depth_pool": 1,
    "drd_jax.ops.depth_conv": 1,
    "drd_jax.ops.depth_conv_pallas": 1,
    "drd_jax.ops.implementation_choice": 1,
    "drd_jax.ops.valid_region": 1,
    "drd_jax.metrics": 1,
    "drd_jax.parallel": 1,
    "drd_jax.divergence": 1,
    "drd_jax.metric_writers": 1,
    "drd_jax.checkpointing": 1,
    "drd_jax.visualize": 1,
    "drd_jax.layers": 2,
    "drd_jax.models": 3,
    "drd_jax.models.deeplab_vgg16": 3,
    "drd_jax.models.distillation_heads": 3,
    "drd_jax.pretrained": 4,
    "drd_jax.losses": 4,
    "drd_jax.input_pipeline": 4,
    "drd_jax.loop": 4,
    "drd_jax.serving": 4,
    "drd_jax.distillation.critic": 5,
    "drd_jax.distillation.autoencoder": 5,
    "drd_jax.distillation.terms": 6,
    "drd_jax.distillation": 7,
    "drd_jax.config": 8,
    "drd_jax.state": 9,
    "drd_jax.steps": 10,
    "drd_jax.runs": 11,
    "drd_jax.train": 12,
}


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: pathlib.Path) -> set[str]:
    """The drd_jax modules ``path`` imports (anywhere in the file, ``TYPE_CHECKING`` aside)."""
    tree = ast.parse(path.read_text())
    type_checking = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            type_checking.update(id(n) for n in ast.walk(node))
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("drd_jax"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("drd_jax"):
            for alias in node.names:  # `from drd_jax import losses` imports a module
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in LAYERS else node.module)
    return found


LIBRARY_FILES = sorted(LIBRARY.rglob("*.py"))


def test_every_module_has_a_layer():
    missing = sorted({_module_name(p) for p in LIBRARY_FILES} - set(LAYERS))
    assert not missing, f"give these modules a layer in LAYERS: {missing}"


def _same_package(a: str, b: str) -> bool:
    return a.rpartition(".")[0] == b.rpartition(".")[0]


@pytest.mark.parametrize("path", LIBRARY_FILES, ids=_module_name)
def test_imports_go_down_the_layers(path):
    name = _module_name(path)
    for imported in _imports(path):
        if imported == name or name.startswith(imported + ".") or imported.startswith(name + "."):
            continue  # a package and its own modules
        if _same_package(name, imported):  # siblings: same layer allowed (no cycles: below)
            assert LAYERS[imported] <= LAYERS[name], f"{name} imports {imported}"
        else:
            assert LAYERS[imported] < LAYERS[name], (
                f"{name} (layer {LAYERS[name]}) imports {imported}"
            )


def test_no_import_cycles():
    graph = {_module_name(p): _imports(p) for p in LIBRARY_FILES}
    done, path = set(), []

    def visit(module):
        if module in path:
            raise AssertionError(f"import cycle: {' -> '.join(path[path.index(module) :])}")
        if module in done:
            return
        path.append(module)
        for imported in graph.get(module, ()):
            if not module.startswith(imported + "."):  # a module importing its own package
                visit(imported)
        path.pop()
        done.add(module)

    for module in graph:
        visit(module)


# The entry points that train (everything else reads runs through drd_jax.runs).
TRAINERS = (
    "drd_jax.train",
    "experiments.train",
    "experiments.reproduce",
    "experiments.benchmarks.bench_loop",
    "experiments.benchmarks.bench_gpu",
)


def test_nothing_but_the_entry_points_imports_the_trainer():
    users = []
    for path in [*LIBRARY_FILES, *sorted((ROOT / "experiments").rglob("*.py"))]:
        if "drd_jax.train" in _imports(path) and _module_name(path) not in TRAINERS:
            users.append(_module_name(path))
    assert not users, f"import drd_jax.runs / steps / state instead of the trainer: {users}"


def _public_uses() -> dict[str, set[str]]:
    """``{module: names other files use from it}`` over the library, experiments and tests."""
    uses: dict[str, set[str]] = {}
    files = [*LIBRARY_FILES, *(ROOT / "experiments").rglob("*.py"), *(ROOT / "tests").glob("*.py")]
    for path in files:
        tree = ast.parse(path.read_text())
        aliases = {}  # local name -> drd_jax module
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("drd_jax"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    if sub in LAYERS:
                        aliases[alias.asname or alias.name] = sub
                    elif _module_name(path) != node.module:
                        uses.setdefault(node.module, set()).add(alias.name)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
            ):
                uses.setdefault(aliases[node.value.id], set()).add(node.attr)
    return uses


def test_all_lists_what_other_modules_use():
    problems = []
    for module, names in sorted(_public_uses().items()):
        mod = importlib.import_module(module)
        exported = getattr(mod, "__all__", None)
        if exported is None:
            continue  # modules without __all__ export every public name
        for name in exported:
            if not hasattr(mod, name):
                problems.append(f"{module}.__all__ names {name}, which does not exist")
        submodules = {k.rpartition(".")[2] for k in LAYERS if k.startswith(module + ".")}
        for name in sorted(names - set(exported) - submodules):
            problems.append(f"{module}.{name} is used elsewhere but not in its __all__")
    assert not problems, "\n".join(problems)


def test_each_term_has_one_name_in_config_dataclass_and_metrics():
    fields = {f.name for f in dataclasses.fields(distillation.Distillation)}
    config = base.get_base_config()
    for term in distillation.TERMS:
        assert term.weight_field in fields and term.weight_field in config, term.name
        assert term.metric == f"{term.name}_loss"
    assert set(distillation.KD_FIELDS) <= set(config_lib.FIELDS)
    # The config declares exactly the fields that are checked.
    assert set(config) == set(config_lib.FIELDS)
    made = distillation.make_distillation(config)
    assert {f: getattr(made, f) for f in fields if f in config} == {
        f: config[f] for f in fields if f in config
    }


def test_fingerprints_of_recorded_workdirs_do_not_change():
    # Recorded before the trainer was split into config/state/steps/runs: a base
    # config, the same without the fields it ignores, and a student with a seed paper's method
    # (whose KD fields count). A change here orphans every existing workdir.
    config = base.get_base_config()
    config.dataset = "synthetic_rgbd/default"
    assert config_lib.fingerprint(config) == (
        "279dcd340c7518abe039850d5d5177bce500791b401d4a869f794c89efbdb95a"
    )
    for field in (*distillation.KD_FIELDS, *config_lib.FINGERPRINT_IGNORE):
        del config[field]  # a config written before those fields existed: the same run
    assert config_lib.fingerprint(config) == (
        "279dcd340c7518abe039850d5d5177bce500791b401d4a869f794c89efbdb95a"
    )
    student = base.get_base_config()
    student.update(dataset="synthetic_rgbd/default", mode="student", pixel_kd_weight=10.0)
    assert config_lib.fingerprint(ml_collections.ConfigDict(student.to_dict())) == (
        "cdd9ec5461d308197cd1d44786a2c2c53fcf7369212ecc5bdb6d7705039d11ac"
    )


def test_every_experiments_module_imports_beside_every_other():
    """absl flags are process-wide: a script defines its flags when run (``define_flags()``
    under ``if __name__ == "__main__"``) or at import only if no other module defines the same
    name, so that a notebook, a test or another script can import any of them together (two
    benchmarks with ``--repeats`` at import time could not be). In a fresh process."""
    code = (
        "import importlib, pkgutil, experiments\n"
        "for m in pkgutil.walk_packages(experiments.__path__, 'experiments.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(len(list(pkgutil.walk_packages(experiments.__path__, 'experiments.'))))\n"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout) > 20  # the scripts, benchmarks and tools were found and imported
