"""Conversion to and from diffusers checkpoints (state dicts of numpy arrays).

U-Net: `UNet2DConditionModel` <-> `videoldm.models.unet.UNet`. Configs are the
plain dicts of `model.config`; features our U-Net does not have (e.g. SDXL
added embeddings) raise a ValueError naming the config key. Weights convert
strictly through `videoldm.convert.common`.
"""

from typing import Any, Mapping

import jax
import ml_collections
import numpy as np

from videoldm.convert import common
from videoldm.models import unet as unet_lib

# diffusers UNet2DConditionModel config keys we map, and keys that must keep
# these values because the Flax U-Net implements only them.
_UNET_REQUIRED = {
    'act_fn': 'silu', 'addition_embed_type': None, 'addition_time_embed_dim': None,
    'attention_type': 'default', 'center_input_sample': False,
    'class_embed_type': None, 'class_embeddings_concat': False,
    'conv_in_kernel': 3, 'conv_out_kernel': 3, 'cross_attention_norm': None,
    'downsample_padding': 1, 'dual_cross_attention': False,
    'encoder_hid_dim': None, 'encoder_hid_dim_type': None,
    'mid_block_scale_factor': 1, 'mid_block_type': 'UNetMidBlock2DCrossAttn',
    'projection_class_embeddings_input_dim': None,
    'resnet_out_scale_factor': 1.0, 'resnet_skip_time_act': False,
    'reverse_transformer_layers_per_block': None,
    'time_cond_proj_dim': None, 'time_embedding_act_fn': None,
    'time_embedding_dim': None, 'time_embedding_type': 'positional',
    'timestep_post_act': None,
}
# Keys with no effect on the parameters or on float32 outputs.
_UNET_IGNORED = {'sample_size', 'upcast_attention', 'addition_embed_type_num_heads',
                 'mid_block_only_cross_attention'}
_UNET_MAPPED = {
    'in_channels', 'out_channels', 'block_out_channels', 'layers_per_block',
    'down_block_types', 'up_block_types', 'attention_head_dim',
    'num_attention_heads', 'transformer_layers_per_block', 'cross_attention_dim',
    'use_linear_projection', 'num_class_embeds', 'flip_sin_to_cos', 'freq_shift',
    'norm_num_groups', 'norm_eps', 'dropout', 'resnet_time_scale_shift',
    'only_cross_attention',
}
_DOWN_TYPES = {'CrossAttnDownBlock2D': True, 'DownBlock2D': False}
_UP_TYPES = {'CrossAttnUpBlock2D': True, 'UpBlock2D': False}


def _check_unet_keys(cfg: Mapping[str, Any]) -> None:
  for key, value in cfg.items():
    if key.startswith('_') or key in _UNET_IGNORED or key in _UNET_MAPPED:
      continue
    if key not in _UNET_REQUIRED:
      raise ValueError(f'diffusers U-Net config key {key!r} is not supported.')
    required = _UNET_REQUIRED[key]
    if value != required and not (isinstance(required, (int, float)) and
                                  isinstance(value, (int, float)) and
                                  float(value) == float(required)):
      raise ValueError(f'diffusers U-Net config {key}={value!r} is not supported; '
                       f'expected {required!r}.')


def _uniform(value, name: str):
  """An int (or a per-level list whose entries are all equal) as an int."""
  if isinstance(value, (list, tuple)):
    if len(set(value)) != 1:
      raise ValueError(f'diffusers U-Net config {name}={value!r} must be the same '
                       'for every level.')
    return value[0]
  return value


