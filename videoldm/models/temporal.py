"""Temporal layers of the Video LDM (paper Sec. 3.1-3.3, Fig. 4).

Spatial layers see a video as frames `(b f) h w c`; every module here takes
that layout plus `num_frames` and rearranges internally to see time. Output
projections are zero-initialised, so a fresh `TemporalTransformer` or
`TemporalResBlock` returns its input exactly and blending gives back the image
model. Each temporal layer returns the temporal branch `z'`; the caller blends:

  z = spatial_layer(x)                                  # (b f) h w c
  z_temporal = temporal_layer(z, num_frames, ...)       # same shape
  out = AlphaBlender(...)(z, z_temporal, image_only_indicator)
      = alpha * z + (1 - alpha) * z_temporal

Instance names the parent should use (the trainable regex needs `temporal`,
`time_mixer`, `time_pos_embed` or `context_` in each path), as siblings of
the spatial layer they follow (e.g. inside `down_blocks_0`):
  after `resnets_{i}`:      `temporal_resnets_{i}` + `time_mixer_resnets_{i}`
  after `attentions_{i}`:   `temporal_transformers_{i}` + `time_mixer_transformers_{i}`
  temporal decoder:         the same names; `TemporalResBlock` gets temb=None.
Prediction / interpolation models (Sec. 3.2, 3.3) add one `context_encoder`
at the top of the U-Net, fed `masked_context(latents, mask)`, and next to each
temporal layer a `ContextInjection` named `context_proj_resnets_{i}` /
`context_proj_transformers_{i}`; at resolution level l (0 = latent size) the
context enters the temporal branch only, not its skip:
  injection = context_proj(features[l])
  z_temporal = temporal_layer(z, num_frames, ..., injection=injection)
             = z + residual(z + injection)              # residual zero at init
  out = time_mixer(z, z_temporal, image_only_indicator)
so a fresh model is the image model, yet the zero-initialised output of the
residual already gets a gradient that depends on the context frames.
Inside, `TemporalTransformer` holds `time_pos_embed` (frame embedding MLP).
"""

import math
import operator
from typing import Sequence

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from videoldm.models import attention
from videoldm.models import layers

MERGE_STRATEGIES = ('fixed', 'learned', 'learned_with_images')
# Which tokens a temporal-attention token attends to (`TemporalTransformer.attention_variant`).
ATTENTION_VARIANTS = ('temporal', 'full', 'causal', 'sparse_causal')


def _num_videos(batch_frames: int, num_frames) -> int:
  """Returns b for a `(b f)` batch; ValueError unless f is a positive divisor."""
  try:
    num_frames = operator.index(num_frames)
  except TypeError:
    raise ValueError(f'num_frames={num_frames!r} must be a positive integer.') from None
  if num_frames < 1:
    raise ValueError(f'num_frames={num_frames} must be a positive integer.')
  if batch_frames % num_frames:
    raise ValueError(f'The (b f) batch of {batch_frames} frames is not divisible by '
                     f'num_frames={num_frames}.')
  return batch_frames // num_frames


def check_attention_variant(variant: str, name: str = 'attention_variant') -> None:
  if variant not in ATTENTION_VARIANTS:
    raise ValueError(f'{name}={variant!r} is not one of {ATTENTION_VARIANTS}.')


