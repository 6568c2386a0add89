"""Shared helpers for the benchmarks: timing, machine description, tables.

Import this module before jax in a benchmark that wants its XLA flags
(`configure_cpu_threads`). Timings interleave the compared variants and take
medians, so a shared, noisy machine biases neither side.
"""

import os
import platform
import resource
import statistics
import sys
import time
from typing import Callable, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)
TESTS = os.path.join(REPO, 'tests')


def configure_cpu_threads(threads: int) -> int:
  """Pins this process (XLA's and torch's thread pools) to `threads` cores.

  Call before importing jax; returns the number of cores pinned.
  """
  if 'jax' in sys.modules:
    raise RuntimeError('configure_cpu_threads must run before jax is imported.')
  cores = sorted(os.sched_getaffinity(0))[:threads]
  os.sched_setaffinity(0, cores)
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  return len(cores)


def block(tree):
  """Waits for every array in `tree` (jax arrays; other leaves pass)."""
  import jax  # pylint: disable=import-outside-toplevel
  return jax.block_until_ready(tree)


def time_call(fn: Callable[[], object]) -> float:
  start = time.perf_counter()
  block(fn())
  return time.perf_counter() - start


def page_faults(fn: Callable[[], object]) -> tuple[int, float]:
  """Minor page faults and system CPU seconds of this process during one call of `fn`.

  Freshly mapped memory costs a fault per 4 KiB page on first touch; how many a
  call takes depends on the allocator (glibc returns large blocks to the kernel).
  """
  before = resource.getrusage(resource.RUSAGE_SELF)
  block(fn())
  after = resource.getrusage(resource.RUSAGE_SELF)
  return after.ru_minflt - before.ru_minflt, after.ru_stime - before.ru_stime


def interleaved(fns: dict[str, Callable[[], object]], repeats: int,
                warmup: int = 1) -> dict[str, list[float]]:
  """Seconds per call of each fn, measured round-robin `repeats` times after `warmup`."""
  for fn in fns.values():
    for _ in range(warmup):
      block(fn())
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      times[name].append(time_call(fn))
  return times


def median(values: Sequence[float]) -> float:
  return statistics.median(values)


def spread(values: Sequence[float]) -> str:
  """'median (min-max)' in ms."""
  return f'{1e3 * median(values):.1f} ms ({1e3 * min(values):.1f}-{1e3 * max(values):.1f})'


def vector_extensions() -> str:
  """The CPU's SIMD extensions that matter for matmuls and convolutions (from /proc/cpuinfo)."""
  try:
    with open('/proc/cpuinfo') as f:
      flags = next((line.split(':', 1)[1].split() for line in f if line.startswith('flags')), [])
  except OSError:
    return 'extensions unknown'
  wanted = [flag for flag in flags if flag.startswith(('avx', 'amx', 'fma', 'neon', 'sve'))]
  return ' '.join(wanted) or 'no AVX'


def machine() -> str:
  """CPU model, core count, load average, the accelerator if jax sees one, XLA_FLAGS."""
  model = platform.processor() or 'unknown CPU'
  try:
    with open('/proc/cpuinfo') as f:
      names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
    model = names[0] if names else model
  except OSError:
    pass
  load = ', '.join(f'{x:.1f}' for x in os.getloadavg())
  text = f'{model} ({vector_extensions()}), {os.cpu_count()} cores, load avg {load}'
  if 'jax' in sys.modules:
    import jax  # pylint: disable=import-outside-toplevel
    device = jax.devices()[0]
    text += f', jax {jax.__version__} on {device.platform} ({device.device_kind})'
  allocator = ' '.join(f'{k}={v}' for k, v in sorted(os.environ.items())
                       if k.startswith('MALLOC_') or k in ('GLIBC_TUNABLES', 'LD_PRELOAD'))
  text += f", XLA_FLAGS '{os.environ.get('XLA_FLAGS', '')}'"
  return text + (f', allocator {allocator}' if allocator else '')


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
  """A Markdown table."""
  cells = [[str(c) for c in row] for row in rows]
  widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
  line = lambda row: '| ' + ' | '.join(c.ljust(w) for c, w in zip(row, widths)) + ' |'
  out = [line(headers), '|' + '|'.join('-' * (w + 2) for w in widths) + '|']
  out.extend(line(r) for r in cells)
  return '\n'.join(out)


def report(title: str, headers, rows, notes: Sequence[str] = ()) -> None:
  """Prints a titled table with the machine line (benchmarks print; the library logs)."""
  print(f'\n## {title}\n')
  print(f'machine: {machine()}')
  for note in notes:
    print(note)
  print()
  print(table(headers, rows))
  sys.stdout.flush()


def matmul_chain(dtype_name: str = 'float32', size: int = 1024):
  """`(fn, flops)`: a jitted chain of square matmuls, for the machine's practical peak."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  dtype = jnp.dtype(dtype_name)
  a = jax.random.normal(jax.random.key(0), (size, size), dtype)
  b = jax.random.normal(jax.random.key(1), (size, size), dtype)
  chain = 4

  @jax.jit
  def matmuls(a, b):
    for _ in range(chain):
      a = jnp.dot(a, b, preferred_element_type=dtype) * 0.01
    return a

  return (lambda: matmuls(a, b)), chain * 2 * size**3


def compiled_flops(compiled) -> float | None:
  """`flops` from XLA's cost analysis of a compiled function, or None if absent."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  # Some backends do not answer.
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  if not analysis or 'flops' not in analysis:
    return None
  return float(analysis['flops'])
