"""The fields every training config has, at the paper's settings (full-width DeepLab-VGG16).

Dataset configs (``nyuv2.py``, ``sunrgbd.py``, ``synthetic.py``) start from :func:`get_base_config`
and change what differs. Every field is checked by ``drd_jax.config.validate_config``; a wrong value
raises ``ValueError`` naming it (``config.<field>: ...``).
"""

import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
    """Paper defaults: SGD lr 2.5e-4, momentum 0.9, wd 4e-4, poly 0.9, batch 1, α 8.3, β 0.9.

    The weight decay, poly power and augmentation follow the Depth-aware CNN training script (the
    paper names only the learning rate, batch size, α and β); see ``../shared/docs/ANCHORS.md``.
    """
    c = ml_collections.ConfigDict()
    # Data.
    c.dataset = ""  # '<builder>/<config>', e.g. 'nyuv2/40'
    c.data_dir = ""  # '' = $DRD_DATA_DIR or ~/tensorflow_datasets
    c.crop_size = (480, 640)  # (height, width) of training crops (padded with void if larger)
    c.scale_range = (0.76, 1.75)  # random rescale before the crop
    c.flip_prob = 0.5
    c.color_jitter = 0.0
    c.num_workers = 0  # grain worker processes (0 = in-process threads)
    # Method.
    c.mode = "teacher"  # 'baseline' | 'teacher' | 'student'
    c.init = "scratch"  # 'scratch' | 'teacher' (parameter sharing) | 'imagenet'
    c.teacher_workdir = ""  # student: the teacher run's workdir
    c.teacher_checkpoint = "best"  # 'best' (by mean_iou) or 'latest'
    c.pretrained_path = ""  # init='imagenet': VGG16 weights (.h5 / .pth / .npz)
    c.vtce_weight = 1.0  # student: 0 gives BL+PS (with init='teacher')
    c.beta = 0.9
    c.alpha = 8.3
    # Other distillation methods (student mode; weight 0 = off; drd_jax/distillation/terms.py). The
    # upstream weights, for reference: pixel 10, pair 0.5, holistic 0.1 (Structured KD);
    # adaptation 50 (a public Knowledge Adaptation port); affinity 1.
    c.pixel_kd_weight = 0.0
    c.pair_kd_weight = 0.0
    c.pair_kd_node_scale = 0.5  # node window = this fraction of the feature map (SKD: 0.5)
    c.holistic_kd_weight = 0.0
    c.critic_learning_rate = 4e-4  # the holistic loss's WGAN-GP critic (Adam, β = 0.9, 0.99)
    c.critic_gp_weight = 10.0
    c.adaptation_weight = 0.0  # knowledge adaptation (auto-encoder codes + student adapter)
    c.affinity_weight = 0.0  # on the KA codes when adaptation_weight > 0, else on the features
    c.kd_feature_layer = "fc7"  # 'conv5_3' | 'fc6' | 'fc7': features of the feature losses
    c.ka_code_features = 256  # auto-encoder code channels (scaled by width)
    c.ka_autoencoder_steps = 2000  # auto-encoder pre-training steps on the teacher's features
    c.ka_autoencoder_learning_rate = 1e-3  # Adam
    c.depth_aware_layers = "all"  # 'all' (the paper) | 'block_first' (Depth-aware CNN's choice)
    c.width = 1.0
    c.dropout_rate = 0.5
    # The network's compute dtype: 'float32' | 'bfloat16' (params, optimiser state and losses
    # stay float32).
    c.dtype = "float32"
    # Optimisation.
    c.optimizer = "sgd"  # 'sgd' | 'adam'
    c.learning_rate = 2.5e-4
    c.momentum = 0.9
    c.weight_decay = 4e-4
    c.lr_power = 0.9
    c.batch_size = 1
    c.num_train_steps = 100_000
    c.seed = 0
    # Execution (left out of the config fingerprint: they do not change what is computed).
    c.parallel = "jit"  # 'jit' (NamedSharding over a 'data' mesh) | 'pmap'
    c.num_devices = 0  # 0 = all devices
    c.stop_after_steps = 0  # > 0: save and stop at this step (resume later with the same config)
    c.progress_bar = True
    c.write_curves = True  # <workdir>/curves.png when the run ends
    # Stop when the cross-entropy exceeds this × its median over the last 100 steps (a loss that
    # explodes while finite); nothing of that step is saved. 0 = off.
    c.divergence_factor = 100.0
    # Logging, evaluation, checkpoints.
    c.log_every_steps = 100
    c.eval_every_steps = 0  # 0 = evaluate only at the end
    c.eval_batch_size = 0  # 0 = one image per device
    # Evaluation pads every test image at the bottom/right into one (height, width) canvas, so one
    # program is compiled for a split of mixed sizes; the network sees zeros outside each image,
    # so its predictions there are those of the unpadded image. (0, 0): the split's largest size,
    # found by reading the split once, and no padding at all where every image has one size.
    c.eval_pad_to = (0, 0)
    c.checkpoint_every_steps = 2000
    c.max_checkpoints_to_keep = 3
    return c
