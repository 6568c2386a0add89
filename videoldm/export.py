r"""Exports trained Video LDM stages.

  python -m videoldm.export --workdir=<run> --format=safetensors --out=<dir>
  python -m videoldm.export --workdir=<run> --format=diffusers --out=<dir> [--stage=video]
  python -m videoldm.export --workdir=<run> --format=stablehlo --out=<dir> \
      [--stage=video] --batch_size=1 --num_frames=8 --latent_size=40,64

`--workdir` is a run folder (one workdir per stage), one stage's workdir
(a `text_video` stage is exported as 'video'), or a safetensors export. A
non-empty `--out` is refused unless `--overwrite` (which replaces it), and so
is any `--out` inside a run's checkpoint folder.

  safetensors  inference params (EMA where kept) of every stage + configs as
               JSON (+ the tokenizer), loadable by `videoldm.sample --workdir=<dir>`.
  diffusers    one stage: the spatial U-Net, VAE and (text stages) CLIP text encoder
               and tokenizer in diffusers / transformers layout, for PyTorch, and
               its temporal layers in `temporal/` (`exported.TEMPORAL_FOLDER`);
               `exported.load_diffusers_export` reads the stage back.
  stablehlo    `jax.export` of the jitted denoiser and one-window sampler with
               fixed shapes; `videoldm.pipelines.exported.load_stablehlo` runs them.
"""

import dataclasses
import json
import os
import shutil

from absl import app
from absl import flags
from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import safetensors.numpy

from videoldm import checkpoints
from videoldm import outputs
from videoldm import stages
from videoldm.convert import diffusers as unet_convert
from videoldm.convert import diffusers_vae
from videoldm.convert import transformers as text_convert
from videoldm.models import autoencoder as autoencoder_lib
from videoldm.models import params as params_lib
from videoldm.models import text as text_lib
from videoldm.pipelines import exported
from videoldm.pipelines import loading

FORMATS = ('safetensors', 'diffusers', 'stablehlo')


def load_models(workdir: str, use_ema: bool = True) -> dict:
  """`{role: Model}` from a run folder, one stage workdir, or a safetensors export."""
  if exported.is_exported(workdir):
    return exported.load_exported(workdir, exported.read_manifest(workdir)['stages'])
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f'Workdir {workdir!r} does not exist.')
  if os.path.isdir(checkpoints.checkpoint_dir(workdir)):
    model = loading.load_stage(workdir, use_ema)
    return {stages.role_of(model.stage.config.stage): model}
  models = loading.load_run(workdir, required=())
  if not models:
    raise FileNotFoundError(f'{workdir!r} holds no stage workdirs ({stages.SAMPLING_ROLES}) '
                            'and no checkpoints.')
  return models


def _flat_numpy(params) -> dict:
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep='/')
  return {k: np.array(v, order='C') for k, v in flat.items()}


def _copy_tokenizer(config: ml_collections.ConfigDict, out: str) -> bool:
  path = config.get('model', {}).get('tokenizer_path')
  if not path or not os.path.isdir(path):
    return False
  shutil.copytree(path, os.path.join(out, 'tokenizer'), dirs_exist_ok=True)
  return True


def export_safetensors(models: dict, out: str) -> str:
  """Writes `<name>.safetensors` + `<name>.json` per stage and the manifest."""
  os.makedirs(out, exist_ok=True)
  for name, model in models.items():
    safetensors.numpy.save_file(_flat_numpy(model.params), os.path.join(out, f'{name}.safetensors'))
    with open(os.path.join(out, f'{name}.json'), 'w', encoding='utf-8') as file:
      json.dump(checkpoints.config_to_json_dict(model.stage.config), file, indent=1)
    _copy_tokenizer(model.stage.config, out)
  with open(os.path.join(out, exported.MANIFEST), 'w', encoding='utf-8') as file:
    json.dump(dict(format='safetensors', stages=sorted(models)), file)
  return out


def _save_folder(folder: str, config: dict, state_dict: dict, stem: str) -> None:
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, 'config.json'), 'w', encoding='utf-8') as file:
    json.dump(config, file, indent=1)
  safetensors.numpy.save_file({k: np.array(v, np.float32, order='C')
                               for k, v in state_dict.items()},
                              os.path.join(folder, f'{stem}.safetensors'))


