"""Training config for the procedural ``synthetic_rgbd`` dataset (CPU-sized, runs in minutes).

Usage::

    python -m experiments.train --config=experiments/configs/synthetic.py --workdir=/tmp/teacher \\
        --config.mode=teacher
    python -m experiments.train --config=experiments/configs/synthetic.py --workdir=/tmp/student \\
        --config.mode=student --config.teacher_workdir=/tmp/teacher
    python -m experiments.train --config=experiments/configs/synthetic.py:tiny ...   # tests

``get_config('tiny')`` shrinks everything (the ``synthetic_rgbd/tiny`` data, a 1/16-width network,
small crops, a handful of steps) for tests. Every field is documented in
:func:`drd_jax.train.validate_config`'s module (``drd_jax/train.py``).
"""

import ml_collections


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """The synthetic-data config; ``variant`` '' (default) or 'tiny'."""
    c = ml_collections.ConfigDict()
    # Data.
    c.dataset = "synthetic_rgbd/default"
    c.data_dir = ""  # '' = $DRD_DATA_DIR or ~/tensorflow_datasets; built there if missing
    c.crop_size = (96, 128)
    c.scale_range = (0.75, 1.5)
    c.flip_prob = 0.5
    c.color_jitter = 0.0
    c.num_workers = 0
    # Method.
    c.mode = "teacher"  # 'baseline' | 'teacher' | 'student'
    c.init = "scratch"  # 'scratch' | 'teacher' (parameter sharing) | 'imagenet'
    c.teacher_workdir = ""  # student: the teacher run's workdir
    c.teacher_checkpoint = "best"  # 'best' (by mean_iou) or 'latest'
    c.pretrained_path = ""  # init='imagenet': VGG16 weights (.h5 / .pth / .npz)
    c.vtce_weight = 1.0  # student: 0 gives BL+PS (with init='teacher')
    c.beta = 0.9
    c.alpha = 8.3
    c.depth_aware_layers = "all"
    c.width = 0.25
    c.dropout_rate = 0.5
    # Optimisation (the paper: SGD, lr 2.5e-4, momentum 0.9, wd 4e-4, poly 0.9, batch 1).
    c.optimizer = "sgd"  # 'sgd' | 'adam'
    c.learning_rate = 1e-3
    c.momentum = 0.9
    c.weight_decay = 4e-4
    c.lr_power = 0.9
    c.batch_size = 8
    c.num_train_steps = 2000
    c.seed = 0
    # Execution (left out of the config fingerprint: they do not change what is computed).
    c.parallel = "jit"  # 'jit' (NamedSharding over a 'data' mesh) | 'pmap'
    c.num_devices = 0  # 0 = all devices
    c.stop_after_steps = 0  # > 0: save and stop at this step (resume later with the same config)
    c.progress_bar = True
    c.write_curves = True  # <workdir>/curves.png when the run ends
    # Logging, evaluation, checkpoints.
    c.log_every_steps = 50
    c.eval_every_steps = 0  # 0 = evaluate only at the end
    c.eval_batch_size = 0  # 0 = one image per device
    c.checkpoint_every_steps = 500
    c.max_checkpoints_to_keep = 3
    if variant == "tiny":
        c.dataset = "synthetic_rgbd/tiny"
        c.crop_size = (32, 32)
        c.width = 1 / 16
        c.batch_size = 4
        c.num_train_steps = 4
        c.learning_rate = 1e-3
        c.log_every_steps = 1
        c.checkpoint_every_steps = 2
        c.progress_bar = False
        c.write_curves = False
    elif variant:
        raise ValueError(f"unknown config variant {variant!r}; use '' or 'tiny'")
    return c
