"""diffusers `AutoencoderKL` state dicts <-> `videoldm.models.autoencoder.AutoencoderKL`.

Current diffusers names convert mechanically. Checkpoints saved before diffusers
0.14 name the mid-block attention `query`/`key`/`value`/`proj_attn`; those are
renamed to `to_q`/`to_k`/`to_v`/`to_out.0` on the way in.
"""

import re
import typing

import jax
import jax.numpy as jnp
import numpy as np

from videoldm.convert import common
from videoldm.models import autoencoder

_OLD_ATTENTION = re.compile(r'(\.attentions\.\d+\.)(query|key|value|proj_attn)\.')
_OLD_TO_NEW = dict(query='to_q.', key='to_k.', value='to_v.', proj_attn='to_out.0.')


def _as_config(config) -> autoencoder.AutoencoderConfig:
  if isinstance(config, autoencoder.AutoencoderConfig):
    return config
  return autoencoder.autoencoder_config_from_diffusers(config)


def _rename_old_attention(name: str) -> str:
  return _OLD_ATTENTION.sub(lambda m: m.group(1) + _OLD_TO_NEW[m.group(2)], name)


def autoencoder_param_shapes(config: autoencoder.AutoencoderConfig):
  """The 'params' tree of `AutoencoderKL(config)` as `jax.ShapeDtypeStruct`s."""
  model = autoencoder.AutoencoderKL(config)
  size = config.downsampling_factor
  x = jnp.zeros((1, size, size, config.in_channels), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), x)['params']


def autoencoder_from_diffusers(
    state_dict: typing.Mapping[str, np.ndarray],
    config: typing.Mapping | autoencoder.AutoencoderConfig,
) -> tuple[autoencoder.AutoencoderKL, dict]:
  """Builds `AutoencoderKL` and its params from a diffusers state dict.

  Args:
    state_dict: parameter name -> numpy array (diffusers `AutoencoderKL` names).
    config: the diffusers config dict (`vae/config.json`) or an `AutoencoderConfig`.

  Returns:
    `(module, params)`; e.g. `module.apply({'params': params}, x, method='encode')`.

  Raises:
    ValueError: naming every missing, unexpected or mis-shaped tensor.
  """
  config = _as_config(config)
  params = common.state_dict_to_params(
      state_dict, autoencoder_param_shapes(config), rename=_rename_old_attention)
  return autoencoder.AutoencoderKL(config), params


def autoencoder_to_diffusers(
    params, config: typing.Mapping | autoencoder.AutoencoderConfig | None = None,
) -> dict[str, np.ndarray]:
  """Params -> diffusers `AutoencoderKL` state dict (current names).

  `config`, when given, checks that the params match it (ValueError naming
  every mismatch).
  """
  state_dict = common.params_to_state_dict(params)
  if config is not None:
    common.state_dict_to_params(state_dict, autoencoder_param_shapes(_as_config(config)))
  return state_dict
