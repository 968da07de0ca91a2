"""Helpers shared by test modules (importable as ``helpers``: pytest puts tests/ on sys.path)."""

from experiments.configs import synthetic


def tiny(data_dir, **overrides):
    """The ``synthetic.py:tiny`` config in baseline mode on ``data_dir``, with ``overrides``."""
    c = synthetic.get_config("tiny")
    c.data_dir = data_dir
    c.mode = "baseline"
    for k, v in overrides.items():
        c[k] = v
    return c
