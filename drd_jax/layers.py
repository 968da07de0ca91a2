"""Flax Linen layers built on the depth-aware operators.

``DepthAwareConv`` has exactly the parameters of ``flax.linen.Conv`` (``kernel`` of shape
(kh, kw, Cin, features) and ``bias`` of shape (features,)), so a network made of them can be applied
as a depth-aware teacher and as a plain student with one and the same param tree.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from drd_jax import ops
from drd_jax.ops.windows import as_pair, resolve_padding

PaddingLike = str | int | Sequence[int] | Sequence[tuple[int, int]]

# Kaiming/He normal for ReLU networks trained from scratch (a VGG without batch norm needs it).
he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def _conv_padding(padding: PaddingLike):
    """``nn.Conv``-style padding (string, int, per-axis ints or pairs) in resolve_padding form."""
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    if not isinstance(padding, str):
        pads = tuple(padding)
        if len(pads) == 2 and all(isinstance(p, int) for p in pads):
            return ((pads[0], pads[0]), (pads[1], pads[1]))
    return padding


class DepthAwareConv(nn.Module):
    """A 2-D convolution, depth-aware (docs/method.md, D-Conv) when configured so and given depth.

    Attributes:
      features: number of output channels Cout.
      kernel_size: (kh, kw); odd sizes when the layer is depth-aware.
      strides: (sh, sw).
      padding: 'SAME', 'VALID', an int, or ((lo, hi), (lo, hi)), as ``nn.Conv``.
      kernel_dilation: (dh, dw); the depth offsets use the same dilation.
      use_bias: add a bias after the (depth-weighted) sum.
      depth_aware: if False, or if ``depth`` is None at call time, this is a plain ``nn.Conv``.
      alpha: depth similarity sharpness in 1/metre (H = exp(-alpha·|ΔD|)).
      implementation: ``depth_aware_conv`` implementation (one of
        ``drd_jax.ops.depth_conv.IMPLEMENTATIONS``: 'fast', 'pallas', 'auto', ...).
      dtype: computation dtype (None: inferred from inputs and params).
      param_dtype: dtype of ``kernel`` and ``bias``.
    """

    features: int
    kernel_size: int | Sequence[int] = (3, 3)
    strides: int | Sequence[int] = (1, 1)
    padding: PaddingLike = "SAME"
    kernel_dilation: int | Sequence[int] = (1, 1)
    use_bias: bool = True
    depth_aware: bool = True
    alpha: float = 8.3
    implementation: str = "fast"
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32
    kernel_init: nn.initializers.Initializer = he_normal
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array, depth: jax.Array | None = None) -> jax.Array:
        """Applies the convolution.

        Args:
          x: (N, H, W, Cin) features.
          depth: (N, H, W) or (N, H, W, 1) depth in metres aligned with ``x`` (0 = no reading);
            ignored unless ``depth_aware``.

        Returns:
          (N, H', W', features), H' and W' as ``lax.conv_general_dilated`` gives them.
        """
        if x.ndim != 4:
            raise ValueError(f"{self.name}: x must be (N, H, W, C), got shape {x.shape}")
        kh, kw = as_pair(self.kernel_size, "kernel_size")
        strides = as_pair(self.strides, "strides")
        dilation = as_pair(self.kernel_dilation, "kernel_dilation")
        padding = resolve_padding(
            _conv_padding(self.padding), x.shape[1:3], (kh, kw), strides=strides, dilation=dilation
        )
        kernel = self.param(
            "kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features), self.param_dtype
        )
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)

        if self.depth_aware and depth is not None:
            y = ops.depth_aware_conv(
                x,
                depth,
                kernel,
                alpha=self.alpha,
                strides=strides,
                padding=padding,
                dilation=dilation,
                implementation=self.implementation,
            )
        else:
            y = jax.lax.conv_general_dilated(
                x,
                kernel,
                window_strides=strides,
                padding=padding,
                rhs_dilation=dilation,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
            )
        if bias is not None:
            y = y + bias
        return y
