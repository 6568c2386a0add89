"""Patch discriminators and adversarial loss helpers (paper Sec. 2, 3.1.1).

`PatchDiscriminator2D` is the pix2pix `NLayerDiscriminator` used by LDM/taming
for the image autoencoder; `PatchDiscriminator3D` is the paper's patch-wise
temporal discriminator built from 3D convolutions, used to fine-tune the
temporal decoder. Both return raw (pre-sigmoid) patch logits.

Normalisation is GroupNorm (or none), never BatchNorm: BatchNorm keeps running
statistics (mutable state) and couples the examples of a batch, which breaks
the pure `init`/`apply` convention and sharded-vs-single-device parity.

Losses are pure functions of logits and gradients, as in taming's
`LPIPSWithDiscriminator`: `hinge_d_loss`, `vanilla_d_loss`,
`generator_adv_loss`, `adaptive_weight` and `adopt_weight`.

The 3D convolutions are `layers.FrameTapConv`: a sum over the kernel's time
taps of 2D convolutions, with `nn.Conv`'s parameters. XLA's CPU backend takes
the gradient of a strided 3D convolution through a slow generic path (974 ms vs
2.7 ms for the first layer at batch 8 x 8 frames of 32x32; bench/HISTORY.md,
"Quickstart: adversarial steps and one-run compiles").
"""

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from videoldm.models import layers

_NORMS = ('group', 'none')
_KERNEL_INIT = nn.initializers.normal(0.02)  # pix2pix / taming `weights_init`.
_LEAKY_SLOPE = 0.2


def _check_norm(norm: str) -> None:
  if norm not in _NORMS:
    raise ValueError(f'Unknown discriminator norm {norm!r}; expected one of {_NORMS}.')


def _norm_layer(norm: str, channels: int, name: str):
  """GroupNorm with the largest group count <= 32 dividing `channels`."""
  if norm == 'none':
    return lambda h: h
  return nn.GroupNorm(num_groups=math.gcd(32, channels), epsilon=1e-5, name=name)


def _layer_channels(base_channels: int, num_layers: int) -> list[int]:
  """Channels of the pix2pix stack: base * min(2**n, 8), n = 0..num_layers."""
  return [base_channels * min(2**n, 8) for n in range(num_layers + 1)]


def _conv_out_size(size: int, kernel: int, stride: int, pad: int) -> int:
  return (size + 2 * pad - kernel) // stride + 1


def _spatial_out_size(size: int, num_layers: int) -> int:
  """Side of the patch grid: `num_layers` stride-2 convs, then two stride-1."""
  for _ in range(num_layers):
    size = _conv_out_size(size, 4, 2, 1)
  return _conv_out_size(_conv_out_size(size, 4, 1, 1), 4, 1, 1)


def _check_input(x: jax.Array, ndim: int, layout: str, num_layers: int) -> None:
  if x.ndim != ndim:
    raise ValueError(f'Discriminator input has shape {x.shape}; expected {layout}.')
  height, width = x.shape[-3], x.shape[-2]
  if min(_spatial_out_size(height, num_layers), _spatial_out_size(width, num_layers)) < 1:
    raise ValueError(
        f'Discriminator input of {height}x{width} pixels is too small for '
        f'num_layers={num_layers}; use larger frames or fewer layers.')


class PatchDiscriminator2D(nn.Module):
  """pix2pix NLayerDiscriminator on images `(b, h, w, c)` -> logits `(b, h', w', 1)`.

  Layers: conv 4x4/2 + LeakyReLU(0.2); `num_layers - 1` x [conv 4x4/2 + norm +
  LeakyReLU]; conv 4x4/1 + norm + LeakyReLU; conv 4x4/1 -> 1 channel. All
  convs pad by 1 (as in PyTorch), so a 256x256 input with 3 layers gives 30x30.
  Parameter names: `conv_in`, `convs_{i}` / `norms_{i}`, `conv_out`.
  """

  base_channels: int = 64
  num_layers: int = 3
  norm: str = 'group'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _check_norm(self.norm)
    _check_input(x, 4, '(b, h, w, c)', self.num_layers)
    channels = _layer_channels(self.base_channels, self.num_layers)
    use_bias = self.norm == 'none'
    pad = ((1, 1), (1, 1))
    h = nn.Conv(channels[0], (4, 4), strides=(2, 2), padding=pad,
                kernel_init=_KERNEL_INIT, name='conv_in')(x)
    h = nn.leaky_relu(h, _LEAKY_SLOPE)
    for n in range(1, self.num_layers + 1):
      stride = 2 if n < self.num_layers else 1
      h = nn.Conv(channels[n], (4, 4), strides=(stride, stride), padding=pad,
                  use_bias=use_bias, kernel_init=_KERNEL_INIT, name=f'convs_{n - 1}')(h)
      h = _norm_layer(self.norm, channels[n], f'norms_{n - 1}')(h)
      h = nn.leaky_relu(h, _LEAKY_SLOPE)
    return nn.Conv(1, (4, 4), padding=pad, kernel_init=_KERNEL_INIT, name='conv_out')(h)