def space_time_attention(variant: str, num_frames: int,
                         implementation: str | None = None) -> attention.AttentionFn:
  """Attention over the tokens of whole clips, `(b, (f n), heads, d)` with n = h w per frame.

  'full': every token attends to all f n tokens of its clip. 'causal': a token of
  frame k attends to the tokens of frames 0..k; run as a loop over query frames, each
  with a key mask, so the scores held at once are n x f n, not (f n)^2. 'sparse_causal':
  a token of frame k attends to the tokens of frames {0, k - 1, k} (a set: frame 0
  attends to itself, frame 1 to frames 0 and 1); the three frames' keys are gathered,
  so time and memory grow linearly in f. Full and causal still cost (f n)^2 FLOPs.
  'temporal' gives None: the block's own attention over frames at each location.
  """
  check_attention_variant(variant)
  f = num_frames

  def full(q, k, v):
    return attention.dot_product_attention(q, k, v, implementation=implementation)

  def causal(q, k, v):
    n = q.shape[1] // f
    key_frames = jnp.repeat(jnp.arange(f), n)  # (f n,)
    queries = einops.rearrange(q, 'b (f n) h d -> f b n h d', f=f)

    def one_frame(args):
      frame_queries, frame = args
      mask = (key_frames <= frame)[None]  # (1, f n): frames 0..k, for every example.
      return attention.dot_product_attention(frame_queries, k, v, mask, implementation)

    out = jax.lax.map(one_frame, (queries, jnp.arange(f)))  # (f, b, n, heads, d)
    return einops.rearrange(out, 'f b n h d -> b (f n) h d')

  def sparse_causal(q, k, v):
    frames = jnp.arange(f)
    chosen = jnp.stack([jnp.zeros_like(frames), jnp.maximum(frames - 1, 0), frames],
                       1)  # (f, 3): frames 0, k - 1, k
    # Each frame of {0, k - 1, k} counts once: k - 1 only from k = 2, k itself from k = 1.
    valid = jnp.stack([frames >= 0, frames >= 2, frames >= 1], 1)  # (f, 3)
    b, n = q.shape[0], q.shape[1] // f
    gather = lambda t: einops.rearrange(
        einops.rearrange(t, 'b (f n) h d -> b f n h d', f=f)[:, chosen],
        'b f s n h d -> (b f) (s n) h d')  # ((b f), 3 n, heads, d)
    mask = einops.repeat(valid, 'f s -> (b f) (s n)', b=b, n=n)  # ((b f), 3 n)
    queries = einops.rearrange(q, 'b (f n) h d -> (b f) n h d', f=f)
    out = attention.dot_product_attention(queries, gather(k), gather(v), mask, implementation)
    return einops.rearrange(out, '(b f) n h d -> b (f n) h d', f=f)

  return {'full': full, 'causal': causal, 'sparse_causal': sparse_causal}.get(variant)


def _check_groups(channels: int, groups: int) -> None:
  if channels % groups:
    raise ValueError(f'{channels} channels cannot be split into {groups} GroupNorm groups; '
                     'channels must be a multiple of groups.')


def _check_frames_input(x: jax.Array, name: str) -> None:
  if x.ndim != 4:
    raise ValueError(f'{name} expects frames of shape ((b f), h, w, c), got shape {x.shape}.')


def _check_injection(x: jax.Array, injection: jax.Array | None, name: str) -> None:
  if injection is not None and injection.shape != x.shape:
    raise ValueError(f'{name} injection has shape {injection.shape}; expected the input '
                     f'shape {x.shape}.')


