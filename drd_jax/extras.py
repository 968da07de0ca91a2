"""Imports of the optional dependencies, with an error that names the extra to install.

``pip install drd_jax`` brings the library alone (jax, flax, optax, numpy, flatbuffers). The
datasets and the input pipeline need ``drd_jax[data]``, training needs ``drd_jax[train]``
(pyproject.toml):

    grain = require("grain", extra="data")
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]


def require(module: str, *, extra: str) -> ModuleType:
    """``importlib.import_module(module)``; when it is not installed, a ``ModuleNotFoundError``
    that says which extra of drd_jax brings it (``pip install 'drd_jax[<extra>]'``)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or module.split(".")[0] != e.name.split(".")[0]:
            raise  # the module is there, something it imports is broken: not ours to explain
        raise ModuleNotFoundError(
            f"{module} is not installed: it comes with drd_jax's [{extra}] extra; install it with "
            f"pip install 'drd_jax[{extra}]' (or pip install -r requirements.txt in a checkout)",
            name=e.name,
        ) from e
