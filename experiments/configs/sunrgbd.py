r"""SUN RGB-D (5285 train / 5050 test, 37 classes) at the paper's settings.

    python -m tfds_builders.build sunrgbd --config bfx --manual_dir <downloads>   # once
    python -m experiments.reproduce --config=experiments/configs/sunrgbd.py --workdir=/runs/sun \
        --table=1

The images come in several sizes (four sensors): training crops are 480×640 (smaller images are
padded with void), evaluation runs each test image at its own size. Batch 1; 30 epochs is our
choice (the paper gives no schedule for SUN RGB-D). The variant picks the builder config
(``:bfx`` default, ``:raw``).
"""

from drd_jax.errors import ConfigError
from experiments.configs.base import get_base_config

NUM_TRAIN_IMAGES = 5285


def get_config(variant: str = "bfx"):
    """The SUN RGB-D config for builder config ``variant`` ('bfx' or 'raw')."""
    variant = variant or "bfx"
    if variant not in ("bfx", "raw"):
        raise ConfigError(f"unknown SUN RGB-D config variant {variant!r}; use 'bfx' or 'raw'")
    c = get_base_config()
    c.dataset = f"sunrgbd/{variant}"
    c.crop_size = (480, 640)
    c.num_train_steps = 30 * NUM_TRAIN_IMAGES
    c.checkpoint_every_steps = 5000
    c.eval_every_steps = 5 * NUM_TRAIN_IMAGES
    return c
