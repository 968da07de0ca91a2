"""The fields every training config has, at the paper's settings (full-width DeepLab-VGG16).

Dataset configs (``nyuv2.py``, ``sunrgbd.py``, ``synthetic.py``) start from :func:`get_base_config`
and change what differs. What each field means and may hold is written once, in
``drd_jax.config.FIELDS``; ``python -m experiments.train --config=<file> --help`` lists every field
with its value in that config. Every field is checked by ``drd_jax.config.validate_config``; a
wrong value raises ``ValueError`` naming it (``config.<field>: ...``).
"""

import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
    """Paper defaults: SGD lr 2.5e-4, momentum 0.9, wd 4e-4, poly 0.9, batch 1, α 8.3, β 0.9.

    The weight decay, poly power and augmentation follow the Depth-aware CNN training script (the
    paper names only the learning rate, batch size, α and β); see docs/method.md.
    The other distillation methods are off (weight 0); their upstream weights are in their help.
    """
    c = ml_collections.ConfigDict()
    # Meanings, units and allowed values: drd_jax.config.FIELDS (or --help with a --config).
    # Data.
    c.dataset = ""
    c.data_dir = ""
    c.crop_size = (480, 640)
    c.scale_range = (0.76, 1.75)
    c.flip_prob = 0.5
    c.color_jitter = 0.0
    c.num_workers = 0
    # Method.
    c.mode = "teacher"
    c.init = "scratch"
    c.teacher_workdir = ""
    c.teacher_checkpoint = "best"
    c.pretrained_path = ""
    c.vtce_weight = 1.0
    c.beta = 0.9
    c.alpha = 8.3
    # The seed papers' distillation methods (drd_jax/distillation/terms.py).
    c.pixel_kd_weight = 0.0
    c.pair_kd_weight = 0.0
    c.pair_kd_node_scale = 0.5
    c.holistic_kd_weight = 0.0
    c.critic_learning_rate = 4e-4
    c.critic_gp_weight = 10.0
    c.adaptation_weight = 0.0
    c.affinity_weight = 0.0
    c.kd_feature_layer = "fc7"
    c.ka_code_features = 256
    c.ka_autoencoder_steps = 2000
    c.ka_autoencoder_learning_rate = 1e-3
    c.depth_aware_layers = "all"
    c.width = 1.0
    c.dropout_rate = 0.5
    c.dtype = "float32"
    # Optimisation.
    c.optimizer = "sgd"
    c.learning_rate = 2.5e-4
    c.momentum = 0.9
    c.weight_decay = 4e-4
    c.lr_power = 0.9
    c.batch_size = 1
    c.num_train_steps = 100_000
    c.seed = 0
    # Execution.
    c.parallel = "jit"
    c.num_devices = 0
    c.stop_after_steps = 0
    c.progress_bar = True
    c.write_curves = True
    c.divergence_factor = 100.0
    # Logging, evaluation, checkpoints.
    c.log_every_steps = 100
    c.eval_every_steps = 0
    c.eval_batch_size = 0
    c.eval_pad_to = (0, 0)
    c.checkpoint_every_steps = 2000
    c.max_checkpoints_to_keep = 3
    return c
