"""The multi-host path, end to end: 2 processes x 4 CPU devices == 1 process x 8 devices.

Trains the `runlocal` video stage (shrunk further, random init) through the
real launchers: `launch/local.sh` with 8 simulated devices as the reference,
and `launch/multiprocess_cpu.sh` with 2 processes x 4 devices, stopped after
step 1 and resumed to step 2 across both processes. Losses (from process 0's
TensorBoard events) and final params (from the orbax checkpoints) must agree.
That each process reads a disjoint share of every global batch is tested in
tests/test_data.py (test_pipeline_process_shards_partition_global_batch).
"""

import glob
import logging as std_logging
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest

from videoldm import checkpoints
from videoldm import config_utils
from videoldm import distributed
from videoldm.data import pipeline

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = 'configs/moving_digits.py:stage=video,runlocal'
# Tiny enough for CPU: 16x16 frames, 4 frames, narrow nets. warmup_steps=0 makes the
# cosine learning rate of steps 0 and 1 the same whether total_steps is 1 or 2.
OVERRIDES = {
    'batch_size': 8, 'log_every': 1, 'optimizer.warmup_steps': 0, 'data.num_frames': 4,
    'data.image_size': 16, 'model.autoencoder.sample_size': 16,
    'model.autoencoder.block_out_channels': '(8,8,8)', 'model.unet.block_out_channels': '(16,16)',
}
TIMEOUT = 900  # Per launch; a 2-core CI machine needs about a minute each.


def flags(workdir, data_dir, total_steps):
  values = {**OVERRIDES, 'data.data_dir': str(data_dir), 'total_steps': total_steps}
  return [f'--config={CONFIG}', *(f'--config.{k}={v}' for k, v in values.items()),
          f'--workdir={workdir}']


def environment(cache_dir, **extra):
  env = {k: v for k, v in os.environ.items() if not k.startswith(('JAX_', 'XLA_'))}
  env.update(PYTHON=sys.executable, JAX_PLATFORMS='cpu',
             JAX_COMPILATION_CACHE_DIR=str(cache_dir), TF_CPP_MIN_LOG_LEVEL='2', **extra)
  return env


