"""KL autoencoder matching diffusers' `AutoencoderKL` (images `(b, h, w, c)`).

Parameter paths mirror diffusers (`encoder/down_blocks_0/resnets_1/conv1`,
`decoder/mid_block/attentions_0/to_q`, `quant_conv`, ...), so
`videoldm.convert.diffusers_vae` converts state dicts mechanically.

The decoder is assembled from classes named by class attributes
(`Decoder.mid_block_class`, `Decoder.up_block_class`, `UpDecoderBlock.resblock_class`,
`MidBlock.resblock_class`/`attention_class`) and ends in `Decoder.post_process`;
every block is called as `block(x, **block_kwargs)` with the keyword arguments
given to `Decoder.__call__`. A temporal decoder subclasses these and keeps the
spatial parameter paths.
"""

import dataclasses
import typing

import einops
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from videoldm.models import attention
from videoldm.models import layers

_EPS = 1e-6  # diffusers' VAE uses eps 1e-6 in every norm.


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
  """Architecture of a KL autoencoder (diffusers field names)."""

  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  layers_per_block: int = 2
  latent_channels: int = 4
  norm_num_groups: int = 32
  sample_size: int = 512
  scaling_factor: float = 0.18215
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  mid_block_add_attention: bool = True
  attention_implementation: str | None = None

  def __post_init__(self):
    object.__setattr__(self, 'block_out_channels', tuple(self.block_out_channels))
    bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
    if bad:
      raise ValueError(f'Autoencoder block_out_channels {self.block_out_channels} '
                       f'must all be divisible by norm_num_groups {self.norm_num_groups}.')

  @property
  def downsampling_factor(self) -> int:
    """Pixels per latent along each side: 2 per resolution level after the first."""
    return 2 ** (len(self.block_out_channels) - 1)


_VARIANTS = {
    'tiny': dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
                 sample_size=32),
    # The Stable Diffusion 1.x / 2.x VAE (sample_size 768 for SD 2.1).
    'sd': dict(),
    # Stable Diffusion's x4 upscaler: f=4 (three levels), latents scaled by 1/12.
    'sd_x4_upscaler': dict(block_out_channels=(128, 256, 512), sample_size=256,
                           scaling_factor=0.08333),
}
_DIFFUSERS_FIELDS = ('in_channels', 'out_channels', 'block_out_channels',
                     'layers_per_block', 'latent_channels', 'norm_num_groups',
                     'sample_size', 'scaling_factor', 'use_quant_conv',
                     'use_post_quant_conv', 'mid_block_add_attention')
# diffusers AutoencoderKL fields that change nothing here when at these values.
_DIFFUSERS_FIXED = dict(act_fn='silu', shift_factor=None, latents_mean=None,
                        latents_std=None)


def autoencoder_config(variant: str, **overrides) -> AutoencoderConfig:
  """Config for 'tiny', 'sd' (the SD 1.x / 2.x VAE) or 'sd_x4_upscaler', with overrides."""
  if variant not in _VARIANTS:
    raise ValueError(f'Autoencoder variant {variant!r} is not one of {sorted(_VARIANTS)}.')
  return AutoencoderConfig(**{**_VARIANTS[variant], **overrides})


def autoencoder_config_from_diffusers(config: typing.Mapping) -> AutoencoderConfig:
  """Reads a diffusers `AutoencoderKL` config dict (e.g. `vae/config.json`)."""
  for name, value in _DIFFUSERS_FIXED.items():
    if config.get(name, value) != value:
      raise ValueError(f'Autoencoder config {name}={config[name]!r} is not supported; '
                       f'expected {value!r}.')
  count = len(config.get('block_out_channels', (64,)))
  for name, block in (('down_block_types', 'DownEncoderBlock2D'),
                      ('up_block_types', 'UpDecoderBlock2D')):
    types = tuple(config.get(name, (block,) * count))
    if types != (block,) * count:
      raise ValueError(f'Autoencoder {name} {types} is not supported; expected '
                       f'{count} x {block!r}.')
  diffusers_defaults = dict(block_out_channels=(64,), layers_per_block=1, sample_size=32)
  defaults = {**dataclasses.asdict(AutoencoderConfig()), **diffusers_defaults}
  return AutoencoderConfig(**{name: config.get(name, defaults[name])
                              for name in _DIFFUSERS_FIELDS})


