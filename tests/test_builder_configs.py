"""Every builder of tfds_builders refuses an unknown config by listing its configs."""

import importlib

import pytest
import tensorflow_datasets as tfds

from drd_jax import config as config_lib
from experiments.configs import synthetic

BUILDERS = ("nyuv2", "sunrgbd", "synthetic_rgbd")


def _config_names(name: str) -> list[str]:
    module = importlib.import_module(f"tfds_builders.{name}")
    return [c.name for c in module.Builder.BUILDER_CONFIGS]


@pytest.mark.parametrize("name", BUILDERS)
def test_an_unknown_config_lists_the_configs(name, tmp_path):
    module = importlib.import_module(f"tfds_builders.{name}")
    with pytest.raises(ValueError, match=rf"{name}/huge") as info:
        module.Builder(data_dir=str(tmp_path), config="huge")
    for config in _config_names(name):
        assert config in str(info.value)
    assert not list(tmp_path.iterdir())  # refused before anything is written


@pytest.mark.parametrize("name", BUILDERS)
def test_the_tfds_registry_path_lists_the_configs_too(name, tmp_path):
    importlib.import_module(f"tfds_builders.{name}")  # registers the builder
    with pytest.raises(ValueError, match="huge") as info:
        tfds.builder(f"{name}/huge", data_dir=str(tmp_path))
    assert all(config in str(info.value) for config in _config_names(name))


def test_known_configs_and_versions_still_load(tmp_path):
    from tfds_builders.synthetic_rgbd import Builder

    assert Builder(data_dir=str(tmp_path), config="tiny").builder_config.name == "tiny"
    assert Builder(data_dir=str(tmp_path), config="tiny:2.0.0").builder_config.name == "tiny"
    assert Builder(data_dir=str(tmp_path)).builder_config.name == "default"


def test_validate_config_lists_the_configs_of_the_dataset():
    c = synthetic.get_config("tiny")
    c.dataset = "synthetic_rgbd/huge"
    with pytest.raises(ValueError, match=r"^config\.dataset: .*synthetic_rgbd/huge") as info:
        config_lib.validate_config(c)
    assert all(config in str(info.value) for config in _config_names("synthetic_rgbd"))
    for dataset in ("synthetic_rgbd", "synthetic_rgbd/tiny", "nyuv2/13", "sunrgbd/raw"):
        c.dataset = dataset
        config_lib.validate_config(c)
