"""transformers `CLIPTextModel` state dicts <-> `videoldm.models.text.CLIPTextModel`.

Two layouts exist: checkpoints on the Hub and transformers 4 prefix every name
with `text_model.`; transformers 5's `CLIPTextModel.state_dict()` does not.
Both load; `clip_text_to_transformers(..., text_model_prefix=)` picks one.
The `position_ids` buffer some checkpoints carry is dropped by name.
"""

import typing

import jax
import jax.numpy as jnp
import numpy as np

from videoldm.convert import common
from videoldm.models import text

_PREFIX = 'text_model.'
_BUFFERS = frozenset({'text_model.embeddings.position_ids'})


def _as_config(config) -> text.CLIPTextConfig:
  if isinstance(config, text.CLIPTextConfig):
    return config
  return text.clip_text_config_from_transformers(config)


def clip_text_param_shapes(config: text.CLIPTextConfig):
  """The 'params' tree of `CLIPTextModel(config)` as `jax.ShapeDtypeStruct`s."""
  model = text.CLIPTextModel(config)
  ids = jnp.zeros((1, config.max_position_embeddings), jnp.int32)
  return jax.eval_shape(model.init, jax.random.key(0), ids)['params']


def _add_prefix(name: str) -> str:
  return name if name.startswith(_PREFIX) else _PREFIX + name


def clip_text_from_transformers(
    state_dict: typing.Mapping[str, np.ndarray],
    config: typing.Mapping | text.CLIPTextConfig,
) -> tuple[text.CLIPTextModel, dict]:
  """Builds `CLIPTextModel` and its params from a transformers state dict.

  Args:
    state_dict: parameter name -> numpy array, with or without `text_model.`.
    config: the transformers config dict (`config.json`) or a `CLIPTextConfig`.

  Returns:
    `(module, params)`; apply with `module.apply({'params': params}, ids)`.

  Raises:
    ValueError: naming every missing, unexpected or mis-shaped tensor.
  """
  config = _as_config(config)
  module = text.CLIPTextModel(config)
  params = common.state_dict_to_params(
      state_dict, clip_text_param_shapes(config), rename=_add_prefix,
      ignore=lambda name: _add_prefix(name) in _BUFFERS)
  return module, params


def clip_text_to_transformers(
    params, config: typing.Mapping | text.CLIPTextConfig | None = None,
    text_model_prefix: bool = True,
) -> dict[str, np.ndarray]:
  """Params -> transformers state dict.

  `text_model_prefix=True` writes the Hub / transformers 4 names (what
  `from_pretrained` reads in every version); False gives the names of
  transformers 5's `CLIPTextModel.state_dict()`. `config`, when given, checks
  that the params match it.
  """
  strip = (lambda name: name) if text_model_prefix else (
      lambda name: name.removeprefix(_PREFIX))
  state_dict = common.params_to_state_dict(params, rename_back=strip)
  if config is not None:  # Strict check: raises ValueError naming mismatches.
    common.state_dict_to_params(state_dict, clip_text_param_shapes(_as_config(config)),
                                rename=_add_prefix)
  return state_dict
