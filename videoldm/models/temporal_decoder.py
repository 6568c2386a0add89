"""Temporal decoder of the video autoencoder (paper Sec. 3.1.1, Fig. 3).

`TemporalAutoencoderKL` is `AutoencoderKL` whose decoder gets temporal
layers; the encoder is untouched, so latents (and the latent DM) stay the
same. Every decoder ResBlock (mid block and up blocks) becomes a
`TemporalDecoderResBlock`: the spatial ResBlock (same params, same paths),
then a `TemporalResBlock` of 3D convolutions (temb=None) as child
`temporal_res_block`, blended by an `AlphaBlender` child `time_mixer`:

  decoder/up_blocks_0/resnets_1/{norm1,conv1,norm2,conv2}   spatial (image AE)
  decoder/up_blocks_0/resnets_1/temporal_res_block/...      new
  decoder/up_blocks_0/resnets_1/time_mixer/mix_factor       new (learned merges)

With `use_conv_out` (as SVD's temporal decoder, whose `conv_out` is followed
by a 3D conv), the output frames get a residual zero-initialised 3D conv
`decoder/temporal_conv_out` blended by `decoder/time_mixer_conv_out`. All new
names contain `temporal` or `time_mixer`, so the image autoencoder's params
load unchanged and `config.trainable` selects exactly the new ones.

Temporal convs start at zero, so a fresh temporal decoder equals the image
decoder frame by frame. Kernel size defaults to (3, 1, 1) (time only, as the
SVD temporal decoder); (3, 3, 3) gives full 3D convolutions.
"""

import dataclasses
import functools
import operator
import typing

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from videoldm.models import autoencoder as autoencoder_lib
from videoldm.models import layers
from videoldm.models import temporal


@dataclasses.dataclass(frozen=True)
class TemporalDecoderConfig:
  """Temporal layers of the decoder.

  merge_strategy: AlphaBlender strategy ('fixed', 'learned', 'learned_with_images';
    only the last honours `image_only_indicator`).
  alpha: initial (or fixed) weight of the spatial branch.
  kernel_size: (frames, height, width) of the temporal 3D convs, odd.
  use_conv_out: add the blended residual 3D conv after `conv_out`.
  """

  merge_strategy: str = 'learned_with_images'
  alpha: float = 0.5
  kernel_size: tuple[int, ...] = (3, 1, 1)
  use_conv_out: bool = True

  def __post_init__(self):
    object.__setattr__(self, 'kernel_size', tuple(self.kernel_size))
    if self.merge_strategy not in temporal.MERGE_STRATEGIES:
      raise ValueError(f'Temporal decoder merge_strategy {self.merge_strategy!r} is not one of '
                       f'{temporal.MERGE_STRATEGIES}.')
    if len(self.kernel_size) != 3 or any(k < 1 or k % 2 == 0 for k in self.kernel_size):
      raise ValueError(f'Temporal decoder kernel_size={self.kernel_size} must be three positive '
                       'odd numbers (frames, height, width).')


def last_layer_path(config: TemporalDecoderConfig) -> tuple[str, ...]:
  """Path (in the autoencoder's params) of the decoder's last kernel, for adaptive GAN weights."""
  if config.use_conv_out:
    return ('decoder', 'temporal_conv_out', 'conv', 'kernel')
  return ('decoder', 'conv_out', 'kernel')


def check_num_frames(batch_frames: int, num_frames) -> int:
  """Number of videos in a `(b f)` batch; ValueError naming both numbers otherwise."""
  try:
    num_frames = operator.index(num_frames)
  except TypeError:
    raise ValueError(f'num_frames={num_frames!r} must be a positive integer.') from None
  if num_frames < 1 or batch_frames % num_frames:
    raise ValueError(f'The (b f) batch of {batch_frames} frames is not divisible by '
                     f'num_frames={num_frames}; expected a positive divisor.')
  return batch_frames // num_frames


def _blender(config: TemporalDecoderConfig, name: str) -> temporal.AlphaBlender:
  return temporal.AlphaBlender(config.merge_strategy, config.alpha, name=name)


class TemporalDecoderResBlock(layers.ResBlock):
  """Spatial `ResBlock` (same params) + blended `TemporalResBlock` children."""

  @nn.compact
  def __call__(self, x: jax.Array, num_frames: int,
               image_only_indicator: jax.Array | None = None,
               temporal_config: TemporalDecoderConfig = TemporalDecoderConfig()) -> jax.Array:
    spatial = super().__call__(x)  # (b f) h w c
    temporal_out = temporal.TemporalResBlock(
        self.out_channels, kernel_size=temporal_config.kernel_size, groups=self.groups,
        eps=self.eps, dtype=self.dtype, name='temporal_res_block')(spatial, num_frames)
    return _blender(temporal_config, 'time_mixer')(spatial, temporal_out, image_only_indicator,
                                                   num_frames)