class AlphaBlender(nn.Module):
  """Merges branches as `alpha * x_spatial + (1 - alpha) * x_temporal`.

  `merge_strategy`:
    'fixed': alpha is the constant `alpha` (any value in [0, 1]; 1 = image model).
    'learned': alpha = sigmoid(mix_factor), param `mix_factor` of shape (1,)
      initialised to logit(alpha) = log(alpha / (1 - alpha)), so the initial
      alpha equals the config value (which must lie strictly in (0, 1)).
      (diffusers/sgm store the same param but initialise it to `alpha` itself.)
    'learned_with_images': as 'learned', but alpha = 1 on frames whose
      `image_only_indicator` (bool `(b, f)`) is True; None means all video.
      The other strategies ignore the indicator (as diffusers/sgm do).
  Inputs are `(b f) ...` tensors of equal shape.
  """

  merge_strategy: str = 'learned'
  alpha: float = 0.5

  @nn.compact
  def __call__(self, x_spatial: jax.Array, x_temporal: jax.Array,
               image_only_indicator: jax.Array | None = None,
               num_frames: int | None = None) -> jax.Array:
    if self.merge_strategy not in MERGE_STRATEGIES:
      raise ValueError(f'Unknown merge_strategy {self.merge_strategy!r}; expected one of '
                       f'{MERGE_STRATEGIES}.')
    if x_spatial.shape != x_temporal.shape:
      raise ValueError(f'Spatial branch shape {x_spatial.shape} differs from temporal branch '
                       f'shape {x_temporal.shape}.')
    if self.merge_strategy == 'fixed':
      if not 0.0 <= self.alpha <= 1.0:
        raise ValueError(f'Fixed alpha={self.alpha} must lie in [0, 1].')
      alpha = jnp.asarray(self.alpha, jnp.float32)
    else:
      if not 0.0 < self.alpha < 1.0:
        raise ValueError(f'Learned alpha={self.alpha} must lie strictly inside (0, 1) '
                         'to have a finite logit.')
      logit = math.log(self.alpha / (1.0 - self.alpha))
      mix_factor = self.param('mix_factor', lambda _, shape: jnp.full(shape, logit, jnp.float32), (1,))
      alpha = jax.nn.sigmoid(mix_factor[0])
    if self.merge_strategy == 'learned_with_images' and image_only_indicator is not None:
      indicator = jnp.asarray(image_only_indicator, bool)
      if indicator.ndim != 2 or indicator.size != x_spatial.shape[0] or (
          num_frames is not None and indicator.shape[1] != num_frames):
        raise ValueError(f'image_only_indicator has shape {indicator.shape}; expected (b, f) '
                         f'with b * f = {x_spatial.shape[0]} frames'
                         f'{"" if num_frames is None else f" and f = {num_frames}"}.')
      alpha = jnp.where(indicator.reshape(-1), 1.0, alpha)  # ((b f),)
      alpha = alpha.reshape((-1,) + (1,) * (x_spatial.ndim - 1))
    alpha = alpha.astype(x_spatial.dtype)
    return alpha * x_spatial + (1 - alpha) * x_temporal


class FramePositionEmbedding(nn.Module):
  """Sinusoidal frame-index embedding + MLP (`linear_1` -> SiLU -> `linear_2`).

  Returns `(b, f, dim)`. With `use_regime`, a scalar per example (e.g. the
  interpolation regime / fps, `(b,)`) is embedded sinusoidally, projected by
  the zero-initialised Dense `regime_proj` (so the sum is not symmetric in
  frame index and regime) and added before the MLP; `regime` is then required.
  """

  dim: int
  hidden_dim: int | None = None  # Default 4 * dim.
  use_regime: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, num_frames: int, batch: int,
               regime: jax.Array | None = None) -> jax.Array:
    if self.use_regime != (regime is not None):
      raise ValueError(f'FramePositionEmbedding(use_regime={self.use_regime}) was called '
                       f'with regime={"None" if regime is None else "an array"}; pass a '
                       'regime exactly when use_regime is True.')
    frames = layers.timestep_embedding(jnp.arange(num_frames), self.dim)  # (f, dim)
    embedding = jnp.broadcast_to(frames[None], (batch, num_frames, self.dim))
    if regime is not None:
      regime = jnp.asarray(regime)
      if regime.shape != (batch,):
        raise ValueError(f'regime has shape {regime.shape}; expected ({batch},), one value '
                         'per video.')
      regime_embedding = nn.Dense(self.dim, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                                  name='regime_proj')(layers.timestep_embedding(regime, self.dim))
      embedding = embedding + regime_embedding[:, None, :]  # (b, f, dim)
    hidden = nn.Dense(self.hidden_dim or 4 * self.dim, dtype=self.dtype, name='linear_1')(
        embedding)
    return nn.Dense(self.dim, dtype=self.dtype, name='linear_2')(nn.silu(hidden))


