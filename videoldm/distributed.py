"""Multi-process start-up: `jax.distributed.initialize` from the launcher's environment.

The launchers in `launch/` set (all three, or none):

  JAX_COORDINATOR_ADDRESS   host:port of process 0's coordinator service.
  JAX_NUM_PROCESSES         number of processes in the run.
  JAX_PROCESS_ID            this process's index, 0 .. JAX_NUM_PROCESSES - 1.

With none set, JAX detects the cluster itself (TPU pod slices, SLURM, Open
MPI). Multi-process CPU runs (`launch/multiprocess_cpu.sh`) exchange data
through gloo collectives.
"""

import logging as std_logging
import os
from collections.abc import Mapping

from absl import logging
import jax

COORDINATOR_ENV = ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID')


def coordinator_settings(env: Mapping[str, str] | None = None) -> dict:
  """`jax.distributed.initialize` kwargs from `env` (default `os.environ`); {} = auto-detect."""
  env = os.environ if env is None else env
  present = [name for name in COORDINATOR_ENV if env.get(name)]
  if not present:
    return {}
  missing = [name for name in COORDINATOR_ENV if name not in present]
  if missing:
    raise ValueError(f'{", ".join(missing)} must be set along with {", ".join(present)}; '
                     f'expected all of {", ".join(COORDINATOR_ENV)} or none.')
  numbers = {}
  for name in COORDINATOR_ENV[1:]:
    value = env[name]
    if not value.isdigit():
      raise ValueError(f'{name}={value!r} is not a non-negative integer.')
    numbers[name] = int(value)
  num_processes, process_id = numbers['JAX_NUM_PROCESSES'], numbers['JAX_PROCESS_ID']
  if not 0 <= process_id < num_processes:
    raise ValueError(f'JAX_PROCESS_ID={process_id} is not in [0, {num_processes}) for '
                     f'JAX_NUM_PROCESSES={num_processes}.')
  return dict(coordinator_address=env['JAX_COORDINATOR_ADDRESS'], num_processes=num_processes,
              process_id=process_id)


class ProcessPrefix(std_logging.Filter):
  """Starts every log message with `[process i/P] ` so interleaved host logs stay readable."""

  def __init__(self, process_index: int, process_count: int):
    super().__init__()
    self.prefix = f'[process {process_index}/{process_count}] '

  def filter(self, record: std_logging.LogRecord) -> bool:
    if not getattr(record, 'process_prefixed', False):
      record.msg = self.prefix + str(record.msg)
      record.process_prefixed = True
    return True


def add_process_prefix_to_logs() -> None:
  """Adds `ProcessPrefix` (once) to the absl log handler."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, ProcessPrefix) for f in handler.filters):
    handler.addFilter(ProcessPrefix(jax.process_index(), jax.process_count()))


def initialize(env: Mapping[str, str] | None = None) -> None:
  """Joins the run's processes; call before any device query. Errors become RuntimeError."""
  settings = coordinator_settings(env)
  platforms = (os.environ.get('JAX_PLATFORMS') or '').split(',')
  if platforms[0] == 'cpu':
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  try:
    jax.distributed.initialize(**settings)
  except Exception as error:  # The run cannot continue without its peers.
    described = settings or 'auto-detected cluster settings'
    raise RuntimeError(f'jax.distributed.initialize() failed with {described} '
                       f'({type(error).__name__}: {error}); expected the launcher\'s '
                       f'{", ".join(COORDINATOR_ENV)} or a detectable cluster.') from error
  add_process_prefix_to_logs()
  logging.info('Process %d of %d: %d local / %d global devices.', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
