"""Image U-Net: diffusers `UNet2DConditionModel` in Flax, channels-last.

Parameter paths mirror diffusers (`conv_in`, `time_embedding`,
`class_embedding`, `down_blocks_i/{resnets_j,attentions_j,downsamplers_0}`,
`mid_block`, `up_blocks_i/...`, `conv_norm_out`, `conv_out`), so a diffusers
state dict converts mechanically (`videoldm.convert.diffusers`).

The blocks apply their layers through `apply_resnet`/`apply_attention`, so a
video U-Net can subclass them and insert temporal layers after each one; the
`extra` argument carries call-time state such subclasses need (the image
blocks ignore it), and `UNet.backbone` runs the blocks on already-embedded
inputs so a subclass with another input layout can reuse it.
"""

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from videoldm.models import attention as attention_lib
from videoldm.models import layers

PREDICTION_TYPES = ('eps', 'v', 'x0')


def unet_config(variant: str = 'tiny') -> ml_collections.ConfigDict:
  """U-Net config for `variant` in {'tiny', 'sd15', 'sd21', 'sd_x4_upscaler'}.

  Fields:
    in_channels: input channels (latent channels plus any concatenated
      conditioning channels).
    out_channels: output channels.
    block_out_channels: channels per resolution level.
    layers_per_block: ResBlocks per down level (up levels have one more).
    attention_levels: per level, whether its blocks have SpatialTransformers
      (diffusers CrossAttn*Block2D); the mid block always has one.
    num_attention_heads: heads per level (int or tuple); or None when
      `attention_head_dim` is set. (diffusers' `attention_head_dim` config key
      is really this head count.)
    attention_head_dim: channels per head (heads = channels // this), or None.
    transformer_layers_per_block: transformer depth (int or per level); the
      mid block uses the last level's.
    cross_attention_dim: context feature size; None = self-attention only.
    use_linear_projection: Dense (SD 2.x) instead of 1x1 conv (SD 1.x)
      transformer projections.
    only_cross_attention: per level, whether the transformers' first attention
      also attends to the context instead of the image (diffusers' flag; SD's
      x4 upscaler sets it on its upper levels); () = no level; never the mid block.
    num_class_embeds: None, or size of the class-label embedding table
      *including* a null class for classifier-free guidance, whose index is
      `num_class_embeds - 1` (`null_class_label`); labels of None use it.
    flip_sin_to_cos, freq_shift: timestep embedding (see `timestep_embedding`).
    norm_num_groups, norm_eps: ResBlock / output GroupNorm.
    dropout: ResBlock dropout.
    resnet_time_scale_shift: how ResBlocks take the time (+ class) embedding:
      'default' (added, as SD) or 'scale_shift' (AdaGN, as diffusers' key).
    prediction_type: 'eps', 'v' or 'x0' (metadata read by samplers and losses).
    attention_implementation: None (automatic: query-blocked on CPU for long
      sequences), 'xla', 'cudnn' or 'blocked' (`attention.dot_product_attention`).
    dtype: computation dtype name; params are float32.
  """
  config = ml_collections.ConfigDict(dict(
      in_channels=4, out_channels=4, block_out_channels=(32, 64),
      layers_per_block=1, attention_levels=(False, True),
      num_attention_heads=(2, 4), attention_head_dim=None,
      transformer_layers_per_block=(1, 1), cross_attention_dim=None,
      use_linear_projection=False, only_cross_attention=(), num_class_embeds=None,
      flip_sin_to_cos=True, freq_shift=0.0, norm_num_groups=8, norm_eps=1e-5,
      dropout=0.0, prediction_type='eps', attention_implementation=None,
      dtype='float32', resnet_time_scale_shift='default'))
  if variant == 'tiny':
    config.cross_attention_dim = 16
  elif variant == 'sd_x4_upscaler':  # Stable Diffusion's x4 upscaler (latent f=4 + RGB in).
    config.in_channels = 7
    config.block_out_channels = (256, 512, 512, 1024)
    config.layers_per_block = 2
    config.attention_levels = (False, True, True, True)
    config.num_attention_heads = (8, 8, 8, 8)
    config.transformer_layers_per_block = (1, 1, 1, 1)
    config.norm_num_groups = 32
    config.cross_attention_dim = 1024
    config.use_linear_projection = True
    config.only_cross_attention = (True, True, True, False)
    config.num_class_embeds = 1000  # The noise-augmentation level 0..999 (Eq. 5).
    config.prediction_type = 'v'
  elif variant in ('sd15', 'sd21'):
    config.block_out_channels = (320, 640, 1280, 1280)
    config.layers_per_block = 2
    config.attention_levels = (True, True, True, False)
    config.transformer_layers_per_block = (1, 1, 1, 1)
    config.norm_num_groups = 32
    if variant == 'sd15':
      config.num_attention_heads = (8, 8, 8, 8)
      config.cross_attention_dim = 768
    else:
      config.num_attention_heads = (5, 10, 20, 20)
      config.cross_attention_dim = 1024
      config.use_linear_projection = True
      config.prediction_type = 'v'
  else:
    raise ValueError(f"U-Net variant {variant!r} is not one of 'tiny', 'sd15', 'sd21', "
                     "'sd_x4_upscaler'.")
  return config