class TemporalTransformer(nn.Module):
  """Temporal self-attention layer (paper Fig. 4); returns `z' = x + residual`.

  `(b f) h w c` (+ `injection`, context features of the same shape, in the
  residual branch only) -> GroupNorm `norm` (per frame) -> Dense `proj_in` to
  `num_heads * head_dim` -> + `time_pos_embed` (frame index, optional regime)
  -> `depth` x `attention.BasicTransformerBlock` (`transformer_blocks_{i}`) on
  `(b, h w, f, c)`, self-attending over frames and cross-attending (with
  `context_dim`) to the text -> zero-initialised Dense `proj_out` -> + x.
  `context` is text `(b, m, context_dim)` (or per frame `((b f), m, d)`, of
  which each video's first frame is used), shared by all spatial locations.

  `attention_variant` picks whom the self-attention sees (same params for all):
    'temporal': each location attends over its own f frames (Video LDM);
    'full': each token attends to all f h w tokens of the clip (VDM, Make-A-Video);
    'causal': tokens of frame k attend to all tokens of frames 0..k (MagicVideo);
    'sparse_causal': tokens of frame k attend to all tokens of frames 0, k - 1
      and k (Tune-A-Video).
  The last three attend over `(b, (f h w), c)` tokens (`space_time_attention`);
  'full' and 'causal' cost (f h w)^2, against h w f^2 for 'temporal'.
  """

  num_heads: int
  head_dim: int
  depth: int = 1
  context_dim: int | None = None
  use_frame_pos_embed: bool = True
  use_regime: bool = False
  norm_groups: int = 32
  attention_implementation: str | None = None
  dtype: jnp.dtype = jnp.float32
  attention_variant: str = 'temporal'

  @nn.compact
  def __call__(self, x: jax.Array, num_frames: int, context: jax.Array | None = None,
               regime: jax.Array | None = None,
               injection: jax.Array | None = None) -> jax.Array:
    check_attention_variant(self.attention_variant, 'TemporalTransformer attention_variant')
    _check_frames_input(x, 'TemporalTransformer')
    _check_injection(x, injection, 'TemporalTransformer')
    batch_frames, height, width, channels = x.shape
    b = _num_videos(batch_frames, num_frames)
    _check_groups(channels, self.norm_groups)
    context = self._video_context(context, b, num_frames)
    inner = self.num_heads * self.head_dim
    hidden = x if injection is None else x + injection
    hidden = layers.group_norm(self.norm_groups, 1e-6, self.dtype, 'norm')(hidden)
    hidden = nn.Dense(inner, dtype=self.dtype, name='proj_in')(hidden)
    hidden = einops.rearrange(hidden, '(b f) h w c -> b (h w) f c', f=num_frames)
    if self.use_frame_pos_embed:
      embedding = FramePositionEmbedding(inner, use_regime=self.use_regime, dtype=self.dtype,
                                         name='time_pos_embed')(num_frames, b, regime)
      hidden = hidden + embedding[:, None]  # (b, 1, f, inner)
    self_attention_fn = None
    if self.attention_variant != 'temporal':
      self_attention_fn = space_time_attention(self.attention_variant, num_frames,
                                               self.attention_implementation)
      hidden = einops.rearrange(hidden, 'b (h w) f c -> b (f h w) c', h=height)
    for index in range(self.depth):
      hidden = attention.BasicTransformerBlock(
          inner, self.num_heads, self.head_dim, cross_attention=self.context_dim is not None,
          implementation=self.attention_implementation, dtype=self.dtype,
          name=f'transformer_blocks_{index}')(hidden, context,
                                              self_attention_fn=self_attention_fn)
    if self.attention_variant != 'temporal':
      hidden = einops.rearrange(hidden, 'b (f h w) c -> b (h w) f c', h=height, w=width)
    hidden = nn.Dense(channels, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                      name='proj_out')(hidden)
    hidden = einops.rearrange(hidden, 'b (h w) f c -> (b f) h w c', h=height, w=width)
    return (x + hidden).astype(x.dtype)

  def _video_context(self, context: jax.Array | None, b: int, num_frames: int):
    """Validates text context and returns it per video `(b, m, d)`."""
    if (self.context_dim is None) != (context is None):
      raise ValueError(f'TemporalTransformer(context_dim={self.context_dim}) got '
                       f'{"no context" if context is None else "a context"}; pass a context '
                       'exactly when context_dim is set.')
    if context is None:
      return None
    if context.ndim != 3 or context.shape[-1] != self.context_dim:
      raise ValueError(f'Context has shape {context.shape}; expected (b, m, {self.context_dim}) '
                       f'with context_dim={self.context_dim}.')
    if context.shape[0] == b:
      return context
    if context.shape[0] == b * num_frames:
      return einops.rearrange(context, '(b f) m d -> b f m d', f=num_frames)[:, 0]
    raise ValueError(f'Context batch {context.shape[0]} matches neither {b} videos nor '
                     f'{b * num_frames} frames.')


