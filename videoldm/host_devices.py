"""One XLA CPU device per core, so training on a CPU is data-parallel over its cores.

XLA runs a single CPU device's small convolutions and fusions on few threads;
splitting the host into one device per core and the batch across them uses
the idle cores (quickstart autoencoder on 2 cores: 1.83 -> 2.67 steps/s,
bench/RESULTS.md "One JAX device per core"). The flag is read when
JAX first initialises its backends, so call this before any JAX computation.
"""

import os
from typing import MutableMapping

DEVICE_COUNT_FLAG = '--xla_force_host_platform_device_count'


def cpu_device_count(cores: int, max_devices: int = 8) -> int:
  """The largest power of two <= min(cores, max_devices): it divides power-of-two batches."""
  if cores < 1:
    raise ValueError(f'cores must be at least 1, got {cores}.')
  count = 1
  while count * 2 <= min(cores, max_devices):
    count *= 2
  return count


def use_one_device_per_core(environ: MutableMapping[str, str] = os.environ,
                            cores: int | None = None) -> int:
  """Adds the device-count flag to XLA_FLAGS unless the user set one; returns the count."""
  flags = environ.get('XLA_FLAGS', '')
  for flag in flags.split():
    if flag.startswith(DEVICE_COUNT_FLAG + '='):
      return int(flag.split('=', 1)[1])
  if cores is None:  # The cores this process may use (Linux); all of them elsewhere (macOS).
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  count = cpu_device_count(cores or 1)
  environ['XLA_FLAGS'] = f'{flags} {DEVICE_COUNT_FLAG}={count}'.strip()
  return count
