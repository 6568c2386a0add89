"""Video U-Net: the image `UNet` with temporal layers (paper Sec. 3.1-3.3, Fig. 4).

Spatial layers see the video as frames `(b f) h w c` (timesteps, labels and
text repeated per frame) and keep the image U-Net's parameter paths, so image
params load unchanged (`models.params.load_image_params`). Temporal layers follow them
inside each block, as siblings named after the layer they follow:

  after `resnets_i` ('conv3d'):         `temporal_resnets_i` (TemporalResBlock,
                                         with the diffusion time embedding)
  after `attentions_i` ('attention'):   `temporal_transformers_i`
  each blended by its own AlphaBlender  `time_mixer_resnets_i` / `_transformers_i`

Temporal attention follows the spatial transformers only (as Fig. 4 pairs the
two; levels without spatial attention get conv3d blocks), unless
`temporal.attention_everywhere`, which adds `temporal_transformers_i` after
`resnets_i` at levels without spatial attention (e.g. to give an
attention-only ablation temporal mixing at every level). `temporal.attention`
picks which tokens temporal attention sees ('temporal', 'full', 'causal',
'sparse_causal'; `temporal_lib.TemporalTransformer`), with the same params for all.

Prediction / interpolation models (`temporal.context_frames`, Sec. 3.2-3.3)
form `c_S = (m_S * z, m_S)` from `context_latents` and `context_mask`, encode
it once (`context_encoder`, one map per level) and add it, through a 1x1
`context_proj_*_i`, to the residual-branch input of every temporal layer
(not its skip, so a fresh model is still the image model).
`temporal.regime_conditioning` embeds a scalar per video (interpolation regime
or fps) with the frame-position embedding.
"""

import dataclasses

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from videoldm.models import temporal as temporal_lib
from videoldm.models import unet as unet_lib

TEMPORAL_LAYERS = ('conv3d', 'attention')


def temporal_config() -> ml_collections.ConfigDict:
  """The `temporal` sub-config (defaults: conv3d + attention, learned merge)."""
  return ml_collections.ConfigDict(dict(
      layers=TEMPORAL_LAYERS, merge_strategy='learned_with_images', alpha=0.5,
      conv_kernel_size=(3, 3, 3), num_heads=None, head_dim=None, depth=1,
      frame_pos_embed=True, text_context=False, context_frames=False,
      regime_conditioning=False, attention_everywhere=False, attention='temporal'))


def video_unet_config(variant: str = 'tiny') -> ml_collections.ConfigDict:
  """Video U-Net config for `variant` in {'tiny', 'driving', 'sd_video'}.

  A `unet_config` plus `temporal`:
    layers: subset of ('conv3d', 'attention') (the paper's ablation compares).
    merge_strategy, alpha: AlphaBlender ('fixed' | 'learned' |
      'learned_with_images'; alpha is the initial / fixed spatial weight).
    conv_kernel_size: TemporalResBlock kernel (frames, h, w): (3, 3, 3) or (3, 1, 1).
    num_heads / head_dim: temporal attention split (at most one; neither =
      the spatial heads of the level). depth: blocks per TemporalTransformer.
    frame_pos_embed: sinusoidal frame-index embedding in temporal attention.
    text_context: temporal transformers cross-attend to the text context.
    context_frames: c_S conditioning for prediction / interpolation models;
      context latents have `out_channels` channels.
    regime_conditioning: a scalar per video embedded with the frame position.
    attention_everywhere: temporal attention also at levels without spatial
      attention (after each ResBlock).
    attention: whom temporal attention sees: 'temporal' (each location, its f
      frames), 'full' (all f h w tokens), 'causal' (tokens of frames 0..k) or
      'sparse_causal' (tokens of frames 0, k - 1, k); 'full' and 'causal' cost
      (f h w)^2. Same params for all, so a checkpoint loads into any of them.

  'tiny': tests (32/64 channels, 8 groups, text dim 16). 'driving': key frames
  128x256 -> latents 16x32x4, the SD 1.5 layout without text whose lowest level
  is widened to 1376 channels, landing at 864.3M params (paper: 865M); a prediction
  model (context frames) with class labels `3 * is_night + crowdedness`
  (crowdedness in 0..2; 6 = null class). 'sd_video': the SD 1.5 U-Net (320x512
  frames -> 40x64 latents) with text cross-attention in the temporal
  transformers. Both use (3, 1, 1) temporal convs: temporal params are then
  562M (driving) and 526M (sd_video) against the paper's 655M, where (3, 3, 3)
  would give 1.71B and 1.59B (`models.params.count_params`).
  """
  if variant == 'tiny':
    config = unet_lib.unet_config('tiny')
  elif variant == 'driving':
    config = unet_lib.unet_config('sd15')
    config.block_out_channels = (320, 640, 1280, 1376)
    config.cross_attention_dim = None
    config.num_class_embeds = 7
  elif variant == 'sd_video':
    config = unet_lib.unet_config('sd15')
  else:
    raise ValueError(f"Video U-Net variant {variant!r} is not one of 'tiny', 'driving', "
                     "'sd_video'.")
  config.temporal = temporal_config()
  if variant != 'tiny':
    config.temporal.conv_kernel_size = (3, 1, 1)
  if variant == 'driving':
    config.temporal.context_frames = True
  if variant == 'sd_video':
    config.temporal.text_context = True
  return config