class TemporalResBlock(nn.Module):
  """Residual block of 3D convolutions over `b f h w c`; returns `z' = x + residual`.

  GroupNorm `norm1` + SiLU + conv3d `conv1`, + `time_emb_proj(silu(temb))`,
  GroupNorm `norm2` + SiLU + dropout + zero-initialised conv3d `conv2`.
  GroupNorm statistics span the whole clip (as PyTorch GroupNorm on
  `b c f h w`). Convs pad `k // 2` on every axis, so any frame count works.
  `temb` is per example `(b, d)` or per frame `((b f), d)`; pass None (the
  temporal decoder) to build the block without `time_emb_proj`. `injection`
  (context features shaped like `x`) is added to the residual branch's input.
  Input channels must equal `out_channels` (the result is blended with `x`).
  """

  out_channels: int
  kernel_size: Sequence[int] = (3, 3, 3)
  groups: int = 32
  eps: float = 1e-5
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, num_frames: int, temb: jax.Array | None = None,
               deterministic: bool = True, injection: jax.Array | None = None) -> jax.Array:
    _check_frames_input(x, 'TemporalResBlock')
    _check_injection(x, injection, 'TemporalResBlock')
    batch_frames, channels = x.shape[0], x.shape[-1]
    b = _num_videos(batch_frames, num_frames)
    if channels != self.out_channels:
      raise ValueError(f'TemporalResBlock input has {channels} channels; expected '
                       f'out_channels={self.out_channels}.')
    _check_groups(channels, self.groups)
    if len(self.kernel_size) != 3 or any(k < 1 or k % 2 == 0 for k in self.kernel_size):
      raise ValueError(f'kernel_size={tuple(self.kernel_size)} must be three positive odd '
                       'numbers (frames, height, width).')
    self._check_temb_params(temb)
    padding = tuple((k // 2, k // 2) for k in self.kernel_size)  # 'SAME' in f, h and w.
    conv = lambda name, init=nn.initializers.lecun_normal(): layers.FrameTapConv(
        self.out_channels, tuple(self.kernel_size), padding=padding, kernel_init=init,
        dtype=self.dtype, name=name)
    branch = x if injection is None else x + injection
    video = einops.rearrange(branch, '(b f) h w c -> b f h w c', f=num_frames)
    hidden = layers.group_norm(self.groups, self.eps, self.dtype, 'norm1')(video)
    hidden = conv('conv1')(nn.silu(hidden))
    if temb is not None:
      temb = nn.Dense(self.out_channels, dtype=self.dtype, name='time_emb_proj')(nn.silu(temb))
      if temb.shape[0] == batch_frames:
        temb = einops.rearrange(temb, '(b f) c -> b f c', f=num_frames)
      elif temb.shape[0] == b:
        temb = temb[:, None]  # (b, 1, c)
      else:
        raise ValueError(f'temb batch {temb.shape[0]} matches neither {b} videos nor '
                         f'{batch_frames} frames.')
      hidden = hidden + temb[:, :, None, None, :]  # (b, f or 1, 1, 1, c)
    hidden = layers.group_norm(self.groups, self.eps, self.dtype, 'norm2')(hidden)
    hidden = nn.Dropout(self.dropout)(nn.silu(hidden), deterministic=deterministic)
    hidden = conv('conv2', nn.initializers.zeros)(hidden)
    hidden = einops.rearrange(hidden, 'b f h w c -> (b f) h w c')
    return (x + hidden).astype(x.dtype)

  def _check_temb_params(self, temb: jax.Array | None) -> None:
    if self.is_initializing():
      return
    has_proj = 'time_emb_proj' in self.variables.get('params', {})
    if has_proj != (temb is not None):
      raise ValueError(f'TemporalResBlock was initialised {"with" if has_proj else "without"} '
                       f'a timestep embedding but called {"without" if has_proj else "with"} '
                       'one; pass temb consistently.')


def masked_context(latents: jax.Array, mask: jax.Array) -> jax.Array:
  """`c_S = concat(m_S * z, m_S)` (Eq. 3): `(b, f, h, w, c)`, mask `(b, f)` -> `(..., c + 1)`."""
  mask = jnp.asarray(mask)
  if latents.ndim != 5 or mask.shape != latents.shape[:2]:
    raise ValueError(f'Latents {latents.shape} and mask {mask.shape} must have shapes '
                     '(b, f, h, w, c) and (b, f).')
  mask = jnp.broadcast_to(mask.astype(latents.dtype)[:, :, None, None, None],
                          latents.shape[:4] + (1,))  # (b, f, h, w, 1)
  return jnp.concatenate([latents * mask, mask], axis=-1)


class ContextEncoder(nn.Module):
  """Learned per-frame downsampling of `c_S` (paper Sec. 3.2, Fig. 4).

  `(b, f, h, w, c_z + 1)` -> list with one `((b f), h_l, w_l, channels_per_level[l])`
  map per U-Net level: level 0 at latent resolution (3x3 `conv_in` + SiLU),
  each next level a 3x3 stride-2 conv `down_convs_{l-1}` (padding 1, so
  `h_l = ceil(h_{l-1} / 2)` like the U-Net's `Downsample`) + SiLU.
  """

  channels_per_level: Sequence[int]
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, context: jax.Array) -> list[jax.Array]:
    if context.ndim != 5:
      raise ValueError(f'ContextEncoder expects c_S of shape (b, f, h, w, c + 1), got shape '
                       f'{context.shape}.')
    if not self.channels_per_level:
      raise ValueError('ContextEncoder needs at least one level in channels_per_level.')
    frames = einops.rearrange(context, 'b f h w c -> (b f) h w c')
    hidden = nn.silu(layers.conv3x3(self.channels_per_level[0], self.dtype, 'conv_in')(frames))
    features = [hidden]
    for level, channels in enumerate(self.channels_per_level[1:]):
      hidden = layers.conv3x3(channels, self.dtype, f'down_convs_{level}', strides=2)(hidden)
      hidden = nn.silu(hidden)
      features.append(hidden)
    return features


class ContextInjection(nn.Module):
  """1x1 conv (params `kernel (1, 1, C_l, channels)`, LeCun-normal; `bias`, zero).

  Maps context features `((b f), h, w, C_l)` to the temporal layer's width.
  The result feeds the temporal residual branch, whose output projection is
  zero at init, so a fresh model still ignores the context; a non-zero kernel
  lets that output projection learn from the context from the first step.
  """

  channels: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, features: jax.Array) -> jax.Array:
    _check_frames_input(features, 'ContextInjection')
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (1, 1, features.shape[-1], self.channels))
    bias = self.param('bias', nn.initializers.zeros, (self.channels,))
    features = features.astype(self.dtype)
    return jnp.einsum('...i,io->...o', features, kernel[0, 0].astype(self.dtype)) + bias.astype(
        self.dtype)
