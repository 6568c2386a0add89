"""Reading checkpoints, for training (resume, `init_from`) and inference alike.

A run's checkpoints live in `<workdir>/checkpoints/<step>/` with the items
`state` (the TrainState), `data` (data iterator states) and `config` (JSON);
`videoldm.train.checkpointing` writes them. Params are read as numpy, with
their EMA values overlaid where asked.
"""

import json
import os
from typing import Any

from etils import epath
import flax
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(workdir, 'checkpoints')


def config_to_json_dict(config: ml_collections.ConfigDict) -> dict:
  """The config as plain JSON data (tuples become lists, unknown objects strings)."""
  return json.loads(config.to_json_best_effort())


def flat_params(tree: Any) -> dict[str, Any]:
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep='/')


def read_state_params(state_dir: str, use_ema: bool) -> dict[str, np.ndarray]:
  """Flat params (EMA leaves overlaid when asked) from a checkpoint's `state` item as numpy."""
  checkpointer = ocp.PyTreeCheckpointer()
  metadata = checkpointer.metadata(state_dir).item_metadata.tree
  wanted = {'params': metadata['params']}
  if use_ema and metadata.get('ema_params'):
    wanted['ema_params'] = metadata['ema_params']
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
  restored = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
      item=wanted, restore_args=restore_args, partial_restore=True))
  flat = flat_params(restored['params'])
  if use_ema:
    if 'ema_params' not in restored:
      raise ValueError(f'init_from.use_ema is set but the checkpoint {state_dir!r} '
                       'has no EMA params.')
    flat.update(flat_params(restored['ema_params']))
  return flat


def latest_step_dir(directory: str) -> str:
  """`directory` is a workdir, its checkpoints/ dir, or one step dir; returns a step dir."""
  for candidate in (checkpoint_dir(directory), directory):
    if os.path.isdir(os.path.join(candidate, 'state')):
      return candidate
    if os.path.isdir(candidate):
      steps = [int(name) for name in os.listdir(candidate) if name.isdigit()
               and os.path.isdir(os.path.join(candidate, name, 'state'))]
      if steps:
        return os.path.join(candidate, str(max(steps)))
  raise FileNotFoundError(f'init_from directory {directory!r} holds no checkpoint; expected a '
                          'workdir, its checkpoints/ dir or a step dir with a state/ item.')


def read_source_params(init_config) -> tuple[str, dict[str, np.ndarray]]:
  """(description, flat '/'-joined params) named by `init_config.workdir` or `.path`."""
  location = init_config.get('workdir') or init_config.get('path')
  if not os.path.exists(location):
    raise FileNotFoundError(f'init_from location {location!r} does not exist.')
  use_ema = bool(init_config.get('use_ema', False))
  if os.path.isdir(location):
    step_dir = latest_step_dir(location)
    return step_dir, read_state_params(os.path.join(step_dir, 'state'), use_ema)
  if location.endswith('.safetensors'):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    return location, dict(load_file(location))
  if location.endswith('.msgpack'):
    with open(location, 'rb') as file:
      return location, flat_params(flax.serialization.msgpack_restore(file.read()))
  raise ValueError(f'init_from path {location!r} is not a directory, .msgpack or '
                   '.safetensors file.')


# Config fields added after checkpoints were first written, with the value that
# reproduces what a config saved without them meant: (dotted key, value, the
# field that must exist for the key to apply).
ADDED_FIELDS = (
    ('model.centre_latents', False, 'model.autoencoder'),
    ('model.upsampler.residual', False, 'model.upsampler'),
    ('model.upsampler.residual_scale', 1.0, 'model.upsampler'),
    ('model.text_output', 'last', 'model.text_encoder'),
    ('model.decode_chunk', 0, 'model.text_encoder'),
    ('data.source', '', 'data'),
    ('data.index_dir', '', 'data'),
    ('data.clip_stride', 0, 'data'),
    ('data.image_width', 0, 'data'),
    ('data.cache_dir', '', 'data'),
    ('model.unet.only_cross_attention', (), 'model.unet'),
    ('model.upsampler_unet.only_cross_attention', (), 'model.upsampler_unet'),
    ('model.pixel_patch_size', 0, 'model.autoencoder'),
    ('model.unet.temporal.attention', 'temporal', 'model.unet.temporal'),
    ('model.upsampler_unet.temporal.attention', 'temporal', 'model.upsampler_unet.temporal'),
    ('model.joint.image_fraction', 0.0, 'model.context_probs'),
    ('model.joint.image_weight', 1.0, 'model.context_probs'),
    ('model.joint.video_weight', 1.0, 'model.context_probs'),
)


def _has(tree: dict, dotted: str) -> bool:
  for part in dotted.split('.'):
    if not isinstance(tree, dict) or part not in tree:
      return False
    tree = tree[part]
  return True


def upgrade_config(saved: dict) -> ml_collections.ConfigDict:
  """A saved config (JSON data) with the `ADDED_FIELDS` it predates filled in."""
  for dotted, value, needs in ADDED_FIELDS:
    if _has(saved, needs) and not _has(saved, dotted):
      *parents, leaf = dotted.split('.')
      node = saved
      for parent in parents:
        node = node.setdefault(parent, {})
      node[leaf] = value
  return ml_collections.ConfigDict(saved)


def read_config(step_dir: str) -> ml_collections.ConfigDict:
  """The config saved with the checkpoint in `step_dir` (older ones upgraded)."""
  path = epath.Path(step_dir) / 'config' / 'metadata'  # Local or gs://.
  if not path.is_file():
    raise FileNotFoundError(f'Checkpoint {step_dir!r} has no config item ({str(path)!r} is '
                            'missing).')
  return upgrade_config(json.loads(path.read_text()))
