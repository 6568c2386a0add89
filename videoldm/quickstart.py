r"""Trains the whole Video LDM stack at toy size on CPU and writes a video.

  python -m videoldm.quickstart --workdir=/tmp/videoldm_quickstart

Runs every stage of `configs/moving_digits_quickstart.py` in order (autoencoder,
image LDM, video prediction model, interpolation, temporal decoder, upsampler),
each in `<workdir>/<stage>` and started from the previous one with `init_from`,
then samples `<workdir>/video.mp4` (+ GIF and a contact sheet of frames).
Re-running resumes: finished stages are skipped (`videoldm.train.chain`).
Exit codes: 0 done, 75 stopped by a signal (run it again to resume), 1 failed.
On a CPU the host is split into one JAX device per core (`videoldm.host_devices`)
and each stage's batch is split across them; set XLA_FLAGS to choose otherwise.
"""

import os
import time

# pylint: disable=g-import-not-at-top,wrong-import-position
from videoldm.train import signals

if __name__ == '__main__':  # Before the slow imports: a signal then exits as stopped.
  signals.install_early_handlers()

from absl import app
from absl import flags
from absl import logging

from videoldm import host_devices
from videoldm import logs
from videoldm.pipelines import generate
from videoldm.pipelines import video_ldm
from videoldm.train import chain
# pylint: enable=g-import-not-at-top,wrong-import-position

_WORKDIR = flags.DEFINE_string('workdir', '/tmp/videoldm_quickstart', 'Where to put the run.')
_CONFIG = flags.DEFINE_string('config_file', None, 'Config script (default: the bundled '
                              'configs/moving_digits_quickstart.py).')
_ARG = flags.DEFINE_string('config_arg', '', 'Config argument added to stage=<name> '
                           "('runlocal': a CPU minute per stage).")
_NUM_FRAMES = flags.DEFINE_integer('num_frames', 61, 'Frames of the generated video.')
_LABELS = flags.DEFINE_list('labels', ['3', '7'], 'Digits to generate, one video each.')
_UPSAMPLE = flags.DEFINE_bool('upsample', True, 'Apply the x4 video upsampler.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  host_devices.keep_freed_memory()
  devices = host_devices.use_one_device_per_core()  # Before JAX's first computation.
  logs.quiet_libraries()
  logging.info('CPU split into %d JAX devices (one per core) where JAX runs on the CPU.', devices)
  workdir = _WORKDIR.value
  config_file = _CONFIG.value or chain.quickstart_config_file()
  start = time.time()
  try:
    chain.train_all(workdir, config_file, _ARG.value)
  except signals.Stopped as stopped:
    logging.warning('%s', stopped)
    raise SystemExit(signals.EXIT_STOPPED) from None
  settings = video_ldm.Settings(num_frames=_NUM_FRAMES.value,
                                labels=tuple(int(label) for label in _LABELS.value),
                                upsample=_UPSAMPLE.value)
  out = os.path.join(workdir, 'video.mp4')
  if os.path.exists(out):
    logging.info('Replacing this run\'s earlier %s.', out)
  count = generate.generate(workdir, settings, out, fps=8.0, gif=True, overwrite=True)
  logging.info('Quickstart done in %.0f s: %d frames in %s (and .gif, _frames.png).',
               time.time() - start, count, out)


if __name__ == '__main__':
  app.run(main)
