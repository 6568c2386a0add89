"""One CPU device per core: the device count and the XLA_FLAGS it writes."""

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
