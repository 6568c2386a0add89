"""Spatial building blocks shared by the U-Net and the autoencoder.

Tensors are channels-last `(b, h, w, c)`. Submodule names mirror diffusers'
PyTorch names (`norm1`, `conv1`, `time_emb_proj`, ...) so state dicts convert
mechanically (see `videoldm.convert.common`). Parameters are float32; `dtype`
is the computation dtype.
"""

import math
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from videoldm.models import conv

# PyTorch `Conv2d(kernel_size=3, padding=1)` pads one pixel on every side, also
# with stride 2 (Flax 'SAME' would pad (0, 1) there), so padding is explicit.
_PAD_ONE = ((1, 1), (1, 1))


def timestep_embedding(timesteps: jax.Array, dim: int, flip_sin_to_cos: bool = True,
                       freq_shift: float = 0.0, max_period: float = 10000) -> jax.Array:
  """Sinusoidal embedding of (diffusion) times `(b,)` -> `(b, dim)` float32.

  Matches diffusers `get_timestep_embedding(..., downscale_freq_shift=freq_shift)`:
  frequencies `max_period ** (-i / (dim // 2 - freq_shift))`, `[sin, cos]`
  (or `[cos, sin]` when `flip_sin_to_cos`), zero-padded to an odd `dim`.
  """
  timesteps = jnp.asarray(timesteps)
  if timesteps.ndim != 1:
    raise ValueError(f'timesteps must have shape (b,), got shape {timesteps.shape}.')
  half = dim // 2
  exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32)
  frequencies = jnp.exp(exponent / (half - freq_shift))
  angles = timesteps.astype(jnp.float32)[:, None] * frequencies[None, :]  # (b, half)
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  embedding = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
  if dim % 2:
    embedding = jnp.pad(embedding, ((0, 0), (0, 1)))
  return embedding


def group_norm(groups: int, eps: float, dtype, name: str | None = None) -> nn.GroupNorm:
  """GroupNorm (PyTorch's, params `scale`/`bias`) with a one-pass variance.

  E[x^2] - E[x]^2 fuses both moments into one read of the activations: 12%
  faster on the SD-layout VAE decode (bench/RESULTS.md, figure 1); parity with
  diffusers stays within the tests' 1e-4 in float32.
  """
  return nn.GroupNorm(num_groups=groups, epsilon=eps, dtype=dtype,
                      use_fast_variance=True, name=name)


def conv3x3(features: int, dtype, name: str | None = None, strides: int = 1) -> conv.Conv2D:
  """3x3 convolution padded by one pixel on each side (PyTorch `padding=1`)."""
  return conv.Conv2D(features, (3, 3), strides=(strides, strides), padding=_PAD_ONE,
                     dtype=dtype, name=name)


def conv1x1(features: int, dtype, name: str | None = None) -> nn.Conv:
  """1x1 convolution (kernel shape `(1, 1, in, out)`, as PyTorch stores it)."""
  return nn.Conv(features, (1, 1), padding='VALID', dtype=dtype, name=name)


class FrameTapConv(nn.Module):
  """`nn.Conv` over videos `(b, f, h, w, c)` with kernel `(kt, kh, kw)`, run as 2D convs.

  Same parameters (`kernel` `(kt, kh, kw, c, features)`, `bias`), padding and
  strides as `nn.Conv`, so the two are interchangeable on a checkpoint. A
  `(kt, 1, 1)` kernel is one `(kt, 1)` conv over `b f (h w) c`. Otherwise output
  frame `i` sums, over taps `k`, the 2D conv of padded input frame
  `i * stride_t + k` with `kernel[k]`.
  XLA's CPU 3D convs run at under half its 2D rate and take strided gradients
  through a slow generic path (bench/HISTORY.md, "Temporal convs as 2D convs").
  """

  features: int
  kernel_size: tuple[int, int, int]
  strides: tuple[int, int, int] = (1, 1, 1)
  padding: tuple[tuple[int, int], ...] = ((0, 0), (0, 0), (0, 0))
  use_bias: bool = True
  kernel_init: Any = nn.initializers.lecun_normal()
  dtype: Any = None  # Computation dtype; None: the inputs' and params' promoted dtype.

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', self.kernel_init, (*self.kernel_size, x.shape[-1],
                                                     self.features))
    bias = (self.param('bias', nn.initializers.zeros, (self.features,))
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    (time_taps, *space), time_stride = self.kernel_size, self.strides[0]
    time_pad, space_pad = tuple(self.padding[0]), [tuple(pad) for pad in self.padding[1:]]
    frames = x.shape[1]
    out_frames = (frames + sum(time_pad) - time_taps) // time_stride + 1

    def conv2d(inputs, tap_kernel, strides, padding):  # float32 sums, rounded once.
      return jax.lax.conv_general_dilated(
          inputs, tap_kernel, strides, padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
          preferred_element_type=jnp.float32)

    if space == [1, 1] and tuple(self.strides[1:]) == (1, 1) and space_pad == [(0, 0)] * 2:
      out = conv2d(einops.rearrange(x, 'b f h w c -> b f (h w) c'), kernel[:, 0],
                   (time_stride, 1), (time_pad, (0, 0)))  # b f' (h w) o
      out = einops.rearrange(out, 'b f (h w) o -> b f h w o', h=x.shape[2])
    else:
      x = jnp.pad(x, ((0, 0), time_pad, (0, 0), (0, 0), (0, 0)))
      out = 0.0
      for tap, tap_kernel in enumerate(jnp.split(kernel, time_taps)):
        taken = x[:, tap:tap + time_stride * (out_frames - 1) + 1:time_stride]  # b f' h w c
        y = conv2d(einops.rearrange(taken, 'b f h w c -> (b f) h w c'), tap_kernel[0],
                   self.strides[1:], space_pad)
        out = out + einops.rearrange(y, '(b f) h w o -> b f h w o', f=out_frames)
    out = out.astype(x.dtype)
    return out if bias is None else out + bias


class TimestepEmbedding(nn.Module):
  """MLP on the sinusoidal embedding: `linear_1` -> SiLU -> `linear_2`."""

  time_embed_dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, embedding: jax.Array) -> jax.Array:
    hidden = nn.Dense(self.time_embed_dim, dtype=self.dtype, name='linear_1')(embedding)
    hidden = nn.silu(hidden)
    return nn.Dense(self.time_embed_dim, dtype=self.dtype, name='linear_2')(hidden)


