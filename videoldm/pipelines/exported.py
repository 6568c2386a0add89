"""Reading what `python -m videoldm.export` writes.

`--format=safetensors` folders hold `videoldm_export.json` (the manifest),
per stage `<name>.safetensors` (flat '/'-joined inference params) and
`<name>.json` (its config), and `tokenizer/` for text stages; `load_exported`
turns one into the `{name: Model}` dict the sampling pipeline takes, so
`videoldm.sample --workdir=<folder>` works without the training workdirs.

`--format=stablehlo` folders hold `denoiser.stablehlo`, `sampler.stablehlo`
(`jax.export` serialisations), `params.safetensors` and `signature.json`;
`load_stablehlo` runs them without any model code.
"""

import dataclasses
import json
import os
from typing import Any

import flax
import jax
import ml_collections
import numpy as np
import safetensors.numpy

from videoldm import checkpoints
from videoldm import stages
from videoldm.convert import temporal_transfer
from videoldm.pipelines import video_ldm

MANIFEST = 'videoldm_export.json'
# `--format=diffusers`: the temporal params and the stage config beside the diffusers folders.
TEMPORAL_FOLDER = 'temporal'
TEMPORAL_WEIGHTS = 'videoldm_temporal.safetensors'


def is_exported(folder: str) -> bool:
  return os.path.isfile(os.path.join(folder, MANIFEST))


def read_manifest(folder: str) -> dict:
  path = os.path.join(folder, MANIFEST)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'Export folder {folder!r} has no {MANIFEST} manifest.')
  with open(path, encoding='utf-8') as file:
    return json.load(file)


def read_params(path: str) -> dict:
  """A nested param tree from a flat '/'-joined safetensors file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'Params file {path!r} does not exist.')
  return flax.traverse_util.unflatten_dict(dict(safetensors.numpy.load_file(path)), sep='/')


def load_exported_stage(folder: str, name: str) -> video_ldm.Model:
  """The stage `name` of a safetensors export folder, with its inference params."""
  manifest = read_manifest(folder)
  if name not in manifest['stages']:
    raise ValueError(f'Export {folder!r} has no stage {name!r}; it has '
                     f'{sorted(manifest["stages"])}.')
  with open(os.path.join(folder, f'{name}.json'), encoding='utf-8') as file:
    config = checkpoints.upgrade_config(json.load(file))
  tokenizer = os.path.join(folder, 'tokenizer')
  if 'model' in config and 'tokenizer_path' in config.model and os.path.isdir(tokenizer):
    config.model.tokenizer_path = tokenizer
  stage = stages.get_stage(config.stage)(config)
  return video_ldm.Model(stage, read_params(os.path.join(folder, f'{name}.safetensors')))


def load_exported(folder: str, names, required=()) -> dict:
  """`{name: Model}` for the stages in `names` the export holds (`required` must be there)."""
  available = read_manifest(folder)['stages']
  for name in required:
    if name not in available:
      raise FileNotFoundError(f'Export {folder!r} has no {name!r} stage; it has '
                              f'{sorted(available)}.')
  return {name: load_exported_stage(folder, name) for name in names if name in available}


def load_diffusers_export(folder: str) -> video_ldm.Model:
  """The stage of a `--format=diffusers` export: spatial params from its diffusers folders
  (`unet/`, `vae/`, `text_encoder/`), temporal ones from `temporal/`; training-only params
  (a discriminator) are not exported."""
  from videoldm.convert import loaders  # pylint: disable=g-import-not-at-top
  config_path = os.path.join(folder, TEMPORAL_FOLDER, 'config.json')
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f'{folder!r} is not a videoldm diffusers export: {config_path!r} '
                            'is missing.')
  with open(config_path, encoding='utf-8') as file:
    config = checkpoints.upgrade_config(json.load(file))
  tokenizer = os.path.join(folder, 'tokenizer')
  if 'tokenizer_path' in config.model and os.path.isdir(tokenizer):
    config.model.tokenizer_path = tokenizer
  flat = dict(safetensors.numpy.load_file(os.path.join(folder, TEMPORAL_FOLDER, TEMPORAL_WEIGHTS)))
  vae_module, vae_params = loaders.load_diffusers_folder(os.path.join(folder, 'vae'), 'vae')
  parts = {'autoencoder': vae_params}
  if os.path.isdir(os.path.join(folder, 'unet')):
    parts['unet'] = loaders.load_diffusers_folder(os.path.join(folder, 'unet'), 'unet')[1]
    flat['latent_scale'] = np.asarray(vae_module.config.scaling_factor, np.float32)
  if os.path.isdir(os.path.join(folder, 'text_encoder')):
    parts['text_encoder'] = loaders.load_clip_text_folder(os.path.join(folder, 'text_encoder'))[1]
  for name, tree in parts.items():
    flat.update({f'{name}/{path}': np.asarray(value)
                 for path, value in checkpoints.flat_params(tree).items()})
  stage = stages.get_stage(config.stage)(config)
  return video_ldm.Model(stage, flax.traverse_util.unflatten_dict(flat, sep='/'))


def read_spatial_params(location: str, use_ema: bool = True) -> dict:
  """The params of an image checkpoint for `transfer_temporal`.

  `location` is an SD pipeline folder, a safetensors export folder (its
  'video' stage, else its 'image' stage), a workdir, or a `.safetensors` /
  `.msgpack` params file.
  """
  if temporal_transfer.is_sd_pipeline(location):
    return temporal_transfer.spatial_params_from_sd(location)
  if is_exported(location):
    names = read_manifest(location)['stages']
    name = 'video' if 'video' in names else 'image'
    return read_params(os.path.join(location, f'{name}.safetensors'))
  source = ml_collections.ConfigDict(dict(path=location, use_ema=use_ema))
  try:
    _, flat = checkpoints.read_source_params(source)
  except ValueError as error:
    if 'no EMA params' not in str(error):
      raise
    source.use_ema = False
    _, flat = checkpoints.read_source_params(source)
  return flax.traverse_util.unflatten_dict(dict(flat), sep='/')


@dataclasses.dataclass
class StableHLOModel:
  """Deserialised `denoiser` and one-window `sampler` with their params.

  `denoise(x, t, cond, context_latents, mask)` and
  `sample(context_latents, mask, cond, key_data)` call the serialised
  functions; shapes are the fixed ones of `signature`.
  """
  denoiser: jax.export.Exported
  sampler: jax.export.Exported
  params: Any
  signature: dict

  def denoise(self, *args):
    return self.denoiser.call(self.params, *args)

  def sample(self, *args):
    return self.sampler.call(self.params, *args)


def load_stablehlo(folder: str) -> StableHLOModel:
  """Reads a `--format=stablehlo` export folder."""
  def deserialize(name):
    path = os.path.join(folder, f'{name}.stablehlo')
    if not os.path.isfile(path):
      raise FileNotFoundError(f'StableHLO file {path!r} does not exist.')
    with open(path, 'rb') as file:
      return jax.export.deserialize(bytearray(file.read()))
  with open(os.path.join(folder, 'signature.json'), encoding='utf-8') as file:
    signature = json.load(file)
  params = jax.tree.map(np.asarray, read_params(os.path.join(folder, 'params.safetensors')))
  return StableHLOModel(deserialize('denoiser'), deserialize('sampler'), params, signature)
