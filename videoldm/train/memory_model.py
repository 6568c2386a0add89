"""An analytic model of one train step's bytes per device (video U-Net stages).

Terms: parameters (trainable ones float32, frozen ones in their module's
compute dtype, as `train.state.held_params` holds them), gradients (trainable
only, float32), optimiser state (AdamW: two moments per trainable param), the
EMA copy of the trainable params (when `config.ema_decay` is set), the batch
(cached latents and text context), and the activations the backward pass needs
under the config's remat policy ('' or 'blocks' with 'nothing_saveable' or
'dots_saveable'), plus the working set of the costliest layer's backward.

Activations are counted by walking the U-Net's layers (`unet.UNet.backbone`)
without building it: each layer keeps a fixed number of tensors the size of
its output map (`E`: frames x height x width x channels, compute dtype) and,
for attention, of its score matrices (`S`: heads x queries x keys, float32).
The counts (`_COUNTS`) are what XLA keeps for the backward pass of each layer
type; `bench/memory_model.py` checks the totals against XLA's compiled memory
analysis of the real train step. The model assumes XLA attention (scores
materialised, as `attention_implementation='xla'` gives; None picks cuDNN's
fused kernel on GPU in bf16, which keeps no scores, so there the score terms are
an upper bound) and one device (no data-parallel or FSDP split).
"""

import dataclasses
import re

import flax
import jax
import jax.numpy as jnp
import ml_collections

from videoldm.models import params as params_lib
from videoldm.models import unet as unet_lib
from videoldm.models import video_unet
from videoldm.train import state as state_lib

GIB = 2.0**30
POLICIES = ('none', 'nothing_saveable', 'dots_saveable')

# Saved tensors per layer, in units of the layer's output map E (score terms in S).
# (frozen weights, trainable weights): trainable layers also keep their matmul and
# conv inputs for the weight gradients.
_COUNTS = dict(
    res_in=(3, 4), res_out=(4, 4),  # ResBlock: norm/SiLU inputs, conv outputs.
    wrapper=(3, 4),  # SpatialTransformer norm, proj_in, proj_out and residual.
    self_attn=(7, 9), cross_attn=(4, 6), ff=(17, 22),  # One BasicTransformerBlock.
    scores=(3.5, 3.5),  # Logits, softmax (float32) and probabilities, per score element.
    sample=(0, 1),  # Down/Upsample: the conv input, for its weight gradient.
)
_TEMPORAL_RES = 9  # TemporalResBlock + AlphaBlender (always trainable).
_TEMPORAL_EXTRA = 9  # TemporalTransformer's norm, projections, frame embedding, blender.
_INJECTION = 1  # ContextInjection: the context features' sum with the branch input.
# Matmul (dot_general) outputs per BasicTransformerBlock, kept by 'dots_saveable'.
_DOTS = dict(self_attn=5, cross_attn=3, ff=9, proj=2)
# Backward working set of one layer: activation gradients and score gradients.
_WORK_E, _WORK_S = 4, 2


@dataclasses.dataclass
class Layer:
  """One layer's saved bytes, its 'dots_saveable' share and its backward working set."""
  block: str
  saved: float
  dots: float
  work: float


@dataclasses.dataclass
class MemoryEstimate:
  """Bytes per device of one train step; `total` is the peak estimate."""
  params_trainable: float
  params_frozen: float
  gradients: float
  optimizer: float
  ema: float
  batch: float
  activations: float
  working: float
  policy: str = 'none'

  @property
  def state(self) -> float:
    """The train state (arguments, donated): params, optimiser state and EMA."""
    return self.params_trainable + self.params_frozen + self.optimizer + self.ema

  @property
  def total(self) -> float:
    return self.state + self.batch + self.gradients + self.activations + self.working

  def rows(self) -> list[tuple[str, float]]:
    return [('params (trainable)', self.params_trainable),
            ('params (frozen)', self.params_frozen), ('gradients', self.gradients),
            ('optimiser state', self.optimizer), ('EMA', self.ema), ('batch', self.batch),
            (f'activations ({self.policy})', self.activations),
            ('backward working set', self.working), ('total', self.total)]

  def table(self, unit: float = GIB, unit_name: str = 'GiB') -> str:
    """A Markdown table of the terms."""
    lines = [f'| term | {unit_name} |', '|---|---|']
    lines += [f'| {name} | {value / unit:.3f} |' for name, value in self.rows()]
    return '\n'.join(lines)


def policy_of(model_config: ml_collections.ConfigDict) -> str:
  """'none', 'nothing_saveable' or 'dots_saveable' from `model.remat`/`model.remat_policy`."""
  if not model_config.get('remat', ''):
    return 'none'
  policy = model_config.get('remat_policy', 'nothing_saveable')
  if policy not in POLICIES[1:]:
    raise ValueError(f'model.remat_policy={policy!r} is not modelled; expected one of '
                     f'{POLICIES[1:]}.')
  return policy


