"""The latent cache's format and reader: frozen-encoder outputs per clip in array_record shards.

`python -m videoldm.cache` writes `<cache_dir>/`:
  shard-<p>-of-<P>.array_record   one record per clip (process p's clips): msgpack of
                                  latent_mean, latent_logvar  (f, h, w, c) unscaled posterior,
                                  text_context (n, d) (text stages), fps, frame_stride,
                                  caption_text
  cache.json                      FORMAT, shards and their record counts, the dtype and the
                                  settings the clips were made with (`DATA_KEYS`,
                                  `MODEL_KEYS`).
With `config.data.cache_dir` set, `pipeline.make_dataset` reads the cached split
from here (grain over the shards, deterministic and checkpointable as always)
and the stage's `loss_fn` draws latents from the stored posterior, so every
epoch still samples; other splits are decoded from pixels.
"""

import json
import os

import flax
import grain.python as grain
import ml_collections
import numpy as np

FORMAT = 1
METADATA = 'cache.json'
# Settings a cache was made with that the reading config must share (dotted config keys):
# the clips (checked by `pipeline.make_dataset`) and the frozen encoders (by the trainer).
DATA_KEYS = ('data.name', 'data.source', 'data.builder_config', 'data.num_frames',
             'data.frame_stride', 'data.clip_stride', 'data.image_size', 'data.image_width')
MODEL_KEYS = ('model.frame_size', 'model.autoencoder', 'model.text_encoder',
              'model.text_output', 'init_from.path', 'init_from.workdir')


def shard_name(process_index: int, process_count: int) -> str:
  return f'shard-{process_index:05d}-of-{process_count:05d}.array_record'


def settings_of(config: ml_collections.ConfigDict, keys=DATA_KEYS + MODEL_KEYS) -> dict:
  """The `keys` of a config as JSON data (absent keys: None)."""
  settings = {}
  for dotted in keys:
    node = config
    for part in dotted.split('.'):
      node = node.get(part) if node is not None and hasattr(node, 'get') else None
    if isinstance(node, ml_collections.ConfigDict):
      node = node.to_dict()
    settings[dotted] = json.loads(json.dumps(node, default=str))
  return settings


def serialize(example: dict) -> bytes:
  return flax.serialization.msgpack_serialize(example)


def deserialize(record: bytes) -> dict:
  return flax.serialization.msgpack_restore(record)


def read_metadata(cache_dir: str) -> dict:
  path = os.path.join(cache_dir, METADATA)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'data.cache_dir {cache_dir!r} holds no {METADATA}; expected a '
                            'folder written by `python -m videoldm.cache`.')
  with open(path, encoding='utf-8') as file:
    metadata = json.load(file)
  if metadata.get('format') != FORMAT:
    raise ValueError(f'Cache {cache_dir!r} has format {metadata.get("format")}; this version '
                     f'reads format {FORMAT}. Write it again with `python -m videoldm.cache`.')
  return metadata


def check_settings(metadata: dict, config: ml_collections.ConfigDict, cache_dir: str,
                   keys=DATA_KEYS + MODEL_KEYS) -> None:
  """Raises unless `config` shares the `keys` settings the cache was written with."""
  current = settings_of(config, keys)
  changed = [f'{key} {json.dumps(metadata["settings"].get(key))} -> {json.dumps(value)}'
             for key, value in current.items() if metadata['settings'].get(key) != value]
  if changed:
    raise ValueError(f'Cache {cache_dir!r} was written with other settings: '
                     f'{", ".join(changed)}; write the cache again for this config or unset '
                     'data.cache_dir.')


class CachedClip(grain.MapTransform):
  """A cache record as the model's example (float32 arrays)."""

  def map(self, record: bytes) -> dict:
    example = deserialize(record)
    out = {key: np.asarray(example[key], np.float32)
           for key in ('latent_mean', 'latent_logvar', 'text_context') if key in example}
    out['fps'] = np.float32(example['fps'])
    out['frame_stride'] = np.int32(example['frame_stride'])
    if 'caption_text' in example:
      out['caption_text'] = str(example['caption_text'])
    return out


def cache_source(cache_dir: str, metadata: dict) -> grain.ArrayRecordDataSource:
  """All shards, in process order, as one grain source."""
  return grain.ArrayRecordDataSource([os.path.join(cache_dir, name)
                                      for name in metadata['shards']])
