"""Load diffusers / transformers model folders from disk, without PyTorch.

A folder holds `config.json` and weights as `<stem>.safetensors` (or shards
listed in `<stem>.safetensors.index.json`); stems are
`diffusion_pytorch_model` (diffusers) and `model` (transformers). Weights are
read with `safetensors.numpy` and converted by the strict converters in
`videoldm.convert`, so a wrong file raises ValueError naming the tensors.
"""

import json
import os
import typing

import flax.linen as nn
import numpy as np
import safetensors.numpy

from videoldm.convert import diffusers_vae
from videoldm.convert import transformers as transformers_convert
from videoldm.models import tokenizer as tokenizer_lib

_DIFFUSERS_STEM = 'diffusion_pytorch_model'
_TRANSFORMERS_STEM = 'model'
_KINDS = {'unet': 'UNet2DConditionModel', 'vae': 'AutoencoderKL'}


def _require_file(path: str) -> str:
  if not os.path.isfile(path):
    raise FileNotFoundError(f'Model file {path!r} does not exist.')
  return path


def read_config(folder: str) -> dict:
  """`folder/config.json` as a dict."""
  if not os.path.isdir(folder):
    raise FileNotFoundError(f'Model folder {folder!r} does not exist.')
  with open(_require_file(os.path.join(folder, 'config.json')), encoding='utf-8') as f:
    return json.load(f)


def read_safetensors(folder: str, stem: str, variant: str | None = None
                     ) -> dict[str, np.ndarray]:
  """Reads `<stem>[.<variant>].safetensors`, or the shards its index json lists."""
  name = f'{stem}.{variant}' if variant else stem
  single = os.path.join(folder, f'{name}.safetensors')
  index = single + '.index.json'
  if os.path.isfile(single):
    return safetensors.numpy.load_file(single)
  if not os.path.isfile(index):
    raise FileNotFoundError(f'Neither weights file {single!r} nor shard index '
                            f'{index!r} exists.')
  with open(index, encoding='utf-8') as f:
    weight_map = json.load(f).get('weight_map', {})
  state_dict = {}
  for shard in sorted(set(weight_map.values())):
    state_dict.update(safetensors.numpy.load_file(
        _require_file(os.path.join(folder, shard))))
  missing = sorted(set(weight_map) - set(state_dict))
  if missing:
    raise ValueError(f'Shards in {folder!r} lack tensors their index lists: '
                     f'{", ".join(missing[:10])}.')
  return state_dict


def load_diffusers_folder(path: str, kind: str, variant: str | None = None
                          ) -> tuple[nn.Module, dict]:
  """`(module, params)` from a diffusers model folder; `kind` is 'unet' or 'vae'."""
  if kind not in _KINDS:
    raise ValueError(f'Model kind {kind!r} is not one of {sorted(_KINDS)}.')
  config = read_config(path)
  class_name = config.get('_class_name', _KINDS[kind])
  if class_name != _KINDS[kind]:
    raise ValueError(f'Folder {path!r} holds a {class_name!r}; kind={kind!r} '
                     f'expects {_KINDS[kind]!r}.')
  state_dict = read_safetensors(path, _DIFFUSERS_STEM, variant)
  if kind == 'vae':
    return diffusers_vae.autoencoder_from_diffusers(state_dict, config)
  from videoldm.convert import diffusers  # pylint: disable=g-import-not-at-top
  return diffusers.unet_from_diffusers(state_dict, config)


def load_clip_text_folder(path: str, variant: str | None = None
                          ) -> tuple[nn.Module, dict]:
  """`(module, params)` from a transformers `CLIPTextModel` folder."""
  config = read_config(path)
  state_dict = read_safetensors(path, _TRANSFORMERS_STEM, variant)
  return transformers_convert.clip_text_from_transformers(state_dict, config)


def load_tokenizer_folder(path: str) -> tokenizer_lib.CLIPTokenizer:
  """A `CLIPTokenizer` from `vocab.json` + `merges.txt` (+ its configs)."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f'Tokenizer folder {path!r} does not exist.')
  return tokenizer_lib.CLIPTokenizer.from_folder(path)


def load_sd_pipeline(path: str, variant: str | None = None) -> dict[str, typing.Any]:
  """Loads a Stable Diffusion pipeline folder.

  Returns:
    `dict(unet=(module, params), vae=(module, params),
    text_encoder=(module, params), tokenizer=CLIPTokenizer)` from the
    `unet/`, `vae/`, `text_encoder/` and `tokenizer/` subfolders.
  """
  if not os.path.isdir(path):
    raise FileNotFoundError(f'Pipeline folder {path!r} does not exist.')
  join = lambda name: os.path.join(path, name)
  return dict(
      unet=load_diffusers_folder(join('unet'), 'unet', variant),
      vae=load_diffusers_folder(join('vae'), 'vae', variant),
      text_encoder=load_clip_text_folder(join('text_encoder'), variant),
      tokenizer=load_tokenizer_folder(join('tokenizer')),
  )
