r"""Multi-host parity and cost: 2 processes x 4 CPU devices against 1 process x 8.

  python bench/multihost.py --steps=10 --out=/tmp/multihost.json

Trains the `runlocal` video stage (random init) with `launch/local.sh` on 8
simulated CPU devices and with `launch/multiprocess_cpu.sh` on 2 processes x 4,
from the same seed, then logs per step the two losses and their relative
difference, the largest parameter difference after the last step, and the
ratio of the two runs' wall times and steps/s (gloo collectives between the
processes against in-process ones). Extra `--config.*` flags after `--` go to
both runs, e.g. `-- --config.batch_size=16`.
"""

import glob
import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

from videoldm import checkpoints

_STEPS = flags.DEFINE_integer('steps', 10, 'Train steps of each run.')
_BATCH = flags.DEFINE_integer('batch_size', 8, 'Global batch (a multiple of 8).')
_ROOT = flags.DEFINE_string('root', None, 'Where the runs go (default: a temporary folder).')
_OUT = flags.DEFINE_string('out', None, 'Also write the results as JSON here.')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = 'configs/moving_digits.py:stage=video,runlocal'


def scalars(workdir: str, name: str) -> dict[int, float]:
  """{step: value} of one scalar from the TensorBoard events files in `workdir`."""
  values = {}
  for path in glob.glob(os.path.join(workdir, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == name:
          values[event.step] = float(tf.make_ndarray(value.tensor))
  return values


def launch(script: str, launcher_args: list[str], workdir: str, extra: list[str],
           env: dict) -> float:
  """Runs one launcher to completion; returns its wall time in seconds."""
  args = [*launcher_args, f'--config={CONFIG}', f'--workdir={workdir}',
          f'--config.total_steps={_STEPS.value}', f'--config.batch_size={_BATCH.value}',
          '--config.log_every=1', f'--config.data.data_dir={os.path.join(_ROOT.value, "data")}',
          *extra]
  start = time.time()
  with open(os.path.join(os.path.dirname(workdir), os.path.basename(workdir) + '.log'), 'w') as log:
    subprocess.run(['bash', os.path.join(REPO, 'launch', script), *args], cwd=REPO, env=env,
                   stdout=log, stderr=subprocess.STDOUT, check=True)
  return time.time() - start


def main(argv):
  extra = argv[1:]
  if _ROOT.value is None:
    flags.FLAGS.root = tempfile.mkdtemp(prefix='multihost_bench_')
  env = {k: v for k, v in os.environ.items() if not k.startswith(('JAX_', 'XLA_'))}
  env.update(PYTHON=sys.executable, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
  single, multi = os.path.join(_ROOT.value, 'single'), os.path.join(_ROOT.value, 'multi')
  # The 1-process run goes first and prepares the dataset the 2 processes then share.
  single_s = launch('local.sh', [], single, extra,
                    {**env, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8'})
  multi_s = launch('multiprocess_cpu.sh', ['--num_processes=2', '--devices_per_process=4', '--'],
                   multi, extra, env)
  single_loss, multi_loss = scalars(single, 'loss'), scalars(multi, 'loss')
  rows = [(step, single_loss[step], multi_loss[step],
           abs(multi_loss[step] - single_loss[step]) / abs(single_loss[step]))
          for step in sorted(single_loss)]
  state_dirs = [os.path.join(checkpoints.checkpoint_dir(w), str(_STEPS.value), 'state')
                for w in (single, multi)]
  params = [checkpoints.read_state_params(d, use_ema=False) for d in state_dirs]
  param_diff = max(float(np.max(np.abs(params[0][k] - params[1][k]))) for k in params[0])
  speeds = [float(np.median(list(scalars(w, 'steps_per_sec').values()) or [np.nan]))
            for w in (single, multi)]
  logging.info('step  loss 1x8      loss 2x4      rel. diff')
  for step, a, b, diff in rows:
    logging.info('%4d  %.8f  %.8f  %.2e', step, a, b, diff)
  logging.info('max |param 2x4 - param 1x8| after step %d: %.3e', _STEPS.value, param_diff)
  logging.info('wall time: 1x8 %.1f s, 2x4 %.1f s (ratio 2x4/1x8 %.2f)', single_s, multi_s,
               multi_s / single_s)
  logging.info('median steps/s: 1x8 %.3f, 2x4 %.3f (ratio 2x4/1x8 %.2f)', speeds[0], speeds[1],
               speeds[1] / speeds[0])
  if _OUT.value:
    with open(_OUT.value, 'w') as file:
      json.dump(dict(losses=rows, max_param_diff=param_diff, wall_s=[single_s, multi_s],
                     steps_per_sec=speeds), file, indent=1)


if __name__ == '__main__':
  app.run(main)