class PatchDiscriminator3D(nn.Module):
  """Patch-wise temporal discriminator on videos `(b, f, h, w, c)` (paper Sec. 3.1.1).

  The 2D stack with 3D convolutions of kernel `(time_kernel, 4, 4)`; time is
  padded by `time_kernel // 2`, so any frame count works (f = 1 included).
  A spatially downsampling layer also halves time (stride 2) only while the
  current frame count is at least `min_frames_for_time_stride` (default 4);
  otherwise its time stride is 1, so short clips keep >= 2 frames of
  spatio-temporal patches. Returns logits `(b, f', h', w', 1)`. Parameter names
  match `PatchDiscriminator2D`; kernel shapes do not depend on `f`.
  """

  base_channels: int = 64
  num_layers: int = 3
  norm: str = 'group'
  time_kernel: int = 3
  min_frames_for_time_stride: int = 4

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _check_norm(self.norm)
    if self.time_kernel < 1 or self.time_kernel % 2 == 0:
      raise ValueError(f'time_kernel={self.time_kernel} must be a positive odd number.')
    _check_input(x, 5, '(b, f, h, w, c)', self.num_layers)
    channels = _layer_channels(self.base_channels, self.num_layers)
    use_bias = self.norm == 'none'
    time_pad = self.time_kernel // 2
    kernel = (self.time_kernel, 4, 4)
    pad = ((time_pad, time_pad), (1, 1), (1, 1))
    frames = x.shape[1]
    conv = functools.partial(layers.FrameTapConv, kernel_init=_KERNEL_INIT)

    def time_stride(spatial_stride: int) -> int:
      return 2 if spatial_stride == 2 and frames >= self.min_frames_for_time_stride else 1

    stride = time_stride(2)
    h = conv(channels[0], kernel, strides=(stride, 2, 2), padding=pad, name='conv_in')(x)
    frames = _conv_out_size(frames, self.time_kernel, stride, time_pad)
    h = nn.leaky_relu(h, _LEAKY_SLOPE)
    for n in range(1, self.num_layers + 1):
      spatial = 2 if n < self.num_layers else 1
      stride = time_stride(spatial)
      h = conv(channels[n], kernel, strides=(stride, spatial, spatial), padding=pad,
               use_bias=use_bias, name=f'convs_{n - 1}')(h)
      frames = _conv_out_size(frames, self.time_kernel, stride, time_pad)
      h = _norm_layer(self.norm, channels[n], f'norms_{n - 1}')(h)
      h = nn.leaky_relu(h, _LEAKY_SLOPE)
    return conv(1, kernel, padding=pad, name='conv_out')(h)


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  """0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake)))."""
  loss_real = jnp.mean(jax.nn.relu(1.0 - logits_real))
  loss_fake = jnp.mean(jax.nn.relu(1.0 + logits_fake))
  return 0.5 * (loss_real + loss_fake)


def vanilla_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  """0.5 * (mean(softplus(-real)) + mean(softplus(fake))): the non-saturating GAN loss."""
  return 0.5 * (jnp.mean(jax.nn.softplus(-logits_real)) + jnp.mean(jax.nn.softplus(logits_fake)))


def generator_adv_loss(logits_fake: jax.Array) -> jax.Array:
  """The generator's adversarial loss, -mean(logits_fake)."""
  return -jnp.mean(logits_fake)


def _global_norm(tree: Any) -> jax.Array:
  leaves = jax.tree_util.tree_leaves(tree)
  return jnp.sqrt(sum(jnp.sum(jnp.square(leaf.astype(jnp.float32))) for leaf in leaves))


def adaptive_weight(nll_grads: Any, g_grads: Any, max_weight: float = 1e4,
                    eps: float = 1e-4) -> jax.Array:
  """Balances the adversarial term against the reconstruction term (taming/LDM).

  `||grad nll|| / (||grad g|| + eps)`, clipped to [0, max_weight] and
  stop-gradient'd. Both gradients are taken by the caller w.r.t. the decoder's
  last layer (arrays or pytrees; pytrees use their global L2 norm). The caller
  multiplies the result by its configured discriminator weight.
  """
  weight = _global_norm(nll_grads) / (_global_norm(g_grads) + eps)
  return jax.lax.stop_gradient(jnp.clip(weight, 0.0, max_weight))


def adopt_weight(weight: Any, step: Any, threshold: Any, value: float = 0.0) -> jax.Array:
  """`value` before `step` reaches `threshold` (discriminator start), else `weight`; jit-safe."""
  return jnp.where(jnp.asarray(step) < threshold, value, weight)