def start(script, args, env, log_path):
  """Starts a launcher in its own session (so a failed test can stop all it started)."""
  with open(log_path, 'w') as log:
    return subprocess.Popen(['bash', str(REPO / 'launch' / script), *args], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def finish(process, log_path):
  code = process.wait(timeout=TIMEOUT)
  assert code == 0, pathlib.Path(log_path).read_text()[-3000:]


def stop(processes):
  """Kills every process left in the launchers' sessions (launchers, trainers, tee)."""
  sessions = {process.pid for process in processes if process.poll() is None}
  for pid in (int(name) for name in os.listdir('/proc') if name.isdigit()):
    try:
      if os.getsid(pid) in sessions:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
      continue
  for process in processes:
    process.wait()


def scalars(workdir, name):
  """{step: value} of a scalar from every TensorBoard events file in `workdir`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  # Only the slow tests need it.
  values = {}
  for path in glob.glob(os.path.join(workdir, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag == name:
          values[event.step] = float(tf.make_ndarray(value.tensor))
  return values


def final_params(workdir, step):
  state_dir = os.path.join(checkpoints.checkpoint_dir(str(workdir)), str(step), 'state')
  return checkpoints.read_state_params(state_dir, use_ema=False)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """Workdirs of the 1 x 8 reference and the stopped-and-resumed 2 x 4 run."""
  root = tmp_path_factory.mktemp('multihost')
  data_dir, cache_dir = root / 'data', root / 'jax_cache'
  config = config_utils.load_config(f'{REPO / CONFIG.split(":")[0]}:{CONFIG.split(":")[1]}')
  pipeline.get_builder(config_utils.override(config, **{'data.data_dir': str(data_dir)}).data)
  single, multi = root / 'single', root / 'multi'
  port = 20000 + os.getpid() % 20000
  multi_launcher = ['--num_processes=2', '--devices_per_process=4', f'--port={port}', '--']
  launched = []
  try:
    launched.append(start('local.sh', flags(single, data_dir, 2), environment(
        cache_dir, XLA_FLAGS='--xla_force_host_platform_device_count=8'), root / 'single.log'))
    launched.append(start('multiprocess_cpu.sh', multi_launcher + flags(multi, data_dir, 1),
                          environment(cache_dir), root / 'multi_1.log'))
    finish(launched[-1], root / 'multi_1.log')
    first_logs = [(multi / 'logs' / f'process_{i}.log').read_text() for i in range(2)]
    launched.append(start('multiprocess_cpu.sh', multi_launcher + flags(multi, data_dir, 2),
                          environment(cache_dir), root / 'multi_2.log'))
    finish(launched[-1], root / 'multi_2.log')
    finish(launched[0], root / 'single.log')
  finally:
    stop(launched)
  resumed_logs = [(multi / 'logs' / f'process_{i}.log').read_text() for i in range(2)]
  return dict(single=single, multi=multi, first_logs=first_logs, resumed_logs=resumed_logs)


@pytest.mark.slow
def test_two_processes_match_one_process_losses_and_params(runs):
  single_loss, multi_loss = scalars(runs['single'], 'loss'), scalars(runs['multi'], 'loss')
  assert sorted(single_loss) == sorted(multi_loss) == [1, 2]
  for step in (1, 2):
    np.testing.assert_allclose(multi_loss[step], single_loss[step], rtol=1e-5)
  single_params, multi_params = final_params(runs['single'], 2), final_params(runs['multi'], 2)
  assert single_params.keys() == multi_params.keys()
  for path, value in single_params.items():
    np.testing.assert_allclose(multi_params[path], value, rtol=1e-5, atol=1e-6, err_msg=path)


@pytest.mark.slow
def test_stopped_run_resumes_across_both_processes(runs):
  assert sorted(os.listdir(checkpoints.checkpoint_dir(str(runs['multi'])))) == ['1', '2']
  for index, (first, resumed) in enumerate(zip(runs['first_logs'], runs['resumed_logs'])):
    assert f'[process {index}/2] Process {index} of 2: 4 local / 8 global devices.' in first
    assert 'Training video from step 0 to 1.' in first
    assert 'Resuming from the checkpoint at step 1' in resumed
    assert 'Training video from step 1 to 2.' in resumed


@pytest.mark.slow
def test_process_zero_writes_metrics_every_process_writes_its_checkpoint_share(runs):
  # One events file per launch, both from process 0 (process 1 only logs).
  assert len(glob.glob(os.path.join(runs['multi'], 'events.out.tfevents.*'))) == 2
  for step in (1, 2):
    state_dir = pathlib.Path(checkpoints.checkpoint_dir(str(runs['multi']))) / str(step) / 'state'
    assert sorted(p.name for p in state_dir.glob('ocdbt.process_*')) == [
        'ocdbt.process_0', 'ocdbt.process_1']


# ----------------------------------------------------------------- coordinator settings


def test_coordinator_settings_from_the_launcher_environment():
  env = dict(JAX_COORDINATOR_ADDRESS='node-a:1234', JAX_NUM_PROCESSES='4', JAX_PROCESS_ID='3')
  assert distributed.coordinator_settings(env) == dict(
      coordinator_address='node-a:1234', num_processes=4, process_id=3)
  assert distributed.coordinator_settings({}) == {}  # JAX detects TPU pods / SLURM itself.


@pytest.mark.parametrize('env, message', [
    (dict(JAX_COORDINATOR_ADDRESS='a:1'),
     'JAX_NUM_PROCESSES, JAX_PROCESS_ID must be set along with JAX_COORDINATOR_ADDRESS; '
     'expected all of JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID or none.'),
    (dict(JAX_COORDINATOR_ADDRESS='a:1', JAX_NUM_PROCESSES='two', JAX_PROCESS_ID='0'),
     "JAX_NUM_PROCESSES='two' is not a non-negative integer."),
    (dict(JAX_COORDINATOR_ADDRESS='a:1', JAX_NUM_PROCESSES='2', JAX_PROCESS_ID='2'),
     'JAX_PROCESS_ID=2 is not in [0, 2) for JAX_NUM_PROCESSES=2.'),
])
def test_coordinator_settings_errors(env, message):
  with pytest.raises(ValueError) as error:
    distributed.coordinator_settings(env)
  assert str(error.value) == message


def test_process_prefix_marks_each_log_message_once():
  prefix = distributed.ProcessPrefix(1, 2)
  record = std_logging.LogRecord('absl', std_logging.INFO, __file__, 1, 'step %d', (3,), None)
  assert prefix.filter(record) and prefix.filter(record)
  assert record.getMessage() == '[process 1/2] step 3'