def temporal_heads(channels: int, num_heads: int | None, head_dim: int | None,
                   spatial_heads: int) -> tuple[int, int]:
  """(heads, head_dim) of the temporal attention at a level with `channels`."""
  if head_dim is not None:
    heads = channels // head_dim
  else:
    heads = num_heads or spatial_heads
  if heads < 1 or channels % heads:
    raise ValueError(f'Temporal attention over {channels} channels cannot be split into '
                     f'{heads} heads.')
  return heads, channels // heads


def validate_video_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first inconsistent video U-Net config field."""
  unet_lib.validate_config(config)
  if 'temporal' not in config:
    raise ValueError('The video U-Net config has no `temporal` sub-config; build it with '
                     'video_unet_config().')
  temporal = config.temporal
  layers = tuple(temporal.layers)
  if not layers or len(set(layers)) != len(layers) or not set(layers) <= set(TEMPORAL_LAYERS):
    raise ValueError(f'temporal.layers={layers!r} must be a non-empty subset of '
                     f'{TEMPORAL_LAYERS}.')
  if temporal.merge_strategy not in temporal_lib.MERGE_STRATEGIES:
    raise ValueError(f'temporal.merge_strategy={temporal.merge_strategy!r} is not one of '
                     f'{temporal_lib.MERGE_STRATEGIES}.')
  temporal_lib.check_attention_variant(temporal.attention, 'temporal.attention')
  if temporal.num_heads is not None and temporal.head_dim is not None:
    raise ValueError(f'Set at most one of temporal.num_heads={temporal.num_heads} and '
                     f'temporal.head_dim={temporal.head_dim}.')
  if temporal.depth < 1:
    raise ValueError(f'temporal.depth={temporal.depth} must be at least 1.')
  if temporal.text_context and (config.cross_attention_dim is None or
                                'attention' not in layers):
    raise ValueError('temporal.text_context=True needs a cross_attention_dim (got '
                     f'{config.cross_attention_dim}) and "attention" in temporal.layers '
                     f'(got {layers}).')
  if temporal.regime_conditioning and not ('attention' in layers and temporal.frame_pos_embed):
    raise ValueError('temporal.regime_conditioning=True is embedded with the frame position, '
                     f'so it needs "attention" in temporal.layers (got {layers}) and '
                     f'temporal.frame_pos_embed=True (got {temporal.frame_pos_embed}).')
  if 'attention' in layers:
    for channels, heads in zip(config.block_out_channels, unet_lib.level_heads(config)):
      temporal_heads(channels, temporal.num_heads, temporal.head_dim, heads)


@dataclasses.dataclass(frozen=True)
class VideoBlockOptions(unet_lib.BlockOptions):
  """`BlockOptions` plus the temporal settings every video block shares."""
  temporal_layers: tuple[str, ...]
  merge_strategy: str
  alpha: float
  kernel_size: tuple[int, ...]
  num_heads: int | None
  head_dim: int | None
  depth: int
  frame_pos_embed: bool
  text_context_dim: int | None
  context_frames: bool
  regime: bool
  attention_everywhere: bool
  attention_variant: str


@dataclasses.dataclass(frozen=True)
class FrameInfo:
  """Call-time state of the temporal layers in one U-Net level (the blocks' `extra`)."""
  num_frames: int
  image_only_indicator: jax.Array | None = None  # (b, f) bool
  text_context: jax.Array | None = None  # (b, m, d), only for temporal cross-attention
  regime: jax.Array | None = None  # (b,)
  context_features: jax.Array | None = None  # ((b f), h_l, w_l, C_l) from context_encoder


class TemporalMixin:
  """Inserts temporal layers after the spatial ones of a `unet.UNetLevel` block."""

  @property
  def num_temporal_transformers(self) -> int:
    opts = self.options
    if 'attention' not in opts.temporal_layers:
      return 0
    if self.has_attention:
      return self.num_attention_layers
    return self.num_layers if opts.attention_everywhere else 0

  def make_layers(self):
    super().make_layers()
    opts = self.options
    mixers = lambda count: [temporal_lib.AlphaBlender(opts.merge_strategy, opts.alpha)
                            for _ in range(count)]
    projections = lambda count: [temporal_lib.ContextInjection(self.out_channels, opts.dtype)
                                 for _ in range(count)]
    if 'conv3d' in opts.temporal_layers:
      self.temporal_resnets = [temporal_lib.TemporalResBlock(
          self.out_channels, opts.kernel_size, opts.groups, opts.eps, opts.dropout, opts.dtype)
          for _ in range(self.num_layers)]
      self.time_mixer_resnets = mixers(self.num_layers)
      if opts.context_frames:
        self.context_proj_resnets = projections(self.num_layers)
    count = self.num_temporal_transformers
    if count:
      heads, head_dim = temporal_heads(self.out_channels, opts.num_heads, opts.head_dim,
                                       self.heads)
      self.temporal_transformers = [temporal_lib.TemporalTransformer(
          heads, head_dim, opts.depth, opts.text_context_dim,
          opts.frame_pos_embed, opts.regime, opts.groups, opts.implementation, opts.dtype,
          opts.attention_variant) for _ in range(count)]
      self.time_mixer_transformers = mixers(count)
      if opts.context_frames:
        self.context_proj_transformers = projections(count)

  def mix(self, kind: str, index: int, z, temporal_layer, frames: FrameInfo):
    """`alpha * z + (1 - alpha) * temporal_layer(z, injection=context_proj(c_S features))`."""
    injection = None
    if self.options.context_frames:
      injection = getattr(self, f'context_proj_{kind}')[index](frames.context_features)
    z_temporal = temporal_layer(z, injection)
    return getattr(self, f'time_mixer_{kind}')[index](
        z, z_temporal, frames.image_only_indicator, frames.num_frames)

  def temporal_attention(self, index: int, z, frames: FrameInfo):
    layer = lambda h, injection: self.temporal_transformers[index](
        h, frames.num_frames, frames.text_context, frames.regime, injection)
    return self.mix('transformers', index, z, layer, frames)

  def apply_resnet(self, index, x, temb, deterministic, extra=None):
    z = super().apply_resnet(index, x, temb, deterministic)
    if 'conv3d' in self.options.temporal_layers:
      layer = lambda h, injection: self.temporal_resnets[index](
          h, extra.num_frames, temb, deterministic, injection)
      z = self.mix('resnets', index, z, layer, extra)
    if not self.has_attention and self.num_temporal_transformers:
      z = self.temporal_attention(index, z, extra)
    return z

  def apply_attention(self, index, x, context, extra=None):
    z = super().apply_attention(index, x, context)
    if self.num_temporal_transformers:
      z = self.temporal_attention(index, z, extra)
    return z


class VideoDownBlock(TemporalMixin, unet_lib.DownBlock):
  """`DownBlock` with temporal layers."""


class VideoMidBlock(TemporalMixin, unet_lib.MidBlock):
  """`MidBlock` with temporal layers."""


class VideoUpBlock(TemporalMixin, unet_lib.UpBlock):
  """`UpBlock` with temporal layers."""


class VideoUNet(unet_lib.UNet):
  """Video U-Net `(b, f, h, w, in_channels)` -> `(b, f, h, w, out_channels)`."""

  down_block_cls = VideoDownBlock
  mid_block_cls = VideoMidBlock
  up_block_cls = VideoUpBlock

  def block_options(self) -> VideoBlockOptions:
    base = super().block_options()
    cfg, temporal = self.config, self.config.temporal
    return VideoBlockOptions(
        **{field.name: getattr(base, field.name) for field in dataclasses.fields(base)},
        temporal_layers=tuple(temporal.layers), merge_strategy=temporal.merge_strategy,
        alpha=float(temporal.alpha), kernel_size=tuple(temporal.conv_kernel_size),
        num_heads=temporal.num_heads, head_dim=temporal.head_dim, depth=temporal.depth,
        frame_pos_embed=temporal.frame_pos_embed,
        text_context_dim=cfg.cross_attention_dim if temporal.text_context else None,
        context_frames=temporal.context_frames, regime=temporal.regime_conditioning,
        attention_everywhere=temporal.attention_everywhere,
        attention_variant=temporal.attention)

  def check_video_inputs(self, x, timesteps, context, class_labels, context_latents,
                         context_mask, regime, image_only_indicator):
    """Validates shapes (ValueError naming both numbers); returns timesteps `(b,)`."""
    cfg, temporal = self.config, self.config.temporal
    if x.ndim != 5:
      raise ValueError(f'VideoUNet input has shape {x.shape}; expected (b, f, h, w, '
                       f'{cfg.in_channels}).')
    b, f, h, w, channels = x.shape
    if channels != cfg.in_channels:
      raise ValueError(f'VideoUNet input has {channels} channels; expected '
                       f'in_channels={cfg.in_channels}.')
    factor = 2 ** (len(cfg.block_out_channels) - 1)
    if h % factor or w % factor:
      raise ValueError(f'VideoUNet frame size {(h, w)} is not divisible by {factor}.')
    timesteps = jnp.asarray(timesteps)
    if timesteps.shape not in ((), (b,)):
      raise ValueError(f'timesteps have shape {timesteps.shape}; expected () or ({b},).')
    if (context is not None) != (cfg.cross_attention_dim is not None) or (
        context is not None and (context.ndim != 3 or context.shape[0] != b or
                                 context.shape[-1] != cfg.cross_attention_dim)):
      shape = None if context is None else context.shape
      raise ValueError(f'VideoUNet context has shape {shape}; expected (b={b}, m, '
                       f'{cfg.cross_attention_dim}) (None when cross_attention_dim is None).')
    if class_labels is not None and (not cfg.num_class_embeds or
                                     jnp.shape(class_labels) != (b,)):
      raise ValueError(f'class_labels have shape {jnp.shape(class_labels)}; expected ({b},) '
                       f'and a config with num_class_embeds (got {cfg.num_class_embeds}).')
    if (regime is not None) != temporal.regime_conditioning or (
        regime is not None and jnp.shape(regime) != (b,)):
      shape = None if regime is None else jnp.shape(regime)
      raise ValueError(f'regime has shape {shape}; expected ({b},) exactly when '
                       f'temporal.regime_conditioning (is {temporal.regime_conditioning}).')
    for name, value in (('image_only_indicator', image_only_indicator),
                        ('context_mask', context_mask)):
      if value is not None and jnp.shape(value) != (b, f):
        raise ValueError(f'{name} has shape {jnp.shape(value)}; expected ({b}, {f}) for x '
                         f'with {b} videos of {f} frames.')
    if context_latents is None and context_mask is None:
      return timesteps
    if not temporal.context_frames:
      raise ValueError('context_latents/context_mask were given but '
                       'temporal.context_frames is False.')
    if context_latents is None or context_mask is None:
      raise ValueError('Pass context_latents and context_mask together (or neither, for no '
                       'context frames).')
    expected = (b, f, h, w, cfg.out_channels)
    if context_latents.shape != expected:
      raise ValueError(f'context_latents have shape {context_latents.shape}; expected '
                       f'{expected}: the (b, f, h, w) of x and out_channels={expected[-1]}.')
    return timesteps

  def context_features(self, context_latents, context_mask, video_shape):
    """Per-level `((b f), h_l, w_l, C_l)` encodings of c_S (zeros when not given)."""
    dtype = jnp.dtype(self.config.dtype)
    if context_latents is None:
      context_latents = jnp.zeros(video_shape[:4] + (self.config.out_channels,), dtype)
      context_mask = jnp.zeros(video_shape[:2], dtype)
    c_s = temporal_lib.masked_context(context_latents.astype(dtype), context_mask)
    return temporal_lib.ContextEncoder(tuple(self.config.block_out_channels), dtype,
                                       name='context_encoder')(c_s)

  @nn.compact
  def __call__(self, x, timesteps, context=None, class_labels=None, context_latents=None,
               context_mask=None, regime=None, image_only_indicator=None,
               deterministic: bool = True):
    """Denoises `x (b, f, h, w, c)`; see the module docstring for the conditioning."""
    cfg, temporal = self.config, self.config.temporal
    validate_video_config(cfg)
    timesteps = self.check_video_inputs(x, timesteps, context, class_labels,
                                        context_latents, context_mask, regime,
                                        image_only_indicator)
    b, f = x.shape[:2]
    per_frame = lambda a: einops.repeat(a, 'b ... -> (b f) ...', f=f)
    frames = einops.rearrange(x, 'b f h w c -> (b f) h w c')  # ((b f), h, w, c)
    timesteps = per_frame(jnp.broadcast_to(timesteps, (b,)))  # ((b f),)
    labels = None if class_labels is None else per_frame(jnp.asarray(class_labels))
    temb = self.embed_time(timesteps, labels)  # ((b f), d)
    levels = len(cfg.block_out_channels)
    features = [None] * levels
    if temporal.context_frames:
      features = self.context_features(context_latents, context_mask, x.shape)
    text = None
    if temporal.text_context:
      text = context.astype(jnp.dtype(cfg.dtype))  # (b, m, d)
    extras = [FrameInfo(f, image_only_indicator, text, regime, level_features)
              for level_features in features]
    spatial_context = None if context is None else per_frame(context)  # ((b f), m, d)
    out = self.backbone(frames, temb, spatial_context, deterministic, extras)
    return einops.rearrange(out, '(b f) h w c -> b f h w c', f=f)  # (b, f, h, w, c_out)


def example_inputs(config: ml_collections.ConfigDict, batch_size: int = 1,
                   num_frames: int = 1, size: int | None = None) -> dict[str, jax.Array]:
  """Zero inputs for `VideoUNet(config).init(key, **example_inputs(config))`."""
  size = size or 2 ** (len(config.block_out_channels) - 1)
  b, f = batch_size, num_frames
  inputs = dict(x=jnp.zeros((b, f, size, size, config.in_channels)),
                timesteps=jnp.zeros((b,)))
  if config.cross_attention_dim is not None:
    inputs['context'] = jnp.zeros((b, 1, config.cross_attention_dim))
  if config.temporal.context_frames:
    inputs['context_latents'] = jnp.zeros((b, f, size, size, config.out_channels))
    inputs['context_mask'] = jnp.zeros((b, f))
  if config.temporal.regime_conditioning:
    inputs['regime'] = jnp.zeros((b,))
  return inputs
