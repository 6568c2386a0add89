"""Train entry point.

  python -m videoldm.main --config=configs/<file>.py:<args> --workdir=<dir>

Runs `videoldm.train.trainer.train_and_evaluate`; restarting with the same
workdir resumes from its latest checkpoint.
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from videoldm.train import trainer

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file (path[:arg]).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and samples.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  # No device query here: jax.distributed.initialize() (config.multiprocess) must come first.
  logging.info('JAX %s; config:\n%s', jax.__version__, FLAGS.config)
  trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
