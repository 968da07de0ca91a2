"""Small auxiliary networks of the distillation baselines.

* ``ScoreMapCritic`` (with ``SelfAttention2D``): the WGAN-GP critic of the holistic term of
  Structured Knowledge Distillation (Liu et al., CVPR 2019), which scores whole segmentation maps.
* ``FeatureAutoEncoder`` and ``FeatureAdapter``: Knowledge Adaptation (He et al., CVPR 2019). The
  auto-encoder compresses the teacher's features into a code, the adapter maps the student's
  features into that code space.

All modules take NHWC inputs, compute in ``dtype`` (params stay float32) and have no layer that
mixes the examples of a batch (no batch norm): each example's output depends on that example only,
which the WGAN-GP gradient penalty needs.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from drd_jax.layers import he_normal

_lecun_normal = nn.initializers.lecun_normal()

__all__ = ["FeatureAdapter", "FeatureAutoEncoder", "ScoreMapCritic", "SelfAttention2D"]


def _check_nhwc(name: str, x: jax.Array, channels: int | None = None) -> None:
    """Raises ValueError unless ``x`` is (N, H, W, C) with H, W, C ≥ 1 (and C == ``channels``)."""
    if x.ndim != 4:
        raise ValueError(f"{name}: input must be (N, H, W, C), got shape {x.shape}")
    if min(x.shape[1:]) < 1:
        raise ValueError(f"{name}: H, W and C must be at least 1, got shape {x.shape}")
    if channels is not None and x.shape[-1] != channels:
        raise ValueError(
            f"{name}: input must have {channels} channels, got {x.shape[-1]} (shape {x.shape})"
        )


def _conv(
    features: int,
    kernel_size: int,
    name: str,
    dtype: jnp.dtype | None,
    strides: int = 1,
    kernel_init: nn.initializers.Initializer = _lecun_normal,
) -> nn.Conv:
    return nn.Conv(
        features,
        (kernel_size, kernel_size),
        strides=(strides, strides),
        padding="SAME",
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=kernel_init,
        name=name,
    )


class SelfAttention2D(nn.Module):
    """SAGAN self-attention over the spatial positions of a feature map (Zhang et al., 2019).

    ``out = x + gamma · softmax(Q Kᵀ) V`` with Q, K, V 1×1 convs of ``x`` (Q and K to
    max(1, C // reduction) channels, V to C), the softmax taken over the key positions, and
    ``gamma`` a learnable scalar initialised to 0, so the block is the identity at init.

    Attributes:
      reduction: channel reduction of the query and key projections (SAGAN: 8).
      dtype: computation dtype (e.g. jnp.bfloat16); params stay float32. The softmax is computed in
        float32.
    """

    reduction: int = 8
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the attention block.

        Args:
          x: (N, H, W, C) features.

        Returns:
          (N, H, W, C), ``x`` plus the gamma-scaled attention output.
        """
        _check_nhwc(self.name or "SelfAttention2D", x)
        if self.reduction < 1:
            raise ValueError(f"reduction must be at least 1, got {self.reduction}")
        n, h, w, c = x.shape
        qk_features = max(1, c // self.reduction)
        q = _conv(qk_features, 1, "query", self.dtype)(x).reshape(n, h * w, qk_features)
        k = _conv(qk_features, 1, "key", self.dtype)(x).reshape(n, h * w, qk_features)
        v = _conv(c, 1, "value", self.dtype)(x).reshape(n, h * w, c)
        energy = jnp.einsum("nqd,nkd->nqk", q, k)  # (N, query positions, key positions)
        attention = jax.nn.softmax(energy.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = jnp.einsum("nqk,nkc->nqc", attention, v).reshape(n, h, w, c)
        gamma = self.param("gamma", nn.initializers.zeros_init(), (), jnp.float32)
        x, out, gamma = nn.dtypes.promote_dtype(x, out, gamma, dtype=self.dtype)
        return x + gamma * out


class ScoreMapCritic(nn.Module):
    """WGAN-GP critic of SKD's holistic distillation term: one realness score per score map.

    After SKD's SAGAN-style discriminator, without spectral normalisation (the WGAN-GP gradient
    penalty supplies the Lipschitz constraint)::

      for each width in features: 4×4 conv / 2 ('SAME') → width, leaky ReLU
        (+ SelfAttention2D after each of the last two stages when ``attention``)
      3×3 conv → 1, mean over space → (N,)

    'SAME' stride-2 convs give ceil(H / 2) × ceil(W / 2), so any H, W ≥ 1 works (e.g. 8×8 maps
    end at 1×1). There is no batch-dependent layer: each score depends on its own example only.

    Attributes:
      features: widths of the stride-2 conv stages.
      negative_slope: slope of the leaky ReLU for negative inputs.
      attention: add self-attention after the last two conv stages.
      dtype: computation dtype (e.g. jnp.bfloat16); params stay float32.
    """

    features: Sequence[int] = (64, 128, 256, 512)
    negative_slope: float = 0.1
    attention: bool = True
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, score_maps: jax.Array) -> jax.Array:
        """Scores segmentation maps.

        Args:
          score_maps: (N, H, W, K) class probabilities (the caller passes the softmax of the
            segmentation logits, of the teacher for "real" and of the student for "fake").

        Returns:
          (N,) float32 critic scores, higher = more teacher-like.
        """
        _check_nhwc("ScoreMapCritic", score_maps)
        if len(self.features) == 0:
            raise ValueError("ScoreMapCritic.features must name at least one conv stage")
        x = score_maps
        num_stages = len(self.features)
        for i, width in enumerate(self.features):
            x = _conv(width, 4, f"conv_{i}", self.dtype, strides=2)(x)
            x = nn.leaky_relu(x, self.negative_slope)
            if self.attention and i >= num_stages - 2:
                x = SelfAttention2D(dtype=self.dtype, name=f"attention_{i}")(x)
        x = _conv(1, 3, "final", self.dtype)(x)
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3))


class FeatureAutoEncoder(nn.Module):
    """Knowledge Adaptation's auto-encoder of the teacher's features.

    Encoder: 3×3 conv → hidden, ReLU, 3×3 conv → code_features, ReLU. Decoder: 3×3 conv → hidden,
    ReLU, 3×3 conv → features (linear). Stride 1 and 'SAME' padding throughout: the code keeps the
    feature map's resolution, so it aligns pixel for pixel with the student's (adapted) features.

    ``encode``, ``decode`` and ``__call__`` can each be applied, e.g.
    ``model.apply(variables, x, method=FeatureAutoEncoder.encode)``.

    Attributes:
      features: channels of the input features (and of the reconstruction).
      code_features: channels of the code.
      hidden_features: channels of the hidden layers (None: the mean of ``features`` and
        ``code_features``, rounded down, at least 1).
      dtype: computation dtype (e.g. jnp.bfloat16); params stay float32.
    """

    features: int
    code_features: int
    hidden_features: int | None = None
    dtype: jnp.dtype | None = None

    def setup(self):
        if self.features < 1 or self.code_features < 1:
            raise ValueError(
                f"features and code_features must be at least 1, got {self.features} and "
                f"{self.code_features}"
            )
        hidden = self.hidden_features
        if hidden is None:
            hidden = max(1, (self.features + self.code_features) // 2)
        self.encoder_conv1 = _conv(hidden, 3, "encoder_conv1", self.dtype, kernel_init=he_normal)
        self.encoder_conv2 = _conv(
            self.code_features, 3, "encoder_conv2", self.dtype, kernel_init=he_normal
        )
        self.decoder_conv1 = _conv(hidden, 3, "decoder_conv1", self.dtype, kernel_init=he_normal)
        self.decoder_conv2 = _conv(self.features, 3, "decoder_conv2", self.dtype)

    def encode(self, x: jax.Array) -> jax.Array:
        """Code of the features.

        Args:
          x: (N, H, W, features) teacher features.

        Returns:
          (N, H, W, code_features) non-negative code.
        """
        _check_nhwc("FeatureAutoEncoder.encode", x, self.features)
        return nn.relu(self.encoder_conv2(nn.relu(self.encoder_conv1(x))))

    def decode(self, code: jax.Array) -> jax.Array:
        """Reconstruction of the features from a code.

        Args:
          code: (N, H, W, code_features).

        Returns:
          (N, H, W, features) reconstructed features (linear output).
        """
        _check_nhwc("FeatureAutoEncoder.decode", code, self.code_features)
        return self.decoder_conv2(nn.relu(self.decoder_conv1(code)))

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Encodes and decodes.

        Args:
          x: (N, H, W, features) teacher features.

        Returns:
          (reconstruction (N, H, W, features), code (N, H, W, code_features)).
        """
        code = self.encode(x)
        return self.decode(code), code


class FeatureAdapter(nn.Module):
    """Knowledge Adaptation's student-side adapter: student features → the teacher's code space.

    ``num_layers`` 3×3 convs (stride 1, 'SAME'), ReLU between them, linear last layer.

    Attributes:
      features: output channels (the auto-encoder's ``code_features``).
      num_layers: number of convs, at least 1.
      hidden_features: channels of the hidden convs (None: ``features``).
      dtype: computation dtype (e.g. jnp.bfloat16); params stay float32.
    """

    features: int
    num_layers: int = 3
    hidden_features: int | None = None
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Adapts student features.

        Args:
          x: (N, H, W, C) student features.

        Returns:
          (N, H, W, features).
        """
        _check_nhwc("FeatureAdapter", x)
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {self.num_layers}")
        hidden = self.features if self.hidden_features is None else self.hidden_features
        for i in range(self.num_layers - 1):
            x = nn.relu(_conv(hidden, 3, f"conv_{i}", self.dtype, kernel_init=he_normal)(x))
        return _conv(self.features, 3, f"conv_{self.num_layers - 1}", self.dtype)(x)