def _walk(cfg, frames: int, height: int, width: int, text_length: int,
          spatial_trainable: bool) -> list[Layer]:
  """Every U-Net layer's saved bytes for one video of `frames` latents `height x width`."""
  itemsize = jnp.dtype(cfg.dtype).itemsize
  tr = int(spatial_trainable)
  temporal = cfg.temporal
  layers_kind = tuple(temporal.layers)
  channels = tuple(cfg.block_out_channels)
  levels = len(channels)
  attention = unet_lib.per_level(cfg.attention_levels, levels, 'attention_levels')
  depth = unet_lib.per_level(cfg.transformer_layers_per_block, levels, 'depth')
  heads = unet_lib.level_heads(cfg)
  only_cross = unet_lib.only_cross_levels(cfg)
  cross = cfg.cross_attention_dim is not None
  out = []

  def size(level, c):  # Elements of one map at `level` with `c` channels.
    return frames * (height >> level) * (width >> level) * c

  def transformer_block(n_e, tokens, keys_self, n_heads, has_cross, train):
    """(saved, dots) elements of one BasicTransformerBlock on n_e elements."""
    t = int(train)
    saved = (_COUNTS['self_attn'][t] + _COUNTS['ff'][t]) * n_e
    dots = (_DOTS['self_attn'] + _DOTS['ff']) * n_e + n_heads * tokens * keys_self
    scores = n_heads * tokens * keys_self
    if has_cross:
      saved += _COUNTS['cross_attn'][t] * n_e
      dots += _DOTS['cross_attn'] * n_e + n_heads * tokens * text_length
      scores += n_heads * tokens * text_length
    return saved * itemsize + _COUNTS['scores'][t] * scores * 4, dots * itemsize, scores * 4

  def add(block, saved, dots, work_e, scores=0.0):
    out.append(Layer(block, saved, dots, _WORK_E * work_e * itemsize + _WORK_S * scores))

  def resnet(block, level, c_in, c):
    e_in, e = size(level, c_in), size(level, c)
    add(block, (_COUNTS['res_in'][tr] * e_in + _COUNTS['res_out'][tr] * e) * itemsize, 0, e)
    if 'conv3d' in layers_kind:
      add(block, (_TEMPORAL_RES + _INJECTION * temporal.context_frames) * e * itemsize, 0, e)

  def spatial(block, level, c):
    e, hw = size(level, c), (height >> level) * (width >> level)
    keys = text_length if only_cross[level] else hw
    saved, dots, scores = 0.0, 0.0, 0.0
    for _ in range(depth[level]):
      s, d, sc = transformer_block(e, frames * hw, keys, heads[level], cross, tr)
      saved, dots, scores = saved + s, dots + d, scores + sc
    saved += _COUNTS['wrapper'][tr] * e * itemsize
    dots += _DOTS['proj'] * e * itemsize * cfg.use_linear_projection
    add(block, saved, dots, e, scores)

  def temporal_attention(block, level, c):
    e, hw = size(level, c), (height >> level) * (width >> level)
    n_heads, _ = video_unet.temporal_heads(c, temporal.num_heads, temporal.head_dim,
                                           heads[level])
    saved, dots, scores = 0.0, _DOTS['proj'] * e * itemsize, 0.0
    for _ in range(temporal.depth):
      s, d, sc = transformer_block(e, frames * hw, frames, n_heads, temporal.text_context, True)
      saved, dots, scores = saved + s, dots + d, scores + sc
    saved += (_TEMPORAL_EXTRA + _INJECTION * temporal.context_frames) * e * itemsize
    add(block, saved, dots, e, scores)

  def has_temporal_attention(level):
    return 'attention' in layers_kind and (attention[level] or temporal.attention_everywhere)

  def layer_pair(block, level, c_in, c, with_attention):
    resnet(block, level, c_in, c)
    if not attention[level] and has_temporal_attention(level):
      temporal_attention(block, level, c)
    if with_attention:
      spatial(block, level, c)
      if has_temporal_attention(level):
        temporal_attention(block, level, c)

  skips = [(0, channels[0])]
  c_prev = channels[0]
  for level in range(levels):
    block = f'down_blocks_{level}'
    for _ in range(cfg.layers_per_block):
      layer_pair(block, level, c_prev, channels[level], attention[level])
      c_prev = channels[level]
      skips.append((level, c_prev))
    if level < levels - 1:
      add(block, _COUNTS['sample'][tr] * size(level, c_prev) * itemsize, 0, 0)
      skips.append((level + 1, c_prev))
  # Boundaries every remat policy keeps: the skips, each block's output and the
  # context encoder's per-level maps.
  boundary = sum(size(level, c) for level, c in skips)
  last = levels - 1
  resnet('mid_block', last, channels[-1], channels[-1])
  spatial('mid_block', last, channels[-1])
  if 'attention' in layers_kind:
    temporal_attention('mid_block', last, channels[-1])
  resnet('mid_block', last, channels[-1], channels[-1])
  for index, level in enumerate(reversed(range(levels))):
    block = f'up_blocks_{index}'
    for _ in range(cfg.layers_per_block + 1):
      _, c_skip = skips.pop()
      layer_pair(block, level, c_prev + c_skip, channels[level], attention[level])
      c_prev = channels[level]
    if level > 0:
      add(block, _COUNTS['sample'][tr] * size(level - 1, c_prev) * itemsize, 0, 0)
  boundary += size(last, channels[-1]) * 2  # Mid block input and output.
  boundary += sum(size(level, c) for level, c in enumerate(channels))  # Up block outputs.
  if temporal.context_frames:
    boundary += 2 * sum(size(level, c) for level, c in enumerate(channels))
  out.append(Layer('boundary', boundary * itemsize, 0, 0))
  return out


