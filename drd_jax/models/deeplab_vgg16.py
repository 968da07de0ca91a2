"""DeepLab-VGG16 (LargeFOV), as the depth-aware teacher and as the plain student
(docs/method.md, Model).

One module, one param tree: ``DeepLabVGG16(depth_aware=True)`` is the teacher (its 3×3 convs
weight each neighbour by exp(-α·|ΔD|)), ``DeepLabVGG16(depth_aware=False)`` the student; both create
the same parameters under VGG names (``conv1_1`` … ``conv5_3``, ``fc6``, ``fc7``, ``fc8``), so
parameter sharing is ``student.apply(teacher_variables, rgb)``.

Layout (output stride 8)::

  conv1_1 conv1_2 pool1(max 3×3/2)   64
  conv2_1 conv2_2 pool2(max 3×3/2)   128
  conv3_1..3_3    pool3(max 3×3/2)   256
  conv4_1..4_3    pool4(max 3×3/1)   512
  conv5_1..5_3 (dilation 2) pool5(max 3×3/1) [pool5a avg 3×3/1]   512
  fc6 (3×3, dilation 12) → 1024, dropout · fc7 (1×1) → 1024, dropout · fc8 (1×1) → classes
  bilinear upsampling to the input size (half-pixel centres, ``jax.image.resize``).

Depth travels with the features: every stride-2 pooling resizes it with ``ops.pool_depth`` (mean of
the valid pixels in the window by default, window-centre 'nearest' as an option).

Intermediate features for feature distillation (pair-wise, affinity, knowledge adaptation) come
from the same forward pass: the model ``sow``s the ReLU outputs of ``FEATURE_LAYERS`` (before
dropout) into the ``'features'`` collection, which costs nothing unless the collection is mutable;
:func:`apply_with_features` returns them next to the logits.
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from drd_jax import ops
from drd_jax.layers import DepthAwareConv, he_normal

# (block, [(layer name, channels), ...]) of the VGG16 trunk; conv5_x use dilation 2.
VGG16_BLOCKS: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = (
    ("1", (("conv1_1", 64), ("conv1_2", 64))),
    ("2", (("conv2_1", 128), ("conv2_2", 128))),
    ("3", (("conv3_1", 256), ("conv3_2", 256), ("conv3_3", 256))),
    ("4", (("conv4_1", 512), ("conv4_2", 512), ("conv4_3", 512))),
    ("5", (("conv5_1", 512), ("conv5_2", 512), ("conv5_3", 512))),
)
FC_WIDTH = 1024
DEPTH_AWARE_LAYER_CHOICES = ("all", "block_first")
FEATURE_COLLECTION = "features"
# Layers whose (post-ReLU, pre-dropout) outputs are sown: stride 8, 512 / 1024 / 1024 channels at
# full width.
FEATURE_LAYERS = ("conv5_3", "fc6", "fc7")
_SOWN_SUFFIX = "_out"  # sown as '<layer>_out' (a sown name may not be a submodule's name)
_MAX_POOL_PAD = ((1, 1), (1, 1))


def depth_aware_layer_names(depth_aware_layers: str) -> tuple[str, ...]:
    """Names of the convs a teacher makes depth-aware.

    'all' (the paper: every 3×3 conv and fc6) or 'block_first' (the official Depth-aware CNN:
    conv1_1, conv2_1, conv3_1, conv4_1, conv5_1 and fc6). fc7 and fc8 are 1×1, and a 1×1 D-Conv is
    a plain conv.
    """
    if depth_aware_layers == "all":
        names = [name for _, layers in VGG16_BLOCKS for name, _ in layers]
    elif depth_aware_layers == "block_first":
        names = [layers[0][0] for _, layers in VGG16_BLOCKS]
    else:
        raise ValueError(
            f"depth_aware_layers must be one of {DEPTH_AWARE_LAYER_CHOICES}, "
            f"got {depth_aware_layers!r}"
        )
    return (*names, "fc6")


def scaled_width(channels: int, width: float) -> int:
    """Hidden width ``channels`` scaled by the ``width`` multiplier, at least 1."""
    return max(1, round(channels * width))


class DeepLabVGG16(nn.Module):
    """DeepLab-VGG16 LargeFOV; depth-aware teacher or plain student on the same param tree.

    Attributes:
      num_classes: K >= 1, the number of output channels of ``fc8``.
      width: multiplier of every hidden width, a finite number > 0 (1.0 = the paper's network;
        small values for CPU).
      depth_aware: teacher (True: depth-aware convs, needs ``depth``) or student (False).
      alpha: depth similarity sharpness, 1/metre.
      depth_aware_layers: 'all' or 'block_first' (see ``depth_aware_layer_names``).
      depth_aware_pooling: add Depth-aware CNN's ``pool5a`` as a depth-aware average pool in the
        teacher (a plain average pool that excludes padding in the student, so both agree for a
        constant depth map). Needs ``pool5a``.
      pool5a: add the 3×3/1 average pooling after pool5 (plain unless ``depth_aware_pooling``).
      depth_pool_method: how depth is resized at stride-2 poolings: 'valid_mean' or 'nearest'.
      dropout_rate: dropout after fc6 and fc7 when ``train``.
      conv_implementation: ``ops.depth_aware_conv`` implementation (one of
        ``drd_jax.ops.depth_conv.IMPLEMENTATIONS``: 'fast', 'pallas', 'auto', ...).
      dtype: computation dtype (e.g. jnp.bfloat16); params stay float32.

    Raises:
      ValueError: at construction, a ``num_classes`` that is not an integer >= 1 or a ``width``
        that is not a finite number > 0 (``DeepLabVGG16: <argument> must be ...``).
    """

    num_classes: int
    width: float = 1.0
    depth_aware: bool = False
    alpha: float = 8.3
    depth_aware_layers: str = "all"
    depth_aware_pooling: bool = False
    pool5a: bool = False
    depth_pool_method: str = "valid_mean"
    dropout_rate: float = 0.5
    conv_implementation: str = "fast"
    dtype: jnp.dtype | None = None

    def __post_init__(self):
        k = self.num_classes
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"DeepLabVGG16: num_classes must be an integer >= 1, got {k!r}")
        w = self.width
        ok = not isinstance(w, bool) and isinstance(w, int | float | np.integer | np.floating)
        if not (ok and math.isfinite(w) and w > 0):
            raise ValueError(f"DeepLabVGG16: width must be a finite number > 0, got {w!r}")
        super().__post_init__()

    def _conv(self, name: str, features: int, kernel_size: Sequence[int], dilation: int = 1):
        return DepthAwareConv(
            features=features,
            kernel_size=kernel_size,
            kernel_dilation=(dilation, dilation),
            padding="SAME",
            depth_aware=self.depth_aware
            and name in depth_aware_layer_names(self.depth_aware_layers),
            alpha=self.alpha,
            implementation=self.conv_implementation,
            dtype=self.dtype,
            kernel_init=nn.initializers.normal(0.01) if name == "fc8" else he_normal,
            name=name,
        )

    def _sow_feature(self, layer: str, x: jax.Array) -> None:
        # Not at init (variables stay {'params'}); the latest value replaces any stored one, so
        # stale values passed in with the variables are never returned.
        if not self.is_initializing():
            self.sow(
                FEATURE_COLLECTION,
                layer + _SOWN_SUFFIX,
                x,
                init_fn=lambda: None,
                reduce_fn=lambda _, new: new,
            )

    def _check_inputs(self, image: jax.Array, depth: jax.Array | None) -> jax.Array | None:
        if image.ndim != 4 or image.shape[-1] != 3:
            raise ValueError(f"image must be (N, H, W, 3), got shape {image.shape}")
        if self.depth_aware_pooling and not self.pool5a:
            raise ValueError("depth_aware_pooling=True needs pool5a=True")
        if self.depth_pool_method not in ("valid_mean", "nearest"):
            raise ValueError(
                "depth_pool_method must be 'valid_mean' or 'nearest', "
                f"got {self.depth_pool_method!r}"
            )
        depth_aware_layer_names(self.depth_aware_layers)  # validates the choice
        if not self.depth_aware:
            return None
        if depth is None:
            raise ValueError(
                "a depth-aware DeepLabVGG16 (teacher) needs depth; apply the same variables with "
                "DeepLabVGG16(depth_aware=False) to run it on RGB alone"
            )
        if depth.ndim == 4 and depth.shape[-1] == 1:
            depth = depth[..., 0]
        if depth.ndim != 3 or depth.shape != image.shape[:3]:
            raise ValueError(
                f"depth must be (N, H, W) or (N, H, W, 1) matching image {image.shape[:3]}, "
                f"got shape {depth.shape}"
            )
        return depth.astype(jnp.float32)

    @nn.compact
    def __call__(
        self,
        image: jax.Array,
        depth: jax.Array | None = None,
        train: bool = False,
        image_size: jax.Array | None = None,
    ) -> jax.Array:
        """Per-pixel class logits.

        Args:
          image: (N, H, W, 3) normalised RGB, float.
          depth: (N, H, W) or (N, H, W, 1) metres, 0 = no reading; required by the teacher,
            ignored by the student.
          train: enables dropout (needs a 'dropout' rng).
          image_size: optional (N, 2) int, each image's real (height, width) when images of
            several sizes are padded at the bottom and right into one (H, W) canvas (one compiled
            program for them all). Every layer then sees zeros outside the real part, as 'SAME'
            padding shows the unpadded image, and the logits are upsampled per image, so that
            the real part's logits equal (to float rounding) those of the unpadded image.
            Outside it the logits are 0. None: every image fills the canvas.

        Returns:
          (N, H, W, num_classes) logits at the input resolution.
        """
        depth = self._check_inputs(image, depth)
        sizes = self._check_image_size(image, image_size)
        x, depth = _keep_real(image, sizes), _keep_real(depth, sizes)
        for block, layers in VGG16_BLOCKS:
            dilation = 2 if block == "5" else 1
            for name, channels in layers:
                x = self._conv(name, scaled_width(channels, self.width), (3, 3), dilation)(x, depth)
                x = _keep_real(nn.relu(x), sizes)
                if name in FEATURE_LAYERS:
                    self._sow_feature(name, x)
            stride = 2 if block in ("1", "2", "3") else 1
            x = nn.max_pool(x, (3, 3), strides=(stride, stride), padding=_MAX_POOL_PAD)
            if stride == 2:
                sizes = None if sizes is None else ops.pooled_sizes(sizes)
                if depth is not None:
                    depth = ops.pool_depth(
                        depth,
                        window=(3, 3),
                        strides=(2, 2),
                        padding=_MAX_POOL_PAD,
                        method=self.depth_pool_method,
                    )
            x, depth = _keep_real(x, sizes), _keep_real(depth, sizes)
        if self.pool5a:
            x = _keep_real(self._pool5a(x, depth, sizes), sizes)

        x = nn.relu(self._conv("fc6", scaled_width(FC_WIDTH, self.width), (3, 3), 12)(x, depth))
        x = _keep_real(x, sizes)
        self._sow_feature("fc6", x)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.relu(self._conv("fc7", scaled_width(FC_WIDTH, self.width), (1, 1))(x))
        self._sow_feature("fc7", x)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        logits = self._conv("fc8", self.num_classes, (1, 1))(x)
        n, h, w, _ = image.shape
        if sizes is None:
            return jax.image.resize(logits, (n, h, w, self.num_classes), method="bilinear")
        return ops.resize_bilinear_to_sizes(logits, sizes, image_size, (h, w))

    def _pool5a(self, x, depth, sizes):
        """The optional 3×3/1 average pool after pool5 (depth-aware in a teacher if asked);
        padding and pixels outside the real image count in neither sum."""
        where = None if sizes is None else ops.valid_mask(sizes, x.shape[1:3])
        if self.depth_aware_pooling and depth is not None:
            return ops.depth_aware_avg_pool(
                x,
                depth,
                window=(3, 3),
                strides=(1, 1),
                padding=_MAX_POOL_PAD,
                alpha=self.alpha,
                where=where,
            )
        if where is None:
            return nn.avg_pool(x, (3, 3), padding=_MAX_POOL_PAD, count_include_pad=False)
        total = nn.avg_pool(x, (3, 3), padding=_MAX_POOL_PAD)  # x is already 0 outside
        count = nn.avg_pool(where.astype(x.dtype), (3, 3), padding=_MAX_POOL_PAD)
        return total / jnp.maximum(count, jnp.finfo(x.dtype).tiny)

    def _check_image_size(self, image: jax.Array, image_size: jax.Array | None):
        if image_size is None:
            return None
        if jnp.shape(image_size) != (image.shape[0], 2):
            raise ValueError(
                f"image_size must be (N, 2) = ({image.shape[0]}, 2) real (height, width) per "
                f"image, got shape {jnp.shape(image_size)}"
            )
        return jnp.asarray(image_size, jnp.int32)


def _keep_real(x: jax.Array | None, sizes: jax.Array | None) -> jax.Array | None:
    """``x`` (N, H, W[, C]) with 0 outside each image's real region; as is if ``sizes`` is None."""
    if x is None or sizes is None:
        return x
    mask = ops.valid_mask(sizes, x.shape[1:3])
    return jnp.where(mask if x.ndim == 4 else mask[..., 0], x, jnp.zeros((), x.dtype))


