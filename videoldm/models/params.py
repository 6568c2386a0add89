"""Parameter utilities of video models: the temporal set, counts, image params in.

`TEMPORAL_PATTERN` is the one definition of which parameters are temporal:
everything the video model adds to the image model lives under a name with
`temporal`, `time_mixer`, `time_pos_embed` or `context_`, so configs build
their `trainable` and `init_from.exempt` regexes from it.
"""

import re

import flax
import jax
import ml_collections

from videoldm.models import video_unet

TEMPORAL_PATTERN = r'(temporal|time_mixer|time_pos_embed|context_)'


def param_shapes(config: ml_collections.ConfigDict):
  """The param tree of `VideoUNet(config)` as ShapeDtypeStructs (no compile)."""
  model = video_unet.VideoUNet(config)
  inputs = video_unet.example_inputs(config)
  return jax.eval_shape(lambda key: model.init(key, **inputs), jax.random.key(0))['params']


def is_temporal(path: str) -> bool:
  """Whether a '/'-joined param path belongs to the temporal (trainable) set."""
  return re.search(TEMPORAL_PATTERN, path) is not None


def count_params(config: ml_collections.ConfigDict) -> dict[str, int]:
  """`dict(spatial=..., temporal=...)` parameter counts of `VideoUNet(config)`."""
  flat = flax.traverse_util.flatten_dict(param_shapes(config), sep='/')
  counts = dict(spatial=0, temporal=0)
  for path, leaf in flat.items():
    counts['temporal' if is_temporal(path) else 'spatial'] += int(leaf.size)
  return counts


def load_image_params(video_params, image_params):
  """`video_params` with every spatial leaf replaced by the image U-Net's leaf.

  Names are checked in both directions: each image param must exist in the
  video tree with the same shape, and each video param without an image
  counterpart must be temporal (`TEMPORAL_PATTERN`).
  """
  video = flax.traverse_util.flatten_dict(flax.core.unfreeze(video_params), sep='/')
  image = flax.traverse_util.flatten_dict(flax.core.unfreeze(image_params), sep='/')
  unexpected = sorted(set(image) - set(video))
  missing = sorted(p for p in set(video) - set(image) if not is_temporal(p))
  if unexpected or missing:
    raise ValueError(f'Image params do not fit the video U-Net: unexpected {unexpected[:5]}, '
                     f'missing spatial {missing[:5]}.')
  for path, value in image.items():
    if is_temporal(path) or tuple(value.shape) != tuple(video[path].shape):
      raise ValueError(f'Image param {path!r} has shape {tuple(value.shape)}; the video U-Net '
                       f'expects a spatial param of shape {tuple(video[path].shape)}.')
  return flax.traverse_util.unflatten_dict({**video, **image}, sep='/')
