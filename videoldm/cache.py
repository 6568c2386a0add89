r"""Encode a dataset once with its stage's frozen encoders: the latent cache.

  python -m videoldm.cache --config=configs/sd_video.py:sd_path=/models/sd15,video_dir=/data \
      --out=/data/sd15_cache
  python -m videoldm.main --config=... --config.data.cache_dir=/data/sd15_cache --workdir=...

Every clip of the config's training split (`data.split`, in order, once) goes
through the frozen VAE encoder (its posterior mean and log-variance, so each
epoch can still draw a sample) and, for text stages, its caption through the
frozen CLIP text encoder (`Stage.cache_entries`). The frozen params are those
the stage starts from (`config.init_from`). Batches are sharded over all
devices of all processes, and each process writes its own array_record shard;
run it under the same launchers as training (`launch/*.sh`, with
`--config.multiprocess=True`). The format is `videoldm/data/latent_cache.py`.
Whole global batches only: up to `--batch_size` - 1 trailing clips are left out.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')  # Before TensorFlow loads: no C++ INFO.

# pylint: disable=g-import-not-at-top,wrong-import-position
import json
import re

from absl import app
from absl import flags
from absl import logging
from array_record.python import array_record_module
import jax
from jax.experimental import multihost_utils
import ml_collections
from ml_collections import config_flags
import numpy as np

from videoldm import checkpoints
from videoldm import distributed
from videoldm import logs
from videoldm import outputs
from videoldm import stages
from videoldm.data import latent_cache
from videoldm.data import pipeline
from videoldm.train import checkpointing
# pylint: enable=g-import-not-at-top,wrong-import-position

FROZEN_PREFIXES = ('autoencoder/', 'text_encoder/')
DTYPES = ('float16', 'float32')


def frozen_params(stage, config: ml_collections.ConfigDict, example: dict) -> dict:
  """The params the stage starts from (`init_from`), checked to keep the encoders frozen."""
  if not checkpointing.init_from_enabled(config.init_from):
    raise ValueError(f'Stage {config.stage!r} has no init_from; the cache needs the frozen '
                     'encoders a run starts from (config.init_from.path or .workdir).')
  if config.model.get('calibrate_latent_scale') or config.model.get('centre_latents'):
    raise ValueError('model.calibrate_latent_scale and model.centre_latents change the '
                     'encoder at the start of training; a cache written before would not match. '
                     'Turn them off to cache.')
  abstract = jax.eval_shape(stage.init_params, jax.random.key(0), example)
  trainable = re.compile(config.trainable or '.*')
  trained = [path for path in checkpoints.flat_params(abstract)
             if path.startswith(FROZEN_PREFIXES) and trainable.search(path)]
  if trained:
    raise ValueError(f'config.trainable={config.trainable!r} trains {trained[0]!r}; the cache '
                     'holds frozen encoders\' outputs only.')
  zeros = lambda paths: {path: np.zeros(leaf.shape, leaf.dtype) for path, leaf in
                         checkpoints.flat_params(abstract).items() if path in set(paths)}
  params = checkpointing.load_init_params(config.init_from, abstract, init_kept=zeros)
  return {key: params[key] for key in ('autoencoder', 'latent_scale', 'text_encoder')
          if key in params}


def write_cache(config: ml_collections.ConfigDict, out: str, batch_size: int = 0,
                dtype: str = 'float16', overwrite: bool = False) -> int:
  """Writes this process's shard (and, on process 0, cache.json); returns its clip count."""
  if dtype not in DTYPES:
    raise ValueError(f'--dtype={dtype!r} is not one of {DTYPES}.')
  if config.multiprocess:
    distributed.initialize()
  batch_size = batch_size or config.batch_size
  if jax.process_index() == 0:
    outputs.replace_folder(out, overwrite)
  multihost_utils.sync_global_devices('videoldm_cache_folder')
  stage = stages.get_stage(config.stage)(config)
  split = config.data.split
  tokenize = stage.tokenize if stage.text_conditioned else None
  iterator = pipeline.make_dataset(config.data, split, batch_size, seed=config.seed,
                                   shuffle=False, num_epochs=1, tokenize_fn=tokenize)
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ('data',))
  rows = jax.sharding.PartitionSpec('data')
  sharding = jax.sharding.NamedSharding(mesh, rows)
  params = None
  encode = jax.jit(stage.cache_entries, out_shardings=sharding)
  name = latent_cache.shard_name(jax.process_index(), jax.process_count())
  writer, count = None, 0
  for batch in iterator:
    device_batch = pipeline.global_batch_to_device(batch, sharding)
    if params is None:  # Checked before anything is written.
      params = frozen_params(stage, config, device_batch)
      writer = array_record_module.ArrayRecordWriter(os.path.join(out, name), 'group_size:1')
    encoded = multihost_utils.global_array_to_host_local_array(
        encode(params, device_batch), mesh, rows)
    for i in range(len(batch['video'])):
      record = {key: np.asarray(value[i], dtype) for key, value in encoded.items()}
      record.update(fps=float(batch['fps'][i]), frame_stride=int(batch['frame_stride'][i]))
      if 'caption_text' in batch:
        record['caption_text'] = str(batch['caption_text'][i])
      writer.write(latent_cache.serialize(record))
      count += 1
    logging.log_every_n_seconds(logging.INFO, 'Cached %d clips into %s.', 30, count, name)
  if writer is None:
    raise ValueError(f'Split {split!r} has fewer clips than one batch of {batch_size}; nothing '
                     'to cache.')
  writer.close()
  counts = [int(c) for c in multihost_utils.process_allgather(np.int64(count)).reshape(-1)]
  if jax.process_index() == 0:
    metadata = dict(format=latent_cache.FORMAT, split=split, dtype=dtype,
                    shards=[latent_cache.shard_name(p, jax.process_count())
                            for p in range(jax.process_count())],
                    records=counts, settings=latent_cache.settings_of(config))
    with open(os.path.join(out, latent_cache.METADATA), 'w', encoding='utf-8') as file:
      json.dump(metadata, file, indent=1)
    logging.info('Cache of %s split %r: %d clips in %d shards in %s (skipped clips, if any, '
                 'are logged above).', config.stage, split, sum(counts), len(counts), out)
  multihost_utils.sync_global_devices('videoldm_cache_written')
  return count


def define_flags() -> None:
  """The CLI flags (defined only when run as a program, so imports add no global flags)."""
  config_flags.DEFINE_config_file('config', None, 'Training config file (path[:arg]).',
                                  lock_config=True)
  flags.DEFINE_string('out', None, 'Folder for the cache (refused if non-empty, unless '
                      '--overwrite).')
  flags.DEFINE_integer('batch_size', 0, 'Clips per global batch (0: config.batch_size).')
  flags.DEFINE_enum('dtype', 'float16', DTYPES, 'Storage dtype of the cached arrays.')
  flags.DEFINE_bool('overwrite', False, 'Replace an existing cache at --out.')
  flags.mark_flags_as_required(['config', 'out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  logs.quiet_libraries()
  f = flags.FLAGS
  write_cache(f.config, f.out, f.batch_size, f.dtype, f.overwrite)


if __name__ == '__main__':
  define_flags()
  app.run(main)