class TemporalDecoderAttention(autoencoder_lib.AttentionBlock):
  """The mid-block attention, unchanged; accepts (and ignores) the frame arguments."""

  @nn.compact
  def __call__(self, x: jax.Array, **block_kwargs) -> jax.Array:
    del block_kwargs
    return super().__call__(x)


class TemporalMidBlock(autoencoder_lib.MidBlock):
  resblock_class: typing.ClassVar[type[nn.Module]] = TemporalDecoderResBlock
  attention_class: typing.ClassVar[type[nn.Module]] = TemporalDecoderAttention


class TemporalUpDecoderBlock(autoencoder_lib.UpDecoderBlock):
  resblock_class: typing.ClassVar[type[nn.Module]] = TemporalDecoderResBlock


class TemporalConv(nn.Module):
  """Residual zero-initialised 3D conv over `(b f) h w c` frames; returns `x + conv(x)`."""

  kernel_size: tuple[int, ...] = (3, 1, 1)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, num_frames: int) -> jax.Array:
    check_num_frames(x.shape[0], num_frames)
    video = einops.rearrange(x, '(b f) h w c -> b f h w c', f=num_frames)
    padding = tuple((k // 2, k // 2) for k in self.kernel_size)
    hidden = layers.FrameTapConv(x.shape[-1], tuple(self.kernel_size), padding=padding,
                                 kernel_init=nn.initializers.zeros, dtype=self.dtype,
                                 name='conv')(video)
    return (x + einops.rearrange(hidden, 'b f h w c -> (b f) h w c')).astype(x.dtype)


class TemporalDecoder(autoencoder_lib.Decoder):
  """`Decoder` with temporal layers; `__call__(z, num_frames, image_only_indicator=None)`."""

  temporal: TemporalDecoderConfig = TemporalDecoderConfig()
  mid_block_class: typing.ClassVar[type[nn.Module]] = TemporalMidBlock
  up_block_class: typing.ClassVar[type[nn.Module]] = TemporalUpDecoderBlock

  def post_process(self, x: jax.Array, num_frames: int,
                   image_only_indicator: jax.Array | None = None,
                   temporal_config: TemporalDecoderConfig = TemporalDecoderConfig()) -> jax.Array:
    """`conv_norm_out` -> SiLU -> `conv_out`, then the blended `temporal_conv_out`."""
    x = super().post_process(x)
    if not temporal_config.use_conv_out:
      return x
    x_temporal = TemporalConv(temporal_config.kernel_size, self.dtype,
                              name='temporal_conv_out')(x, num_frames)
    return _blender(temporal_config, 'time_mixer_conv_out')(x, x_temporal, image_only_indicator,
                                                            num_frames)

  @nn.compact
  def __call__(self, z: jax.Array, num_frames: int,
               image_only_indicator: jax.Array | None = None) -> jax.Array:
    check_num_frames(z.shape[0], num_frames)
    return super().__call__(z, num_frames=num_frames, image_only_indicator=image_only_indicator,
                            temporal_config=self.temporal)


class TemporalAutoencoderKL(autoencoder_lib.AutoencoderKL):
  """`AutoencoderKL` with the temporal decoder; pass `temporal=` by keyword.

  `decode(z ((b f), h, w, c), num_frames, image_only_indicator=None)` and
  `decode_video(z (b, f, h, w, c))`; `encode` is the image encoder's.
  Params are the image autoencoder's plus the new temporal ones.
  """

  temporal: TemporalDecoderConfig = TemporalDecoderConfig()

  def setup(self):
    if isinstance(self.dtype, TemporalDecoderConfig) or not isinstance(
        self.temporal, TemporalDecoderConfig):
      raise ValueError(f'TemporalAutoencoderKL got temporal={self.temporal!r}; expected a '
                       'TemporalDecoderConfig passed by keyword (temporal=...).')
    super().setup()

  @property
  def decoder_class(self):
    return functools.partial(TemporalDecoder, temporal=self.temporal)

  def decode(self, z: jax.Array, num_frames: int,
             image_only_indicator: jax.Array | None = None) -> jax.Array:
    if z.ndim != 4:
      raise ValueError(f'Temporal decoder latents must have shape ((b f), h, w, c), got '
                       f'{z.shape}; use decode_video for (b, f, h, w, c).')
    return super().decode(z, num_frames=num_frames, image_only_indicator=image_only_indicator)

  def decode_video(self, z: jax.Array,
                   image_only_indicator: jax.Array | None = None) -> jax.Array:
    """Latent video `(b, f, h, w, c)` -> video `(b, f, H, W, out_channels)`."""
    if z.ndim != 5:
      raise ValueError(f'decode_video expects latents of shape (b, f, h, w, c), got {z.shape}.')
    frames = einops.rearrange(z, 'b f h w c -> (b f) h w c')
    out = self.decode(frames, z.shape[1], image_only_indicator)
    return einops.rearrange(out, '(b f) h w c -> b f h w c', f=z.shape[1])  # b f H W c
