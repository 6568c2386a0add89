r"""Trains a stack's stages in order, each started from the one before, in one run folder.

  python -m videoldm.train_chain --workdir=/runs/sd --config_file=configs/sd_video.py \
      --config_arg=sd_path=/models/sd15,upscaler_path=/models/sd_x4_upscaler,video_dir=/data/webvid

Stages default to the chain of the config's default stage (`stages.TEXT_CHAIN`
for `configs/sd_video.py`: text_video, text_interpolation, text_decoder,
text_upsampler; `stages.CHAIN` for `configs/moving_digits.py`); `--stages`
picks some, e.g. with the optional `text_image` spatial fine-tune first.
Each stage trains in `<workdir>/<role>` (`videoldm.train.chain`), so
`python -m videoldm.sample --workdir=<workdir>` reads the result. Re-running
resumes: finished stages are skipped. Exit codes: 0 done, 75 stopped by a
signal (run it again to resume), 1 failed.
"""

# pylint: disable=g-import-not-at-top,wrong-import-position
from videoldm.train import signals
if __name__ == '__main__':  # Before the slow imports: a signal then exits as stopped.
  signals.install_early_handlers()

from absl import app
from absl import flags
from absl import logging

from videoldm import logs
from videoldm.train import chain
# pylint: enable=g-import-not-at-top,wrong-import-position


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  flag_values = flags.FLAGS
  logs.quiet_libraries()
  stages = tuple(flag_values.stages or chain.default_stages(flag_values.config_file,
                                                            flag_values.config_arg))
  logging.info('Training %s in %s.', ', '.join(stages), flag_values.workdir)
  try:
    chain.train_all(flag_values.workdir, flag_values.config_file, flag_values.config_arg, stages)
  except signals.Stopped as stopped:
    logging.warning('%s', stopped)
    raise SystemExit(signals.EXIT_STOPPED) from None


if __name__ == '__main__':
  # Defined here only, so importing this module adds no global flags.
  flags.DEFINE_string('workdir', None, 'Run folder: one workdir per stage.')
  flags.DEFINE_string('config_file', None, 'Config script, e.g. configs/sd_video.py.')
  flags.DEFINE_string('config_arg', '', 'Config argument added to stage=<name> (e.g. '
                      'sd_path=...,upscaler_path=...,video_dir=...; runlocal: a CPU minute).')
  flags.DEFINE_list('stages', [], 'Stages to train in order (default: the config\'s chain '
                    'without optional stages).')
  flags.mark_flags_as_required(['workdir', 'config_file'])
  app.run(main)