def spatial_unet(unet_config: ml_collections.ConfigDict, unet_params) -> tuple:
  """(image U-Net config, params): the video U-Net without its temporal layers."""
  config = ml_collections.ConfigDict(unet_config.to_dict())
  if 'temporal' in config:
    del config['temporal']
  return config, _spatial(unet_params)


def _spatial(params) -> dict:
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep='/')
  return flax.traverse_util.unflatten_dict(
      {k: v for k, v in flat.items() if not params_lib.is_temporal(k)}, sep='/')


def export_temporal(model, out: str) -> None:
  """`temporal/`: every temporal param (flat '/'-joined paths of the stage's param tree) and
  the stage's config, beside the spatial folders."""
  flat = {k: v for k, v in _flat_numpy(model.params).items() if params_lib.is_temporal(k)}
  folder = os.path.join(out, exported.TEMPORAL_FOLDER)
  os.makedirs(folder, exist_ok=True)
  safetensors.numpy.save_file(flat, os.path.join(folder, exported.TEMPORAL_WEIGHTS))
  with open(os.path.join(folder, 'config.json'), 'w', encoding='utf-8') as file:
    json.dump(checkpoints.config_to_json_dict(model.stage.config), file, indent=1)


def export_diffusers(model, out: str) -> str:
  """Writes `unet/` (U-Net stages), `vae/`, (text stages) `text_encoder/` + `tokenizer/` and
  `temporal/` under `out`."""
  config, params = model.stage.config, model.params
  if 'unet' in params:
    unet_config, unet_params = spatial_unet(config.model.unet, params['unet'])
    unet_dict = unet_convert.unet_config_to_diffusers(unet_config)
    _save_folder(os.path.join(out, 'unet'), dict(_class_name='UNet2DConditionModel', **unet_dict),
                 unet_convert.unet_to_diffusers(unet_params, unet_dict), 'diffusion_pytorch_model')
  ae_config = model.stage.image_autoencoder.config if hasattr(
      model.stage, 'image_autoencoder') else model.stage.autoencoder.config
  if 'latent_scale' in params:
    ae_config = dataclasses.replace(ae_config,
                                    scaling_factor=float(np.asarray(params['latent_scale'])))
  _save_folder(os.path.join(out, 'vae'), autoencoder_lib.autoencoder_config_to_diffusers(ae_config),
               diffusers_vae.autoencoder_to_diffusers(_spatial(params['autoencoder']), ae_config),
               'diffusion_pytorch_model')
  export_temporal(model, out)
  if 'text_encoder' in params:
    text_config = model.stage.text_encoder.config
    _save_folder(os.path.join(out, 'text_encoder'),
                 text_lib.clip_text_config_to_transformers(text_config),
                 text_convert.clip_text_to_transformers(params['text_encoder'], text_config),
                 'model')
    _copy_tokenizer(config, out)
  return out


def export_stablehlo(model, out: str, batch_size: int, num_frames: int,
                     latent_size: tuple[int, int]) -> str:
  """Serialises the denoiser and the one-window sampler of a video stage."""
  stage = model.stage
  if stages.STAGES[stage.config.stage].role != 'video':
    raise ValueError(f'Stage {stage.config.stage!r} has no video denoiser to export; expected '
                     "a 'video' or 'text_video' stage.")
  b, f = batch_size, num_frames
  unet_cfg = stage.config.model.unet
  z = jax.ShapeDtypeStruct((b, f) + tuple(latent_size) + (unet_cfg.out_channels,), jnp.float32)
  mask = jax.ShapeDtypeStruct((b, f), jnp.float32)
  t = jax.ShapeDtypeStruct((b,), jnp.int32)
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)
  if stage.text_conditioned:
    length = stage.text_length
    denoise_cond = jax.ShapeDtypeStruct((b, length, unet_cfg.cross_attention_dim), jnp.float32)
    sample_cond = jax.ShapeDtypeStruct((b, length), jnp.int32)
  else:
    denoise_cond = sample_cond = jax.ShapeDtypeStruct((b,), jnp.int32)
  params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
                        model.params)
  options = stage.sampling_options()
  denoise = stage.apply_unet
  sample_from_data = lambda p, c, m, cond, k: stage.sample_window(
      p, c, m, cond, jax.random.wrap_key_data(k), options)
  os.makedirs(out, exist_ok=True)
  for name, fn, args in (('denoiser', denoise, (params, z, t, denoise_cond, z, mask)),
                         ('sampler', sample_from_data, (params, z, mask, sample_cond, key))):
    serialized = jax.export.export(jax.jit(fn))(*args).serialize()
    with open(os.path.join(out, f'{name}.stablehlo'), 'wb') as file:
      file.write(serialized)
  safetensors.numpy.save_file(_flat_numpy(model.params), os.path.join(out, 'params.safetensors'))
  spec = lambda s: dict(shape=list(s.shape), dtype=str(s.dtype))
  signature = dict(
      stage=stage.config.stage,
      denoiser=dict(x=spec(z), t=spec(t), cond=spec(denoise_cond), context_latents=spec(z),
                    mask=spec(mask)),
      sampler=dict(context_latents=spec(z), mask=spec(mask), cond=spec(sample_cond),
                   key_data=spec(key)))
  with open(os.path.join(out, 'signature.json'), 'w', encoding='utf-8') as file:
    json.dump(signature, file, indent=1)
  return out