def unet_config_from_diffusers(cfg: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """Our U-Net config from a diffusers `UNet2DConditionModel` config dict."""
  _check_unet_keys(cfg)
  channels = tuple(cfg['block_out_channels'])
  levels = len(channels)
  down = tuple(cfg.get('down_block_types', ()))
  up = tuple(cfg.get('up_block_types', ()))
  if len(down) != levels or any(t not in _DOWN_TYPES for t in down):
    raise ValueError(f'diffusers down_block_types {down} must be {levels} of '
                     f'{sorted(_DOWN_TYPES)}.')
  attention_levels = tuple(_DOWN_TYPES[t] for t in down)
  if len(up) != levels or tuple(_UP_TYPES.get(t) for t in reversed(up)) != attention_levels:
    raise ValueError(f'diffusers up_block_types {up} must mirror down_block_types {down}.')
  # diffusers: `num_attention_heads or attention_head_dim`, both head counts.
  heads = cfg.get('num_attention_heads') or cfg.get('attention_head_dim', 8)
  heads = tuple(heads) if isinstance(heads, (list, tuple)) else (heads,) * levels
  depth = cfg.get('transformer_layers_per_block', 1)
  depth = tuple(depth) if isinstance(depth, (list, tuple)) else (depth,) * levels
  if any(isinstance(d, (list, tuple)) for d in depth):
    raise ValueError(f'diffusers transformer_layers_per_block={depth!r} must hold '
                     'one int per level.')
  config = unet_lib.unet_config('tiny')
  config.update(dict(
      in_channels=cfg.get('in_channels', 4), out_channels=cfg.get('out_channels', 4),
      block_out_channels=channels, layers_per_block=_uniform(
          cfg.get('layers_per_block', 2), 'layers_per_block'),
      attention_levels=attention_levels, num_attention_heads=heads,
      transformer_layers_per_block=depth,
      cross_attention_dim=_uniform(cfg.get('cross_attention_dim', 1280),
                                   'cross_attention_dim'),
      use_linear_projection=bool(cfg.get('use_linear_projection', False)),
      flip_sin_to_cos=bool(cfg.get('flip_sin_to_cos', True)),
      freq_shift=float(cfg.get('freq_shift', 0)),
      norm_num_groups=cfg.get('norm_num_groups', 32),
      norm_eps=float(cfg.get('norm_eps', 1e-5)),
      dropout=float(cfg.get('dropout', 0.0)),
      resnet_time_scale_shift=cfg.get('resnet_time_scale_shift', 'default')))
  only_cross = cfg.get('only_cross_attention', False)  # A bool, or one per level.
  if not isinstance(only_cross, (list, tuple)):
    only_cross = (only_cross,) * levels
  config.only_cross_attention = tuple(map(bool, only_cross)) if any(only_cross) else ()
  if cfg.get('num_class_embeds') is not None:
    config.num_class_embeds = cfg['num_class_embeds']
  unet_lib.validate_config(config)
  return config


def unet_config_to_diffusers(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """A diffusers `UNet2DConditionModel(**cfg)` config dict for our U-Net config."""
  unet_lib.validate_config(config)
  if config.cross_attention_dim is None:
    raise ValueError('A U-Net with cross_attention_dim=None (self-attention only) '
                     'has no diffusers UNet2DConditionModel equivalent.')
  heads = list(unet_lib.level_heads(config))
  levels = len(config.block_out_channels)
  attention = unet_lib.per_level(config.attention_levels, levels, 'attention_levels')
  depth = unet_lib.per_level(config.transformer_layers_per_block, levels,
                              'transformer_layers_per_block')
  return dict(
      in_channels=config.in_channels, out_channels=config.out_channels,
      block_out_channels=list(config.block_out_channels),
      layers_per_block=config.layers_per_block,
      down_block_types=['CrossAttnDownBlock2D' if a else 'DownBlock2D' for a in attention],
      up_block_types=['CrossAttnUpBlock2D' if a else 'UpBlock2D'
                      for a in reversed(attention)],
      attention_head_dim=heads[0] if len(set(heads)) == 1 else heads,
      transformer_layers_per_block=list(depth),
      cross_attention_dim=config.cross_attention_dim,
      use_linear_projection=config.use_linear_projection,
      num_class_embeds=config.num_class_embeds,
      flip_sin_to_cos=config.flip_sin_to_cos, freq_shift=config.freq_shift,
      norm_num_groups=config.norm_num_groups, norm_eps=config.norm_eps,
      dropout=config.dropout,
      resnet_time_scale_shift=config.get('resnet_time_scale_shift', 'default'),
      # A list, so diffusers' mid block (which ignores it) is not told True.
      only_cross_attention=list(unet_lib.only_cross_levels(config)))


def unet_param_shapes(config: ml_collections.ConfigDict):
  """The 'params' tree of `UNet(config)` as `jax.ShapeDtypeStruct`s (no FLOPs)."""
  model = unet_lib.UNet(config)
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          **unet_lib.example_inputs(config))
  return shapes['params']


def unet_from_diffusers(state_dict: Mapping[str, Any], config: Mapping[str, Any]):
  """(UNet module, params) from a diffusers U-Net state dict and config dict.

  Raises:
    ValueError: naming unsupported config keys or every missing, unexpected or
      mis-shaped tensor.
  """
  unet_config = unet_config_from_diffusers(config)
  arrays = {k: np.asarray(v) for k, v in state_dict.items()}
  params = common.state_dict_to_params(arrays, unet_param_shapes(unet_config))
  return unet_lib.UNet(unet_config), params


def unet_to_diffusers(params, config: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """A diffusers U-Net state dict (numpy) from our params; strict on names/shapes.

  `config` is the diffusers config dict the state dict is meant for.
  """
  state_dict = common.params_to_state_dict(params)
  # The strict loader names every missing, unexpected or mis-shaped tensor.
  common.state_dict_to_params(
      state_dict, unet_param_shapes(unet_config_from_diffusers(config)))
  return state_dict