def autoencoder_config_to_diffusers(config: AutoencoderConfig) -> dict:
  """Inverse of `autoencoder_config_from_diffusers`: a loadable config dict."""
  values = {name: getattr(config, name) for name in _DIFFUSERS_FIELDS}
  values['block_out_channels'] = list(config.block_out_channels)
  count = len(config.block_out_channels)
  return dict(_class_name='AutoencoderKL', down_block_types=['DownEncoderBlock2D'] * count,
              up_block_types=['UpDecoderBlock2D'] * count, force_upcast=True,
              **_DIFFUSERS_FIXED, **values)


@flax.struct.dataclass
class DiagonalGaussian:
  """Posterior `N(mean, exp(logvar))`; logvar clipped to [-30, 20] as diffusers."""

  mean: jax.Array  # (b, h, w, c)
  logvar: jax.Array  # (b, h, w, c)

  @classmethod
  def from_moments(cls, moments: jax.Array) -> 'DiagonalGaussian':
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return cls(mean, jnp.clip(logvar, -30.0, 20.0))

  @property
  def std(self) -> jax.Array:
    return jnp.exp(0.5 * self.logvar)

  @property
  def var(self) -> jax.Array:
    return jnp.exp(self.logvar)

  def sample(self, key: jax.Array) -> jax.Array:
    noise = jax.random.normal(key, self.mean.shape, self.mean.dtype)
    return self.mean + self.std * noise

  def mode(self) -> jax.Array:
    return self.mean

  def kl(self, other: 'DiagonalGaussian | None' = None) -> jax.Array:
    """KL(self || other) per example `(b,)`; `other=None` is N(0, 1)."""
    if other is None:
      terms = self.mean**2 + self.var - 1.0 - self.logvar
    else:
      terms = ((self.mean - other.mean)**2 / other.var + self.var / other.var
               - 1.0 - self.logvar + other.logvar)
    return 0.5 * jnp.sum(terms, axis=(1, 2, 3))

  def nll(self, sample: jax.Array) -> jax.Array:
    """Negative log-likelihood of `sample` per example `(b,)`."""
    terms = jnp.log(2.0 * jnp.pi) + self.logvar + (sample - self.mean)**2 / self.var
    return 0.5 * jnp.sum(terms, axis=(1, 2, 3))


class AttentionBlock(nn.Module):
  """diffusers VAE mid-block `Attention`: `group_norm`, one head with biased
  `to_q`/`to_k`/`to_v`, `to_out_0`, plus the residual."""

  groups: int
  implementation: str | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    hidden = layers.group_norm(self.groups, _EPS, self.dtype, 'group_norm')(x)
    hidden = einops.rearrange(hidden, 'b h w c -> b (h w) 1 c')  # (b, hw, 1 head, c)
    q, k, v = (nn.Dense(c, dtype=self.dtype, name=name)(hidden)
               for name in ('to_q', 'to_k', 'to_v'))
    out = attention.dot_product_attention(q, k, v, implementation=self.implementation)
    out = nn.Dense(c, dtype=self.dtype, name='to_out_0')(out)
    return x + einops.rearrange(out, 'b (h w) 1 c -> b h w c', h=h, w=w)


class MidBlock(nn.Module):
  """`resnets_0`, (`attentions_0`), `resnets_1` at constant width."""

  config: AutoencoderConfig
  dtype: jnp.dtype = jnp.float32
  resblock_class: typing.ClassVar[type[nn.Module]] = layers.ResBlock
  attention_class: typing.ClassVar[type[nn.Module]] = AttentionBlock

  @nn.compact
  def __call__(self, x: jax.Array, **block_kwargs) -> jax.Array:
    config, channels = self.config, x.shape[-1]
    resblock = lambda name: self.resblock_class(
        channels, groups=config.norm_num_groups, eps=_EPS, dtype=self.dtype, name=name)
    x = resblock('resnets_0')(x, **block_kwargs)
    if config.mid_block_add_attention:
      x = self.attention_class(config.norm_num_groups, config.attention_implementation,
                               dtype=self.dtype, name='attentions_0')(x, **block_kwargs)
    return resblock('resnets_1')(x, **block_kwargs)