def null_class_label(config: ml_collections.ConfigDict) -> int:
  """Index of the null (unconditional) class: the last embedding row."""
  if not config.num_class_embeds:
    raise ValueError('The U-Net config has num_class_embeds=None; it has no classes.')
  return config.num_class_embeds - 1


def per_level(value, levels: int, name: str) -> tuple:
  """`value` as a tuple with one entry per level (an int is repeated)."""
  values = tuple(value) if isinstance(value, Sequence) else (value,) * levels
  if len(values) != levels:
    raise ValueError(f'U-Net config {name}={value!r} needs one entry per level '
                     f'({levels} levels).')
  return values


def only_cross_levels(config: ml_collections.ConfigDict) -> tuple[bool, ...]:
  """`only_cross_attention` per level; () (and configs saved before the key) mean none."""
  value = tuple(config.get('only_cross_attention', ()))
  levels = len(config.block_out_channels)
  return per_level(value, levels, 'only_cross_attention') if value else (False,) * levels


def level_heads(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """Attention heads per level, from `num_attention_heads` or `attention_head_dim`."""
  channels = tuple(config.block_out_channels)
  if (config.num_attention_heads is None) == (config.attention_head_dim is None):
    raise ValueError('Set exactly one of num_attention_heads and attention_head_dim '
                     f'in the U-Net config, got {config.num_attention_heads!r} and '
                     f'{config.attention_head_dim!r}.')
  if config.num_attention_heads is not None:
    heads = per_level(config.num_attention_heads, len(channels), 'num_attention_heads')
  else:
    heads = tuple(c // config.attention_head_dim for c in channels)
  for c, h in zip(channels, heads):
    if h < 1 or c % h:
      raise ValueError(f'U-Net level with {c} channels cannot be split into {h} '
                       'attention heads.')
  return heads


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first inconsistent U-Net config field."""
  levels = len(config.block_out_channels)
  per_level(config.attention_levels, levels, 'attention_levels')
  per_level(config.transformer_layers_per_block, levels, 'transformer_layers_per_block')
  only_cross_levels(config)
  level_heads(config)
  for c in config.block_out_channels:
    if c % config.norm_num_groups:
      raise ValueError(f'block_out_channels entry {c} is not divisible by '
                       f'norm_num_groups={config.norm_num_groups}.')
  if config.prediction_type not in PREDICTION_TYPES:
    raise ValueError(f'prediction_type {config.prediction_type!r} is not one of '
                     f'{PREDICTION_TYPES}.')
  norm = config.get('resnet_time_scale_shift', 'default')
  if norm not in layers.TIME_EMBEDDING_NORMS:
    raise ValueError(f'resnet_time_scale_shift {norm!r} is not one of '
                     f'{layers.TIME_EMBEDDING_NORMS}.')
  if config.num_class_embeds is not None and config.num_class_embeds < 2:
    raise ValueError(f'num_class_embeds={config.num_class_embeds} must count at '
                     'least one class plus the null class.')


def example_inputs(config: ml_collections.ConfigDict, batch_size: int = 1,
                   size: int | None = None) -> dict[str, jax.Array]:
  """Zero inputs for `UNet(config).init(key, **example_inputs(config))`."""
  size = size or 2 ** (len(config.block_out_channels) - 1)
  inputs = dict(x=jnp.zeros((batch_size, size, size, config.in_channels)),
                timesteps=jnp.zeros((batch_size,)))
  if config.cross_attention_dim is not None:
    inputs['context'] = jnp.zeros((batch_size, 1, config.cross_attention_dim))
  return inputs


@dataclasses.dataclass(frozen=True)
class BlockOptions:
  """Settings shared by every block of one U-Net."""
  groups: int
  eps: float
  dropout: float
  cross_attention: bool
  use_linear_projection: bool
  implementation: str | None
  dtype: Any
  time_embedding_norm: str


class UNetLevel(nn.Module):
  """Shared parts of the down, mid and up blocks: `resnets_j`, `attentions_j`."""

  out_channels: int
  num_layers: int
  has_attention: bool
  heads: int
  depth: int
  options: BlockOptions
  only_cross_attention: bool = False

  def make_layers(self):
    opts = self.options
    self.resnets = [layers.ResBlock(self.out_channels, opts.groups, opts.eps,
                                    opts.dropout, dtype=opts.dtype,
                                    time_embedding_norm=opts.time_embedding_norm)
                    for _ in range(self.num_layers)]
    if self.has_attention:
      self.attentions = [attention_lib.SpatialTransformer(
          self.heads, self.out_channels // self.heads, self.depth,
          opts.use_linear_projection, opts.cross_attention, opts.groups,
          opts.implementation, opts.dtype, self.only_cross_attention)
          for _ in range(self.num_attention_layers)]

  @property
  def num_attention_layers(self) -> int:
    return self.num_layers

  def apply_resnet(self, index, x, temb, deterministic, extra=None):
    del extra  # Call-time state for subclasses (e.g. the video U-Net).
    return self.resnets[index](x, temb, deterministic)

  def apply_attention(self, index, x, context, extra=None):
    del extra
    return self.attentions[index](x, context)


class DownBlock(UNetLevel):
  """diffusers (CrossAttn)DownBlock2D; returns the output and its skip tensors."""

  add_downsample: bool = True

  def setup(self):
    self.make_layers()
    if self.add_downsample:
      self.downsamplers = [layers.Downsample(self.out_channels, dtype=self.options.dtype)]

  def __call__(self, x, temb, context=None, deterministic=True, extra=None):
    skips = []
    for index in range(self.num_layers):
      x = self.apply_resnet(index, x, temb, deterministic, extra)
      if self.has_attention:
        x = self.apply_attention(index, x, context, extra)
      skips.append(x)
    if self.add_downsample:
      x = self.downsamplers[0](x)
      skips.append(x)
    return x, skips


class MidBlock(UNetLevel):
  """diffusers UNetMidBlock2DCrossAttn: resnets_0, attentions_0, resnets_1."""

  @property
  def num_attention_layers(self) -> int:
    return self.num_layers - 1

  def setup(self):
    self.make_layers()

  def __call__(self, x, temb, context=None, deterministic=True, extra=None):
    x = self.apply_resnet(0, x, temb, deterministic, extra)
    for index in range(1, self.num_layers):
      x = self.apply_attention(index - 1, x, context, extra)
      x = self.apply_resnet(index, x, temb, deterministic, extra)
    return x


class UpBlock(UNetLevel):
  """diffusers (CrossAttn)UpBlock2D; consumes skip tensors, last first."""

  add_upsample: bool = True

  def setup(self):
    self.make_layers()
    if self.add_upsample:
      self.upsamplers = [layers.Upsample(self.out_channels, dtype=self.options.dtype)]

  def __call__(self, x, skips, temb, context=None, deterministic=True, extra=None):
    skips = list(skips)
    for index in range(self.num_layers):
      x = jnp.concatenate([x, skips.pop()], axis=-1)  # (b, h, w, c + c_skip)
      x = self.apply_resnet(index, x, temb, deterministic, extra)
      if self.has_attention:
        x = self.apply_attention(index, x, context, extra)
    if self.add_upsample:
      x = self.upsamplers[0](x)
    return x


class UNet(nn.Module):
  """Image U-Net `(b, h, w, in_channels)` -> `(b, h, w, out_channels)`."""

  config: ml_collections.ConfigDict

  down_block_cls = DownBlock
  mid_block_cls = MidBlock
  up_block_cls = UpBlock

  def block_options(self) -> BlockOptions:
    cfg = self.config
    return BlockOptions(cfg.norm_num_groups, cfg.norm_eps, cfg.dropout,
                        cfg.cross_attention_dim is not None,
                        cfg.use_linear_projection, cfg.attention_implementation,
                        jnp.dtype(cfg.dtype),
                        # Configs saved before the key existed mean 'default'.
                        cfg.get('resnet_time_scale_shift', 'default'))

  def check_inputs(self, x, timesteps, context, class_labels):
    """Validates shapes; returns timesteps broadcast to `(b,)`."""
    cfg = self.config
    validate_config(cfg)
    factor = 2 ** (len(cfg.block_out_channels) - 1)
    if x.ndim != 4 or x.shape[-1] != cfg.in_channels:
      raise ValueError(f'U-Net input has shape {x.shape}; expected (b, h, w, '
                       f'{cfg.in_channels}).')
    if x.shape[1] % factor or x.shape[2] % factor:
      raise ValueError(f'U-Net input size {x.shape[1:3]} is not divisible by {factor}.')
    timesteps = jnp.asarray(timesteps)
    if timesteps.ndim > 1 or (timesteps.ndim == 1 and timesteps.shape[0] != x.shape[0]):
      raise ValueError(f'timesteps have shape {timesteps.shape}; expected () or '
                       f'({x.shape[0]},).')
    if cfg.cross_attention_dim is not None and (
        context is None or context.ndim != 3 or context.shape[-1] != cfg.cross_attention_dim):
      shape = None if context is None else context.shape
      raise ValueError(f'U-Net context has shape {shape}; expected (b, m, '
                       f'{cfg.cross_attention_dim}).')
    if class_labels is not None and not cfg.num_class_embeds:
      raise ValueError('class_labels were given but the U-Net config has '
                       'num_class_embeds=None.')
    return jnp.broadcast_to(timesteps, (x.shape[0],))

  def embed_time(self, timesteps, class_labels):
    """Timestep (+ class) embedding `(b, 4 * block_out_channels[0])`."""
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    channels = cfg.block_out_channels[0]
    temb = layers.timestep_embedding(timesteps, channels, cfg.flip_sin_to_cos,
                                     cfg.freq_shift).astype(dtype)
    temb = layers.TimestepEmbedding(4 * channels, dtype, name='time_embedding')(temb)
    if cfg.num_class_embeds:
      if class_labels is None:
        class_labels = jnp.full(timesteps.shape, null_class_label(cfg), jnp.int32)
      # N(0, 1) as torch's nn.Embedding (diffusers): flax's default (std
      # 1/sqrt(features)) starts the class signal ~16x below the time embedding.
      temb = temb + nn.Embed(cfg.num_class_embeds, 4 * channels, dtype=dtype,
                             embedding_init=nn.initializers.normal(1.0),
                             name='class_embedding')(class_labels)
    return temb

  @nn.compact
  def __call__(self, x, timesteps, context=None, class_labels=None,
               deterministic: bool = True):
    timesteps = self.check_inputs(x, timesteps, context, class_labels)
    temb = self.embed_time(timesteps, class_labels)
    return self.backbone(x, temb, context, deterministic)

  def backbone(self, x, temb, context, deterministic, level_extras=None):
    """`conv_in` -> down, mid, up blocks -> `conv_out` on `(n, h, w, c)` inputs.

    Called from a compact `__call__`. `level_extras[l]` (or None) is passed as
    `extra` to every block at resolution level l.
    """
    cfg = self.config
    dtype = jnp.dtype(cfg.dtype)
    options = self.block_options()
    channels = tuple(cfg.block_out_channels)
    levels = len(channels)
    heads = level_heads(cfg)
    attention = per_level(cfg.attention_levels, levels, 'attention_levels')
    depth = per_level(cfg.transformer_layers_per_block, levels,
                       'transformer_layers_per_block')
    only_cross = only_cross_levels(cfg)
    if context is not None:
      context = context.astype(dtype)
    extras = level_extras or (None,) * levels

    h = layers.conv3x3(channels[0], dtype, 'conv_in')(x.astype(dtype))
    skips = [h]
    for i in range(levels):
      h, block_skips = self.down_block_cls(
          channels[i], cfg.layers_per_block, attention[i], heads[i], depth[i],
          options, only_cross[i], add_downsample=i < levels - 1, name=f'down_blocks_{i}')(
              h, temb, context, deterministic, extras[i])
      skips.extend(block_skips)
    h = self.mid_block_cls(channels[-1], 2, True, heads[-1], depth[-1], options,
                           name='mid_block')(h, temb, context, deterministic,
                                            extras[-1])
    for i, level in enumerate(reversed(range(levels))):
      count = cfg.layers_per_block + 1
      block_skips, skips = skips[-count:], skips[:-count]
      h = self.up_block_cls(
          channels[level], count, attention[level], heads[level], depth[level],
          options, only_cross[level], add_upsample=level > 0, name=f'up_blocks_{i}')(
              h, block_skips, temb, context, deterministic, extras[level])
    h = layers.group_norm(cfg.norm_num_groups, cfg.norm_eps, dtype, 'conv_norm_out')(h)
    return layers.conv3x3(cfg.out_channels, dtype, 'conv_out')(nn.silu(h))