TIME_EMBEDDING_NORMS = ('default', 'scale_shift')


class ResBlock(nn.Module):
  """diffusers `ResnetBlock2D`, time-embedding norm 'default' or 'scale_shift'.

  'default' adds the projected time embedding before `norm2`; 'scale_shift'
  (ADM's AdaGN) projects it to `2 * out_channels` and modulates the output of
  `norm2` as `norm2(h) * (1 + scale) + shift`. `time_emb_proj` exists only when
  called with `temb`; `conv_shortcut` only when input and output channels differ.
  """

  out_channels: int
  groups: int = 32
  eps: float = 1e-5
  dropout: float = 0.0
  output_scale_factor: float = 1.0
  dtype: jnp.dtype = jnp.float32
  time_embedding_norm: str = 'default'

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array | None = None,
               deterministic: bool = True) -> jax.Array:
    if self.time_embedding_norm not in TIME_EMBEDDING_NORMS:
      raise ValueError(f'ResBlock time_embedding_norm={self.time_embedding_norm!r} is not '
                       f'one of {TIME_EMBEDDING_NORMS}.')
    scale_shift = self.time_embedding_norm == 'scale_shift'
    if scale_shift and temb is None:
      raise ValueError("ResBlock time_embedding_norm='scale_shift' needs a time embedding; "
                       'got temb=None.')
    hidden = group_norm(self.groups, self.eps, self.dtype, 'norm1')(x)
    hidden = conv3x3(self.out_channels, self.dtype, 'conv1')(nn.silu(hidden))
    if temb is not None:
      temb = nn.Dense(self.out_channels * (2 if scale_shift else 1), dtype=self.dtype,
                      name='time_emb_proj')(nn.silu(temb))
      temb = temb[:, None, None, :]  # (b, 1, 1, c) or (b, 1, 1, 2c)
      if not scale_shift:
        hidden = hidden + temb
    hidden = group_norm(self.groups, self.eps, self.dtype, 'norm2')(hidden)
    if scale_shift:  # temb is set: checked above.
      scale, shift = jnp.split(temb, 2, axis=-1)  # (b, 1, 1, c) each
      hidden = hidden * (1 + scale) + shift
    hidden = nn.Dropout(self.dropout)(nn.silu(hidden), deterministic=deterministic)
    hidden = conv3x3(self.out_channels, self.dtype, 'conv2')(hidden)
    if x.shape[-1] != self.out_channels:
      x = conv1x1(self.out_channels, self.dtype, 'conv_shortcut')(x)
    return (x + hidden) / self.output_scale_factor


class Downsample(nn.Module):
  """3x3 stride-2 convolution `conv`.

  `padding='same'` pads one pixel on each side (diffusers U-Net `Downsample2D`,
  padding 1); `'asymmetric'` pads only bottom/right by one (diffusers VAE encoder).
  """

  out_channels: int
  padding: str = 'same'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.padding == 'same':
      pad = _PAD_ONE
    elif self.padding == 'asymmetric':
      pad = ((0, 1), (0, 1))
    else:
      raise ValueError(f"Downsample padding {self.padding!r} is not one of "
                       "'same', 'asymmetric'.")
    return conv.Conv2D(self.out_channels, (3, 3), strides=(2, 2), padding=pad,
                       dtype=self.dtype, name='conv')(x)


class Upsample(nn.Module):
  """Nearest-neighbour x2 upsampling followed by a 3x3 convolution `conv`."""

  out_channels: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.repeat(jnp.repeat(x, 2, axis=-3), 2, axis=-2)  # (b, 2h, 2w, c)
    return conv3x3(self.out_channels, self.dtype, 'conv')(x)
