"""JSON values of what runs record: configs, metrics and checkpoint metadata."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

__all__ = ["to_json_value"]


def to_json_value(value: Any) -> Any:
    """``value`` as JSON values: ConfigDicts and mappings as dicts (string keys only), tuples as
    lists, numpy and JAX scalars and arrays as Python numbers and nested lists, PRNG keys as their
    key data.

    Raises:
      TypeError: a mapping key that is not a string, or a value JSON cannot hold.
    """
    if hasattr(value, "to_dict") and callable(value.to_dict):  # ml_collections.ConfigDict
        value = value.to_dict()
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"JSON object keys must be strings, got {k!r}")
            out[k] = to_json_value(v)
        return out
    if isinstance(value, list | tuple):
        return [to_json_value(v) for v in value]
    if isinstance(value, jax.Array) and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
        value = jax.random.key_data(value)
    if isinstance(value, np.ndarray | np.generic | jax.Array):
        return to_json_value(np.asarray(value).tolist())
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"value of type {type(value).__name__} is not JSON-serialisable: {value!r}")
