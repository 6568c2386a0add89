"""Train entry point.

  python -m videoldm.main --config=configs/<file>.py:<args> --workdir=<dir>

Runs `videoldm.train.trainer.train_and_evaluate`; restarting with the same
workdir (and config) resumes from its latest checkpoint; `--fresh_start` moves
a previous run aside instead. Exit codes: 0 finished, 75 stopped by a signal
(resumable: run the same command), 1 failed (`videoldm.train.signals`).
Libraries' INFO lines (orbax, TensorFlow, tfds, grain, JAX) stay off the
console unless `--library_logs` (TensorFlow's C++ ones: `TF_CPP_MIN_LOG_LEVEL=0`).
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')  # Before TensorFlow loads: no C++ INFO.

# pylint: disable=g-import-not-at-top,wrong-import-position
from videoldm.train import signals

if __name__ == '__main__':  # Before the slow imports: a signal then exits as stopped.
  signals.install_early_handlers()
if os.environ.get('JAX_PLATFORMS') == 'cpu':  # Before any thread starts (host_devices).
  from videoldm import host_devices
  host_devices.keep_freed_memory()

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from videoldm import logs
from videoldm.train import trainer
# pylint: enable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file (path[:arg]).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and samples.')
flags.DEFINE_bool('fresh_start', False, 'Move the previous run in --workdir (checkpoints, logs, '
                  'samples) to <workdir>/previous-<time>/ and train from scratch.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  logs.quiet_libraries()
  # No device query here: jax.distributed.initialize() (config.multiprocess) must come first.
  logging.info('JAX %s; config:\n%s', jax.__version__, FLAGS.config)
  try:
    trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir, fresh_start=FLAGS.fresh_start)
  except signals.Stopped as stopped:
    logging.warning('%s', stopped)
    raise SystemExit(signals.EXIT_STOPPED) from None


if __name__ == '__main__':
  app.run(main)
