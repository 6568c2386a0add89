r"""Temporal layers of a video model on the spatial layers of another image checkpoint.

Paper Sec. 4.2.1: temporal layers trained on one image backbone transfer to a
differently fine-tuned one (e.g. DreamBooth). `transfer_temporal` takes every
temporal param (a path matching `models.params.TEMPORAL_PATTERN`) from the video
model and every spatial param from the image checkpoint, after a strict check
that both describe the same architecture.

Image checkpoints come from a Stable Diffusion pipeline folder (converted by
`spatial_params_from_sd`) or any params source `init_from` reads
(`videoldm.pipelines.exported.read_spatial_params`). The same conversion gives the `init_from` file of `configs/sd_video.py`:

  python -m videoldm.convert.temporal_transfer --sd_path=/models/sd15 \
      --out=/models/sd15/videoldm_params.safetensors
"""

import os
from typing import Any

from absl import app
from absl import flags
import flax
import numpy as np
import safetensors.numpy

from videoldm import outputs
from videoldm.convert import loaders
from videoldm.models import params as params_lib


def _flat(tree: Any) -> dict[str, Any]:
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep='/')


def transfer_temporal(video_params: Any, image_params: Any) -> dict:
  """`video_params` with every spatial leaf replaced by `image_params`' leaf.

  Both are nested param trees (or flat '/'-joined dicts) of the same
  architecture; temporal leaves of `image_params`, if any, are ignored.

  Raises:
    ValueError: naming the first parameter (in sorted path order) that is
      missing from either tree or whose shape or dtype differs.
  """
  video, image = _flat(video_params), _flat(image_params)
  spatial_video = {p for p in video if not params_lib.is_temporal(p)}
  spatial_image = {p for p in image if not params_lib.is_temporal(p)}
  for path in sorted(spatial_video | spatial_image):
    if path not in image:
      raise ValueError(f'Spatial parameter {path!r} of the video model is missing from the '
                       'image checkpoint; expected the same architecture.')
    if path not in video:
      raise ValueError(f'Parameter {path!r} of the image checkpoint has no counterpart in the '
                       'video model; expected the same architecture.')
    v_shape, i_shape = tuple(np.shape(video[path])), tuple(np.shape(image[path]))
    if v_shape != i_shape or np.asarray(video[path]).dtype != np.asarray(image[path]).dtype:
      raise ValueError(f'Parameter {path!r} has shape {i_shape} ({np.asarray(image[path]).dtype}) '
                       f'in the image checkpoint but {v_shape} '
                       f'({np.asarray(video[path]).dtype}) in the video model.')
  merged = {path: (value if params_lib.is_temporal(path) else image[path])
            for path, value in video.items()}
  return flax.traverse_util.unflatten_dict(merged, sep='/')


def spatial_params_from_sd(sd_path: str) -> dict:
  """`dict(autoencoder=, unet=, text_encoder=, latent_scale=)` from an SD pipeline folder.

  The latent scale is the VAE config's `scaling_factor`; arrays are float32 numpy.
  """
  loaded = loaders.load_sd_pipeline(sd_path)
  vae_module, vae_params = loaded['vae']
  to_numpy = lambda tree: flax.traverse_util.unflatten_dict(
      {k: np.asarray(v, np.float32) for k, v in _flat(tree).items()}, sep='/')
  return dict(autoencoder=to_numpy(vae_params), unet=to_numpy(loaded['unet'][1]),
              text_encoder=to_numpy(loaded['text_encoder'][1]),
              latent_scale=np.asarray(vae_module.config.scaling_factor, np.float32))


def is_sd_pipeline(path: str) -> bool:
  return os.path.isdir(path) and all(
      os.path.isdir(os.path.join(path, name)) for name in ('unet', 'vae', 'text_encoder'))


def write_params(params: Any, out_file: str, overwrite: bool = False) -> str:
  """Writes a param tree as one flat ('/'-joined names) safetensors file."""
  check_params_file(out_file, overwrite)
  os.makedirs(os.path.dirname(os.path.abspath(out_file)), exist_ok=True)
  flat = {k: np.array(v, order='C') for k, v in _flat(params).items()}
  safetensors.numpy.save_file(flat, out_file)
  return out_file


def check_params_file(out_file: str, overwrite: bool = False) -> None:
  """Raises unless `out_file` is a .safetensors path that may be written."""
  if not out_file.endswith('.safetensors'):
    raise ValueError(f'Output file {out_file!r} must end in .safetensors.')
  outputs.check_output(out_file, overwrite)


def convert_sd_pipeline(sd_path: str, out_file: str, overwrite: bool = False) -> str:
  """Writes the spatial params of an SD folder as an `init_from.path` file."""
  check_params_file(out_file, overwrite)  # Before the (slow) conversion.
  return write_params(spatial_params_from_sd(sd_path), out_file, overwrite)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS.sd_path or not flags.FLAGS.out:
    raise app.UsageError('--sd_path and --out are required.')
  convert_sd_pipeline(flags.FLAGS.sd_path, flags.FLAGS.out, flags.FLAGS.overwrite)


if __name__ == '__main__':
  # Defined here only, so importing this module adds no global flags.
  flags.DEFINE_string('sd_path', None, 'Stable Diffusion pipeline folder.')
  flags.DEFINE_string('out', None, 'Output .safetensors file.')
  flags.DEFINE_bool('overwrite', False, 'Replace an existing output file.')
  app.run(main)