def activation_bytes(unet_config, batch_size: int, frames: int, height: int, width: int,
                     text_length: int, spatial_trainable: bool,
                     policy: str = 'none') -> tuple[float, float]:
  """(saved activations, backward working set) bytes of the U-Net under `policy`."""
  if policy not in POLICIES:
    raise ValueError(f'policy={policy!r} is not one of {POLICIES}.')
  layers = _walk(unet_config, frames, height, width, text_length, spatial_trainable)
  boundary = sum(layer.saved for layer in layers if layer.block == 'boundary')
  inner = [layer for layer in layers if layer.block != 'boundary']
  work = max(layer.work for layer in inner)
  if policy == 'none':
    saved = boundary + sum(layer.saved for layer in inner)
  else:  # Block inputs/outputs, plus the recomputed activations of the largest block.
    blocks = {}
    for layer in inner:
      blocks[layer.block] = blocks.get(layer.block, 0.0) + layer.saved - (
          layer.dots if policy == 'dots_saveable' else 0.0)
    saved = boundary + max(blocks.values())
    if policy == 'dots_saveable':
      saved += sum(layer.dots for layer in inner)
  return batch_size * saved, batch_size * work


def _nbytes(tree) -> float:
  return float(sum(leaf.size * jnp.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree)))


def estimate(unet_config, param_shapes, trainable: str, batch_size: int, frames: int,
             latent_size: tuple[int, int], text_length: int, ema: bool,
             policy: str = 'none', batch_bytes: float = 0.0,
             frozen_dtypes: dict | None = None) -> MemoryEstimate:
  """The estimate from a video U-Net config and the stage's param shapes (any tree).

  `frozen_dtypes` (top-level name -> dtype) gives the held dtype of frozen params.
  """
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(param_shapes), sep='/')
  regex = re.compile(trainable or '.*')
  trained = {p: v for p, v in flat.items() if regex.search(p)}
  held = lambda p, v: state_lib.frozen_dtype(p, v.dtype, frozen_dtypes or {})
  frozen = {p: jax.ShapeDtypeStruct(v.shape, held(p, v)) for p, v in flat.items()
            if p not in trained}
  spatial_trainable = any(p.startswith('unet/') and not params_lib.is_temporal(p)
                          for p in trained)
  trainable_f32 = 4.0 * sum(v.size for v in trained.values())
  activations, working = activation_bytes(unet_config, batch_size, frames, *latent_size,
                                          text_length, spatial_trainable, policy)
  return MemoryEstimate(
      params_trainable=_nbytes(trained), params_frozen=_nbytes(frozen),
      gradients=trainable_f32, optimizer=2 * trainable_f32,
      ema=_nbytes(trained) if ema else 0.0, batch=batch_bytes, activations=activations,
      working=working, policy=policy)


def unet_frames(config: ml_collections.ConfigDict) -> int:
  """Frames per U-Net call: the interpolation window, else the clip."""
  if config.stage.endswith('interpolation'):
    return 4 * (config.model.interpolation.num_key_frames - 1) + 1
  return config.data.num_frames


def estimate_from_config(config: ml_collections.ConfigDict, stage, batch_size: int | None = None,
                         policy: str | None = None, param_shapes=None) -> MemoryEstimate:
  """The estimate of a text stage (`configs/sd_video.py`) trained on cached latents.

  `stage` is the built stage (`stages.get_stage(config.stage)(config)`); param
  shapes come from `jax.eval_shape` of its `init_params` (nothing is allocated)
  unless given.
  """
  batch_size = config.batch_size if batch_size is None else batch_size
  h, w = stage.latent_size()
  frames = unet_frames(config)
  text_length = stage.text_length
  unet_config = config.model.unet
  shapes = param_shapes or jax.eval_shape(stage.init_params, jax.random.key(0), {})
  latent_channels = stage.autoencoder.config.latent_channels
  cross = unet_config.cross_attention_dim or 0
  batch = 4 * batch_size * (2 * config.data.num_frames * h * w * latent_channels
                            + text_length * cross)
  return estimate(unet_config, shapes, config.trainable, batch_size, frames, (h, w),
                  text_length, config.ema_decay is not None,
                  policy or policy_of(config.model), batch,
                  state_lib.compute_dtypes(config.model))