def feature_channels(layer: str, width: float) -> int:
    """Channels of the sown feature ``layer`` (one of ``FEATURE_LAYERS``) at ``width``."""
    if layer not in FEATURE_LAYERS:
        raise ValueError(f"feature layer must be one of {FEATURE_LAYERS}, got {layer!r}")
    channels = dict(VGG16_BLOCKS[-1][1]).get(layer, FC_WIDTH)  # conv5_3, else fc6 / fc7
    return scaled_width(channels, width)


def apply_with_features(
    apply_fn,
    variables,
    image: jax.Array,
    depth: jax.Array | None = None,
    *,
    train: bool = False,
    rngs=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``(logits, features)`` of one forward pass.

    Args:
      apply_fn: ``model.apply`` of a :class:`DeepLabVGG16` (or a train state's ``apply_fn``).
      variables, image, depth, train, rngs: as for ``model.apply``.

    Returns:
      The logits (N, H, W, K) and ``{layer: (N, H/8, W/8, C)}`` for every layer of
      ``FEATURE_LAYERS`` (post-ReLU, before dropout; spatial size rounded up at each stride-2
      pooling).
    """
    logits, state = apply_fn(
        variables, image, depth, train=train, rngs=rngs, mutable=[FEATURE_COLLECTION]
    )
    sown = state[FEATURE_COLLECTION]
    return logits, {name: sown[name + _SOWN_SUFFIX] for name in FEATURE_LAYERS}


def apply_with_feature_layer(
    apply_fn,
    variables,
    image: jax.Array,
    depth: jax.Array | None = None,
    *,
    layer: str | None,
    train: bool = False,
    rngs=None,
) -> tuple[jax.Array, jax.Array | None]:
    """``(logits, features of layer)`` of one forward pass; with ``layer=None`` a plain
    ``apply_fn`` (nothing sown) and ``(logits, None)``. Arguments as :func:`apply_with_features`.
    """
    if layer is None:
        return apply_fn(variables, image, depth, train=train, rngs=rngs), None
    logits, features = apply_with_features(
        apply_fn, variables, image, depth, train=train, rngs=rngs
    )
    return logits, features[layer]
