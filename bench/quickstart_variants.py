r"""Quickstart stage variants: how recognisable and how steady are their digits?

Retrains one quickstart stage (configs/moving_digits_quickstart.py)
from a quickstart run's previous stage with config overrides, then scores it
with the project's digit nets (`evaluation/digits.py`) on 48 test clips:

  --stage=image  4 independent label-conditioned frames per clip: label
                 agreement (frames classified as their label; real ~0.96,
                 chance 0.10) and FID-md against the real clips.
  --stage=autoencoder  posterior-mean reconstructions of the clips: label
                 agreement, FID-md and the L1 error on digit pixels
                 (`digit_l1`, where colour errors show; the background is
                 most pixels) and `colour_error`, the distance between the
                 mean digit colours of reconstruction and frame.
  --stage=video  the prediction model continues each clip's first real frame
                 to 8 key frames (1 context frame, the config's guidance):
                 identity (clips whose digit never changes; real 1.0), label
                 agreement, FVD-md, FID-md, frame-to-frame feature change,
                 `colour_change` (distance of each frame's digit colour from
                 the real first frame's) and `vanished` (frames with no digit).
  --stage=decoder  reconstructions of 8 consecutive test frames (encoder
                 posterior samples) by the temporal decoder: FVD-md, FID-md,
                 `flicker` (frame-to-frame change beyond the real clip's),
                 `l1` to the clip, and the frame-wise image decoder's
                 `image_flicker` / `image_fvd_md` on the same latents.
  --stage=upsampler_image|upsampler  x4 upsampling of the 128x128 test clips
                 area-downsampled to 32x32, as they are (`real_*`) and after a
                 round trip through the run's autoencoder (`ae_*`, the stack's
                 artefacts): L1 against the real frames over all pixels, over
                 digit pixels (`digit_l1`) and over background pixels
                 (`background_l1`: grain, and strokes thickened into halos);
                 `bilinear_*`: the real low-res frames resized (reference).

`--variant=run` scores the run's own stage without training.

  python bench/quickstart_variants.py --base_run=/tmp/videoldm_quickstart \
      --stage=image --variant=lr2e3 --overrides='{"optimizer.lr": 0.002}' \
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
from videoldm.pipelines import video_ldm
from videoldm.train import trainer
from videoldm.stages import upsampler as upsampler_stage

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
from configs import moving_digits_quickstart  # pylint: disable=g-import-not-at-top,wrong-import-position

_BASE_RUN = flags.DEFINE_string('base_run', '/tmp/videoldm_quickstart',
                                'Quickstart run: its autoencoder, data and feature nets.')
_WORKDIR = flags.DEFINE_string('workdir', '/tmp/videoldm_variants', 'Variant runs.')
_VARIANT = flags.DEFINE_string('variant', 'run', "Variant name; 'run' = the base run's image "
                               'stage as trained.')
_STAGE = flags.DEFINE_enum('stage', 'image', ['autoencoder', 'image', 'video',
                                              'decoder', 'upsampler_image', 'upsampler'],
                               'Quickstart stage to vary.')
_OVERRIDES = flags.DEFINE_string('overrides', '{}', 'JSON config overrides of the stage.')
_SAMPLING = flags.DEFINE_string('sampling', '{}', 'JSON overrides of config.sampling.')
_NUM_CLIPS = flags.DEFINE_integer('num_clips', 48, 'Test clips (labels) scored.')
_FRAMES_PER_CLIP = flags.DEFINE_integer('frames_per_clip', 4, 'Independent samples per clip.')


PREVIOUS_STAGE = {'autoencoder': None, 'image': 'autoencoder', 'video': 'image', 'decoder': 'image',
                  'upsampler_image': None, 'upsampler': 'upsampler_image'}
UPSAMPLER_METRICS = tuple(f'{source}_{name}' for source in ('real', 'ae', 'bilinear')
                          for name in ('l1', 'digit_l1', 'background_l1'))
METRICS = {'autoencoder': ('digit_l1', 'colour_error', 'label_agreement', 'fid_md'),
           'image': ('label_agreement', 'fid_md'),
           'video': ('identity', 'label_agreement', 'fvd_md', 'fid_md', 'feature_change',
                     'colour_change', 'vanished'),
           'decoder': ('fvd_md', 'fid_md', 'flicker', 'l1', 'image_fvd_md', 'image_flicker'),
           'upsampler_image': UPSAMPLER_METRICS, 'upsampler': UPSAMPLER_METRICS}


def digit_colours(frames: np.ndarray, min_pixels: int = 4) -> np.ndarray:
  """Mean RGB in [0, 1] of the bright (digit) pixels of `(..., h, w, 3)` frames; NaN if none."""
  rgb = (np.asarray(frames, np.float64) + 1.0) / 2.0
  digit = rgb.max(axis=-1) > 0.5  # (..., h, w)
  count = digit.sum(axis=(-2, -1))
  total = (rgb * digit[..., None]).sum(axis=(-3, -2))  # (..., 3)
  return np.where(count[..., None] >= min_pixels, total / np.maximum(count, 1)[..., None],
                  np.nan)


def colour_metrics(frames: np.ndarray, real: np.ndarray) -> dict:
  """How far generated frames 1.. stray from the clip's digit colour, and how often it vanishes.

  `colour_change`: mean RGB distance (in [0, 1] units) between each generated
  frame's digit colour and the real first frame's; `vanished`: fraction of
  generated frames with no digit pixels (real clips: 0; the digit wraps).
  """
  reference = digit_colours(real[:, :1])  # (b, 1, 3)
  generated = digit_colours(frames[:, 1:])  # (b, f - 1, 3)
  distance = np.linalg.norm(generated - reference, axis=-1)  # (b, f - 1)
  return dict(colour_change=float(np.nanmean(distance)),
              vanished=float(np.isnan(distance).mean()))


def upsampler_metrics(model) -> dict:
  """`UPSAMPLER_METRICS` of `model` (an upsampler stage) on up to 40 test clips."""
  data_config = config_utils.override(moving_digits_quickstart.get_config('stage=upsampler'), **{
      'data.data_dir': os.path.join(_BASE_RUN.value, 'data')}).data
  clips = next(pipeline.make_dataset(data_config, 'test', min(_NUM_CLIPS.value, 40),
                                     shuffle=False, seed=0))
  real = np.asarray(clips['video'])  # (b, f, 128, 128, 3)
  low_res = upsampler_stage.downsample(jnp.asarray(real), model.stage.options.scale)
  autoencoder = loading.load_stage(os.path.join(_BASE_RUN.value, 'autoencoder'))
  round_trip = jax.jit(lambda params, video: autoencoder.stage.sample(
      params, {'video': video}, None)['reconstruction'])(autoencoder.params, low_res)
  upsample = jax.jit(lambda params, low, key: model.stage.upsample(
      params, low, key, model.stage.sampling_options()))
  digit = (real > -0.9).any(axis=-1)  # (b, f, h, w)
  values = {}
  bilinear = lambda params, low, key: upsampler_stage.resize_to(low, *real.shape[2:4])
  for source, low, fn in (('real', low_res, upsample), ('ae', round_trip, upsample),
                          ('bilinear', low_res, bilinear)):
    errors = np.abs(np.asarray(fn(model.params, low, jax.random.key(0))) - real).mean(-1)
    values.update({f'{source}_l1': float(errors.mean()),
                   f'{source}_digit_l1': float(errors[digit].mean()),
                   f'{source}_background_l1': float(errors[~digit].mean())})
  return values


def decoder_metrics(model) -> dict:
  """`METRICS['decoder']` of `model` (a decoder stage) on the test clips."""
  data_config = config_utils.override(model.stage.config, **{
      'data.data_dir': os.path.join(_BASE_RUN.value, 'data')}).data
  clips = next(pipeline.make_dataset(data_config, 'test', _NUM_CLIPS.value, shuffle=False,
                                     seed=0))
  clips = {k: v for k, v in clips.items() if v.dtype != object}
  out = jax.jit(model.stage.sample)(model.params, clips, jax.random.key(0))
  real = np.asarray(clips['video'])
  nets = digits.load_or_train(digits.spec_from_data_config(data_config),
                              os.path.join(_BASE_RUN.value, 'feature_nets'), seed=0)
  temporal, image = (metrics.digit_video_metrics(nets, np.asarray(out[key]), real,
                                                 references=real)
                     for key in ('temporal_decoder', 'image_decoder'))
  return dict(temporal, l1=float(np.abs(np.asarray(out['temporal_decoder']) - real).mean()),
              image_fvd_md=image['fvd_md'], image_flicker=image['flicker'])


def train_variant(workdir: str, overrides: dict) -> float:
  """Trains the stage with `overrides` into `workdir` unless done; seconds."""
  if os.path.isdir(os.path.join(workdir, 'checkpoints')):
    return 0.0
  config = moving_digits_quickstart.get_config(f'stage={_STAGE.value}')
  values = {'data.data_dir': os.path.join(_BASE_RUN.value, 'data')}
  if PREVIOUS_STAGE[_STAGE.value]:
    values['init_from.workdir'] = os.path.join(_BASE_RUN.value, PREVIOUS_STAGE[_STAGE.value])
  values.update(overrides)  # May name another `init_from.workdir`.
  start = time.time()
  trainer.train_and_evaluate(config_utils.override(config, **values), workdir)
  return time.time() - start


def score(workdir: str, sampling: dict, overrides: dict) -> dict:
  """`METRICS[stage]` of label-conditioned samples of `workdir`'s stage.

  Test clips come from the video stage's data config with the variant's
  `data.builder_kwargs` override, if any (e.g. another digit speed).
  """
  model = loading.load_stage(workdir)
  stage = model.stage
  if sampling:
    stage = type(stage)(config_utils.override(
        stage.config, **{f'sampling.{k}': v for k, v in sampling.items()}))
  if _STAGE.value == 'decoder':
    return decoder_metrics(video_ldm.Model(stage, model.params))
  if _STAGE.value.startswith('upsampler'):
    return upsampler_metrics(video_ldm.Model(stage, model.params))
  data_overrides = {k: v for k, v in overrides.items() if k.startswith('data.builder_kwargs')}
  data_config = config_utils.override(moving_digits_quickstart.get_config('stage=video'), **{
      'data.data_dir': os.path.join(_BASE_RUN.value, 'data'), **data_overrides}).data
  clips = next(pipeline.make_dataset(data_config, 'test', _NUM_CLIPS.value, shuffle=False,
                                     seed=0))
  clips = {k: v for k, v in clips.items() if v.dtype != object}
  if _STAGE.value == 'autoencoder':
    frames = jax.jit(lambda params, clips: stage.sample(params, clips, None)['reconstruction'])(
        model.params, clips)
  elif _STAGE.value == 'video':  # Continue the first real frame: (b, f, h, w, 3).
    stage = type(stage)(config_utils.override(stage.config, **{'sampling.num_context': 1}))
    frames = jax.jit(lambda params, clips, key: stage.sample(params, clips, key)['prediction'])(
        model.params, clips, jax.random.key(0))
  else:
    # Params and clips are arguments, not closed-over constants XLA would fold.
    sample = jax.jit(lambda params, clips, key: stage.sample(params, clips, key)['samples'][:, 0])
    frames = np.stack([sample(model.params, clips, jax.random.fold_in(jax.random.key(0), i))
                       for i in range(_FRAMES_PER_CLIP.value)], axis=1)  # (b, k, h, w, 3)
  nets = digits.load_or_train(digits.spec_from_data_config(data_config),
                              os.path.join(_BASE_RUN.value, 'feature_nets'), seed=0)
  values = metrics.digit_video_metrics(nets, np.clip(frames, -1, 1), np.asarray(clips['video']),
                                       labels=clips['labels'])
  if _STAGE.value == 'video':
    values.update(colour_metrics(np.clip(np.asarray(frames), -1, 1), np.asarray(clips['video'])))
  if _STAGE.value == 'autoencoder':
    real = np.asarray(clips['video'])
    digit_pixels = (real > -0.9).any(axis=-1)  # (b, f, h, w)
    errors = np.abs(np.asarray(frames) - real).mean(axis=-1)  # (b, f, h, w)
    values['digit_l1'] = float(errors[digit_pixels].mean())
    colour_distance = np.linalg.norm(digit_colours(np.clip(np.asarray(frames), -1, 1))
                                     - digit_colours(real), axis=-1)  # (b, f)
    values['colour_error'] = float(np.nanmean(colour_distance))
  return {k: values[k] for k in METRICS[_STAGE.value]}


def main(argv):
  del argv
  overrides, sampling = json.loads(_OVERRIDES.value), json.loads(_SAMPLING.value)
  if _VARIANT.value == 'run':
    if overrides:
      raise ValueError(f"--overrides={_OVERRIDES.value} needs a --variant name other than 'run'.")
    workdir, seconds = os.path.join(_BASE_RUN.value, _STAGE.value), 0.0
  else:
    workdir = os.path.join(_WORKDIR.value, _STAGE.value, _VARIANT.value)
    seconds = train_variant(workdir, overrides)
  values = score(workdir, sampling, overrides)
  logging.info('%s %s %s %s: %s (trained in %.0f s)', _STAGE.value, _VARIANT.value, overrides,
               sampling, ', '.join(f'{k} {v:.3f}' for k, v in values.items()), seconds)
  sys.stdout.write(json.dumps(dict(stage=_STAGE.value, variant=_VARIANT.value,
                                   overrides=overrides, sampling=sampling, seconds=seconds,
                                   **values)) + '\n')


if __name__ == '__main__':
  app.run(main)