class DownEncoderBlock(nn.Module):
  """`resnets_j` then, unless last, `downsamplers_0` (pads bottom/right)."""

  config: AutoencoderConfig
  out_channels: int
  add_downsample: bool
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for index in range(self.config.layers_per_block):
      x = layers.ResBlock(self.out_channels, groups=self.config.norm_num_groups,
                          eps=_EPS, dtype=self.dtype, name=f'resnets_{index}')(x)
    if self.add_downsample:
      x = layers.Downsample(self.out_channels, padding='asymmetric', dtype=self.dtype,
                            name='downsamplers_0')(x)
    return x


class UpDecoderBlock(nn.Module):
  """`layers_per_block + 1` resnets then, unless last, `upsamplers_0`."""

  config: AutoencoderConfig
  out_channels: int
  add_upsample: bool
  dtype: jnp.dtype = jnp.float32
  resblock_class: typing.ClassVar[type[nn.Module]] = layers.ResBlock

  @nn.compact
  def __call__(self, x: jax.Array, **block_kwargs) -> jax.Array:
    for index in range(self.config.layers_per_block + 1):
      x = self.resblock_class(self.out_channels, groups=self.config.norm_num_groups,
                              eps=_EPS, dtype=self.dtype,
                              name=f'resnets_{index}')(x, **block_kwargs)
    if self.add_upsample:
      x = layers.Upsample(self.out_channels, dtype=self.dtype, name='upsamplers_0')(x)
    return x


class Encoder(nn.Module):
  """Image `(b, h, w, in)` -> moments `(b, h/2^k, w/2^k, 2 * latent_channels)`."""

  config: AutoencoderConfig
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    config, channels = self.config, self.config.block_out_channels
    x = layers.conv3x3(channels[0], self.dtype, 'conv_in')(x)
    for index, width in enumerate(channels):
      x = DownEncoderBlock(config, width, index < len(channels) - 1, self.dtype,
                           name=f'down_blocks_{index}')(x)
    x = MidBlock(config, self.dtype, name='mid_block')(x)
    x = layers.group_norm(config.norm_num_groups, _EPS, self.dtype, 'conv_norm_out')(x)
    return layers.conv3x3(2 * config.latent_channels, self.dtype, 'conv_out')(nn.silu(x))


class Decoder(nn.Module):
  """Latent `(b, h, w, latent_channels)` -> image `(b, h*2^k, w*2^k, out)`.

  `block_kwargs` of `__call__` reach every mid/up block and `post_process`
  (none for this image decoder; a temporal decoder passes frame counts).
  """

  config: AutoencoderConfig
  dtype: jnp.dtype = jnp.float32
  mid_block_class: typing.ClassVar[type[nn.Module]] = MidBlock
  up_block_class: typing.ClassVar[type[nn.Module]] = UpDecoderBlock

  def post_process(self, x: jax.Array, **block_kwargs) -> jax.Array:
    """`conv_norm_out` -> SiLU -> `conv_out`."""
    del block_kwargs
    x = layers.group_norm(self.config.norm_num_groups, _EPS, self.dtype,
                          'conv_norm_out')(x)
    return layers.conv3x3(self.config.out_channels, self.dtype, 'conv_out')(nn.silu(x))

  @nn.compact
  def __call__(self, z: jax.Array, **block_kwargs) -> jax.Array:
    config = self.config
    channels = tuple(reversed(config.block_out_channels))
    x = layers.conv3x3(channels[0], self.dtype, 'conv_in')(z)
    x = self.mid_block_class(config, self.dtype, name='mid_block')(x, **block_kwargs)
    for index, width in enumerate(channels):
      x = self.up_block_class(config, width, index < len(channels) - 1, self.dtype,
                              name=f'up_blocks_{index}')(x, **block_kwargs)
    return self.post_process(x, **block_kwargs)


