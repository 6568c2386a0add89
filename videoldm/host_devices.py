"""The CPU host for JAX: one XLA device per core, and freed memory kept for reuse.

One device per core makes training on a CPU data-parallel over its cores.

XLA runs a single CPU device's small convolutions and fusions on few threads;
splitting the host into one device per core and the batch across them uses
the idle cores (quickstart autoencoder on 2 cores: 1.83 -> 2.67 steps/s,
bench/RESULTS.md "One JAX device per core"). The flag is read when
JAX first initialises its backends, so call this before any JAX computation.

`keep_freed_memory` stops glibc from handing XLA's large buffers back to the
kernel after every call, which made each U-Net call fault in its memory afresh
(SD 1.5, batch 16: 722,000 minor page faults and 5-17 s of system time per
forward; bench/RESULTS.md "Page faults and allocators").
"""

import ctypes
import ctypes.util
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


# glibc's mallopt options (<malloc.h>).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -2, -4, -8
KEPT_MEMORY_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1),
                        (_M_TOP_PAD, 2**29))


def keep_freed_memory() -> bool:
  """Makes glibc reuse freed memory instead of unmapping it; False where libc is not glibc.

  One malloc arena for all threads, no block served by its own mmap, no trim
  below 2 GiB of free heap, the heap grown 512 MiB at a time: XLA's buffers
  then come back from the heap already mapped. The memory of a call's peak
  stays with the process. Call it first, before JAX or PyTorch start threads.
  """
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c'))
  except OSError:
    return False
  if not hasattr(libc, 'gnu_get_libc_version'):  # musl, macOS: their own allocators.
    return False
  for option, value in KEPT_MEMORY_SETTINGS:
    if libc.mallopt(option, value) != 1:
      raise RuntimeError(f'glibc mallopt({option}, {value}) failed; expected it to return 1.')
  return True
