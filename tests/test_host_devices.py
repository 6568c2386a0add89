"""The CPU host: the device count and the XLA_FLAGS it writes; freed memory kept for reuse."""

import subprocess
import sys
import textwrap

import pytest

from videoldm import host_devices


@pytest.mark.parametrize('cores, expected', [(1, 1), (2, 2), (3, 2), (6, 4), (8, 8), (64, 8)])
def test_cpu_device_count_is_the_largest_power_of_two_within_the_cores(cores, expected):
  assert host_devices.cpu_device_count(cores) == expected


def test_device_count_flag_is_appended_to_the_users_xla_flags():
  environ = {'XLA_FLAGS': '--xla_cpu_enable_fast_math=false'}
  assert host_devices.use_one_device_per_core(environ, cores=6) == 4
  assert environ['XLA_FLAGS'] == ('--xla_cpu_enable_fast_math=false '
                                  '--xla_force_host_platform_device_count=4')


def test_a_device_count_the_user_set_is_kept():
  environ = {'XLA_FLAGS': '--xla_force_host_platform_device_count=3'}
  assert host_devices.use_one_device_per_core(environ, cores=8) == 3
  assert environ['XLA_FLAGS'] == '--xla_force_host_platform_device_count=3'


def test_zero_cores_is_an_error():
  with pytest.raises(ValueError, match='cores must be at least 1, got 0'):
    host_devices.cpu_device_count(0)


# A worker thread (as XLA's are) mallocs 256 MiB, frees it and mallocs it again;
# prints the minor page faults of writing the second block.
_REALLOCATE = textwrap.dedent("""
    import ctypes, ctypes.util, resource, sys, threading
    from videoldm import host_devices
    if sys.argv[1] == 'kept':
      assert host_devices.keep_freed_memory()
    libc = ctypes.CDLL(ctypes.util.find_library('c'))
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    size, faults = 2**28, []
    def work():
      block = libc.malloc(size)
      ctypes.memset(block, 1, size)
      libc.free(block)
      block = libc.malloc(size)
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      ctypes.memset(block, 1, size)
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
      libc.free(block)
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    print(faults[0])
""")


def _second_allocation_faults(allocator: str) -> int:
  result = subprocess.run([sys.executable, '-c', _REALLOCATE, allocator], check=True,
                          capture_output=True, text=True)
  return int(result.stdout)


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc only')
def test_kept_memory_is_reused_without_page_faults():
  pages = 2**28 // 4096  # 256 MiB.
  assert _second_allocation_faults('glibc') > pages // 2  # Unmapped on free, faulted back in.
  assert _second_allocation_faults('kept') < pages // 100
