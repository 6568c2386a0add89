r"""Quickstart image LDM variants: how recognisable are their digits?

Trains the quickstart's `image` stage (configs/moving_digits.py with
`quickstart`) from a quickstart run's autoencoder with config overrides, then
samples 4 independent frames for each of 48 test clips under the clip's label
and scores them with the project's digit nets (`evaluation/digits.py`):
label agreement (fraction of frames classified as their label; real frames
~0.96, chance 0.10) and FID-md against the real clips. `--variant=run` scores
the run's own image stage without training.

  python bench/image_ldm_variants.py --base_run=/tmp/videoldm_quickstart \
      --variant=lr2e3 --overrides='{"optimizer.lr": 0.002}' \
      [--sampling='{"guidance_scale": 4.0}']
"""

import json
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from videoldm import config_utils
from videoldm.data import pipeline
from videoldm.evaluation import digits
from videoldm.evaluation import metrics
from videoldm.pipelines import loading
from videoldm.train import trainer

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
from configs import moving_digits  # pylint: disable=g-import-not-at-top,wrong-import-position

_BASE_RUN = flags.DEFINE_string('base_run', '/tmp/videoldm_quickstart',
                                'Quickstart run: its autoencoder, data and feature nets.')
_WORKDIR = flags.DEFINE_string('workdir', '/tmp/videoldm_image_variants', 'Variant runs.')
_VARIANT = flags.DEFINE_string('variant', 'run', "Variant name; 'run' = the base run's image "
                               'stage as trained.')
_OVERRIDES = flags.DEFINE_string('overrides', '{}', 'JSON config overrides of the image stage.')
_SAMPLING = flags.DEFINE_string('sampling', '{}', 'JSON overrides of config.sampling.')
_NUM_CLIPS = flags.DEFINE_integer('num_clips', 48, 'Test clips (labels) scored.')
_FRAMES_PER_CLIP = flags.DEFINE_integer('frames_per_clip', 4, 'Independent samples per clip.')


def train_variant(workdir: str, overrides: dict) -> float:
  """Trains the image stage with `overrides` into `workdir` unless done; seconds."""
  if os.path.isdir(os.path.join(workdir, 'checkpoints')):
    return 0.0
  config = moving_digits.get_config('stage=image,quickstart')
  values = {'data.data_dir': os.path.join(_BASE_RUN.value, 'data'),
            'init_from.workdir': os.path.join(_BASE_RUN.value, 'autoencoder'), **overrides}
  start = time.time()
  trainer.train_and_evaluate(config_utils.override(config, **values), workdir)
  return time.time() - start


def score(workdir: str, sampling: dict) -> dict:
  """Label agreement and FID-md of label-conditioned samples of `workdir`'s image LDM."""
  model = loading.load_stage(workdir)
  stage = model.stage
  if sampling:
    stage = type(stage)(config_utils.override(
        stage.config, **{f'sampling.{k}': v for k, v in sampling.items()}))
  data_config = config_utils.override(moving_digits.get_config('stage=video,quickstart'), **{
      'data.data_dir': os.path.join(_BASE_RUN.value, 'data')}).data
  clips = next(pipeline.make_dataset(data_config, 'test', _NUM_CLIPS.value, shuffle=False,
                                     seed=0))
  clips = {k: v for k, v in clips.items() if v.dtype != object}
  sample = jax.jit(lambda key: stage.sample(model.params, clips, key)['samples'][:, 0])
  frames = np.stack([sample(jax.random.fold_in(jax.random.key(0), i))
                     for i in range(_FRAMES_PER_CLIP.value)], axis=1)  # (b, k, h, w, 3)
  nets = digits.load_or_train(digits.spec_from_data_config(data_config),
                              os.path.join(_BASE_RUN.value, 'feature_nets'), seed=0)
  values = metrics.digit_video_metrics(nets, np.clip(frames, -1, 1), np.asarray(clips['video']),
                                       labels=clips['labels'])
  return {k: values[k] for k in ('label_agreement', 'fid_md')}


def main(argv):
  del argv
  overrides, sampling = json.loads(_OVERRIDES.value), json.loads(_SAMPLING.value)
  if _VARIANT.value == 'run':
    if overrides:
      raise ValueError(f"--overrides={_OVERRIDES.value} needs a --variant name other than 'run'.")
    workdir, seconds = os.path.join(_BASE_RUN.value, 'image'), 0.0
  else:
    workdir = os.path.join(_WORKDIR.value, _VARIANT.value)
    seconds = train_variant(workdir, overrides)
  values = score(workdir, sampling)
  logging.info('%s %s %s: label agreement %.3f, FID-md %.1f (trained in %.0f s)',
               _VARIANT.value, overrides, sampling, values['label_agreement'], values['fid_md'],
               seconds)
  sys.stdout.write(json.dumps(dict(variant=_VARIANT.value, overrides=overrides,
                                   sampling=sampling, **values)) + '\n')


if __name__ == '__main__':
  app.run(main)
