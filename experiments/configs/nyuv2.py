r"""NYUv2 (795 train / 654 test, 40 classes by default) at the paper's settings.

    python -m tfds_builders.build nyuv2 --config 40 --manual_dir <downloads>   # once
    python -m experiments.train --config=experiments/configs/nyuv2.py --workdir=/runs/nyu_tn
    python -m experiments.reproduce --config=experiments/configs/nyuv2.py --workdir=/runs/nyu \
        --table=1
    python -m experiments.train --config=experiments/configs/nyuv2.py:13 ...   # 13 classes

Batch 1, 100 epochs (795 × 100 steps), scale 0.76–1.75, flip and colour jitter as in Depth-aware
CNN's NYUv2 script; the 480×640 crop (the whole frame) and the jitter strength are our choices. The
variant (``:40``, ``:13``, ``:894``) picks the builder config.
"""

from drd_jax.errors import ConfigError
from experiments.configs.base import get_base_config

NUM_TRAIN_IMAGES = 795


def get_config(variant: str = "40"):
    """The NYUv2 config for the ``variant`` class set ('40', '13' or '894')."""
    variant = variant or "40"
    if variant not in ("40", "13", "894"):
        raise ConfigError(f"unknown NYUv2 config variant {variant!r}; use '40', '13' or '894'")
    c = get_base_config()
    c.dataset = f"nyuv2/{variant}"
    c.crop_size = (480, 640)
    c.color_jitter = 0.2
    c.num_train_steps = 100 * NUM_TRAIN_IMAGES
    c.checkpoint_every_steps = 5 * NUM_TRAIN_IMAGES
    c.eval_every_steps = 10 * NUM_TRAIN_IMAGES
    return c