class AutoencoderKL(nn.Module):
  """diffusers `AutoencoderKL`: `encode(x in [-1, 1]) -> DiagonalGaussian`,
  `decode(z) -> x`; `__call__(x, key=None)` reconstructs (posterior sample
  with `key`, its mean without) and returns `(reconstruction, posterior)`.
  Latents seen by a diffusion model are `z * config.scaling_factor`
  (`encode_latents` / `decode_latents`).
  """

  config: AutoencoderConfig
  dtype: jnp.dtype = jnp.float32
  decoder_class: typing.ClassVar[type[nn.Module]] = Decoder

  def setup(self):
    config = self.config
    self.encoder = Encoder(config, self.dtype)
    self.decoder = self.decoder_class(config, self.dtype)
    if config.use_quant_conv:
      self.quant_conv = layers.conv1x1(2 * config.latent_channels, self.dtype)
    if config.use_post_quant_conv:
      self.post_quant_conv = layers.conv1x1(config.latent_channels, self.dtype)

  def encode(self, x: jax.Array) -> DiagonalGaussian:
    if x.ndim != 4 or x.shape[-1] != self.config.in_channels:
      raise ValueError(f'Autoencoder input must have shape (b, h, w, '
                       f'{self.config.in_channels}), got {x.shape}.')
    moments = self.encoder(x)
    if self.config.use_quant_conv:
      moments = self.quant_conv(moments)
    return DiagonalGaussian.from_moments(moments)

  def decode(self, z: jax.Array, **block_kwargs) -> jax.Array:
    if z.shape[-1] != self.config.latent_channels:
      raise ValueError(f'Latents must have {self.config.latent_channels} channels '
                       f'(last axis), got shape {z.shape}.')
    if self.config.use_post_quant_conv:
      z = self.post_quant_conv(z)
    return self.decoder(z, **block_kwargs)

  def encode_latents(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
    """Scaled latents: a posterior sample (with `key`) or its mean."""
    posterior = self.encode(x)
    z = posterior.mode() if key is None else posterior.sample(key)
    return z * self.config.scaling_factor

  def decode_latents(self, latents: jax.Array, **block_kwargs) -> jax.Array:
    return self.decode(latents / self.config.scaling_factor, **block_kwargs)

  def __call__(self, x: jax.Array, key: jax.Array | None = None,
               **block_kwargs) -> tuple[jax.Array, DiagonalGaussian]:
    posterior = self.encode(x)
    z = posterior.mode() if key is None else posterior.sample(key)
    return self.decode(z, **block_kwargs), posterior


@dataclasses.dataclass(frozen=True)
class PixelAutoencoderConfig:
  """`PixelAutoencoder`: frames of `in_channels`, read as `patch_size` x `patch_size` patches."""

  in_channels: int = 3
  patch_size: int = 1
  scaling_factor: float = 1.0

  @property
  def downsampling_factor(self) -> int:
    return self.patch_size

  @property
  def latent_channels(self) -> int:
    return self.in_channels * self.patch_size**2


class PixelAutoencoder(nn.Module):
  """No autoencoder, for pixel-space diffusion: frames `(b, h, w, c)` <-> their `p x p`
  patches stacked in channels, `(b, h/p, w/p, p p c)`.

  A parameter-free permutation of the pixels, so diffusion on these "latents" is diffusion
  on the frames themselves (the paper's pixel-space baseline, Table 1); `p > 1` only lets
  the denoiser read the frames at a lower resolution with more channels (space-to-depth).
  The posterior is a point mass (logvar -inf): `sample(key)` returns the patches exactly.
  """

  config: PixelAutoencoderConfig

  def encode(self, x: jax.Array) -> DiagonalGaussian:
    p = self.config.patch_size
    if x.ndim != 4 or x.shape[-1] != self.config.in_channels or x.shape[1] % p or x.shape[2] % p:
      raise ValueError(f'Pixel autoencoder input must have shape (b, h, w, '
                       f'{self.config.in_channels}) with h, w divisible by {p}, got {x.shape}.')
    z = einops.rearrange(x, 'b (h p) (w q) c -> b h w (p q c)', p=p, q=p)  # b h w (p q c)
    return DiagonalGaussian(z, jnp.full_like(z, -jnp.inf))

  def decode(self, z: jax.Array) -> jax.Array:
    p = self.config.patch_size
    if z.shape[-1] != self.config.latent_channels:
      raise ValueError(f'Pixel latents must have {self.config.latent_channels} channels '
                       f'(last axis), got shape {z.shape}.')
    return einops.rearrange(z, 'b h w (p q c) -> b (h p) (w q) c', p=p, q=p)  # b H W c

  def __call__(self, x: jax.Array, key: jax.Array | None = None):
    posterior = self.encode(x)
    z = posterior.mode() if key is None else posterior.sample(key)
    return self.decode(z), posterior