def export(workdir: str, fmt: str, out: str, stage: str = 'video', use_ema: bool = True,
           batch_size: int = 1, num_frames: int | None = None,
           latent_size: tuple[int, int] | None = None, overwrite: bool = False) -> str:
  """Runs one export into the folder `out` (refused if not empty, unless `overwrite`)."""
  if fmt not in FORMATS:
    raise ValueError(f'--format={fmt!r} is not one of {FORMATS}.')
  outputs.check_output(out, overwrite)
  source, target = os.path.abspath(workdir), os.path.abspath(out)
  if os.path.commonpath([source, target]) == target:
    raise ValueError(f'--out={out!r} is or contains the exported run {workdir!r}; choose '
                     'another folder.')
  models = load_models(workdir, use_ema)
  outputs.replace_folder(out, overwrite)
  if fmt == 'safetensors':
    return export_safetensors(models, out)
  if stage not in models:
    raise ValueError(f'--stage={stage!r} is not among the exported stages {sorted(models)}.')
  if fmt == 'diffusers':
    return export_diffusers(models[stage], out)
  stage_config = models[stage].stage.config
  if num_frames is None:
    num_frames = stage_config.data.num_frames
  if latent_size is None:
    latent_size = models[stage].stage.latent_size()
  return export_stablehlo(models[stage], out, batch_size, num_frames, tuple(latent_size))


def define_flags() -> None:
  """The CLI flags (defined only when run as a program, so imports add no global flags)."""
  flags.DEFINE_string('workdir', None, 'Run folder, stage workdir or export folder.')
  flags.DEFINE_enum('format', 'safetensors', FORMATS, 'Export format.')
  flags.DEFINE_string('out', None, 'Output folder.')
  flags.DEFINE_string('stage', 'video', 'Stage for the diffusers / stablehlo formats.')
  flags.DEFINE_bool('use_ema', True, 'Export EMA params where the run kept them.')
  flags.DEFINE_integer('batch_size', 1, 'stablehlo: videos per call.')
  flags.DEFINE_integer('num_frames', None, 'stablehlo: frames per window.')
  flags.DEFINE_list('latent_size', None, 'stablehlo: latent h,w.')
  flags.DEFINE_bool('overwrite', False, 'Replace a non-empty --out folder.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  if not f.workdir or not f.out:
    raise app.UsageError('--workdir and --out are required.')
  logs.quiet_libraries()
  latent_size = None
  if f.latent_size:
    try:
      latent_size = tuple(int(v) for v in f.latent_size)
    except ValueError:
      raise ValueError(f'--latent_size={",".join(f.latent_size)} must be two integers.') from None
    if len(latent_size) != 2:
      raise ValueError(f'--latent_size={",".join(f.latent_size)} must be two integers h,w.')
  out = export(f.workdir, f.format, f.out, f.stage, f.use_ema, f.batch_size, f.num_frames,
               latent_size, f.overwrite)
  logging.info('Exported %s to %s.', f.format, out)


if __name__ == '__main__':
  from videoldm import logs  # pylint: disable=g-import-not-at-top  (defines --library_logs)
  define_flags()
  app.run(main)
