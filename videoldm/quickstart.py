r"""Trains the whole Video LDM stack at toy size on CPU and writes a video.

  python -m videoldm.quickstart --workdir=/tmp/videoldm_quickstart

Runs every stage of `configs/moving_digits.py` in order (autoencoder, image
LDM, video prediction model, interpolation, temporal decoder, upsampler), each
in `<workdir>/<stage>` and started from the previous one with `init_from`,
then samples `<workdir>/video.mp4` (+ GIF and a contact sheet of frames).
Re-running resumes: finished stages are skipped by the trainer's resume.
"""

import os
import time

from absl import app
from absl import flags
from absl import logging

from videoldm import config_utils
from videoldm.pipelines import generate
from videoldm.pipelines import video_ldm
from videoldm.train import trainer

_WORKDIR = flags.DEFINE_string('workdir', '/tmp/videoldm_quickstart', 'Where to put the run.')
_CONFIG = flags.DEFINE_string('config_file', None, 'Config script (default: the bundled '
                              'configs/moving_digits.py).')
_ARG = flags.DEFINE_string('config_arg', 'quickstart', 'Config argument added to stage=<name>.')
_NUM_FRAMES = flags.DEFINE_integer('num_frames', 61, 'Frames of the generated video.')
_LABELS = flags.DEFINE_list('labels', ['3', '7'], 'Digits to generate, one video each.')
_UPSAMPLE = flags.DEFINE_bool('upsample', True, 'Apply the x4 video upsampler.')

ORDER = ('autoencoder', 'image', 'video', 'interpolation', 'decoder', 'upsampler_image',
         'upsampler')
INIT_FROM = dict(image='autoencoder', video='image', interpolation='video',
                 decoder='autoencoder', upsampler='upsampler_image')


def default_config_file() -> str:
  here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return os.path.join(here, 'configs', 'moving_digits.py')


def stage_config(config_file: str, stage: str, arg: str, workdir: str):
  """The stage's config, started from its predecessor's workdir."""
  config = config_utils.load_config(f'{config_file}:stage={stage}' + (f',{arg}' if arg else ''))
  overrides = {'data.data_dir': os.path.join(workdir, 'data')}
  if stage in INIT_FROM:
    overrides['init_from.workdir'] = os.path.join(workdir, INIT_FROM[stage])
  return config_utils.override(config, **overrides)


def train_all(workdir: str, config_file: str, arg: str, stages=ORDER) -> None:
  """Trains `stages` in order, logging progress and an ETA over the whole run."""
  start = time.time()
  for index, stage in enumerate(stages):
    config = stage_config(config_file, stage, arg, workdir)
    logging.info('=== Stage %d/%d: %s (%d steps) ===', index + 1, len(stages), stage,
                 config.total_steps)
    state = trainer.train_and_evaluate(config, os.path.join(workdir, stage))
    if int(state.step) < config.total_steps:  # Stopped by SIGTERM: the checkpoint is saved.
      raise SystemExit(f'Stopped during stage {stage!r} at step {int(state.step)}; run the '
                       'same command again to resume.')
    elapsed = time.time() - start
    eta = elapsed / (index + 1) * (len(stages) - index - 1)
    logging.info('=== %s done; %.0f s elapsed, about %.0f s to go for training ===', stage,
                 elapsed, eta)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  workdir = _WORKDIR.value
  config_file = _CONFIG.value or default_config_file()
  start = time.time()
  train_all(workdir, config_file, _ARG.value)
  settings = video_ldm.Settings(num_frames=_NUM_FRAMES.value,
                                labels=tuple(int(label) for label in _LABELS.value),
                                upsample=_UPSAMPLE.value)
  out = os.path.join(workdir, 'video.mp4')
  count = generate.generate(workdir, settings, out, fps=8.0, gif=True)
  logging.info('Quickstart done in %.0f s: %d frames in %s (and .gif, _frames.png).',
               time.time() - start, count, out)


if __name__ == '__main__':
  app.run(main)
