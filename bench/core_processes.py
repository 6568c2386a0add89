"""Ours as one single-device JAX process per core, driven from a benchmark's parent process.

XLA runs two CPU devices in one process on one shared intra-op thread pool; one
process per core gives each core its own runtime, as `launch/multiprocess_cpu.sh
--devices_per_process=1` runs training. The parent starts one worker per core
(the benchmark's own script with `--core=i`), each pinned to its core, and
drives them over pipes, one JSON line per command:

  {"build": case}   worker builds `case` on its rows of the batch and compiles it
  {"run": null}     worker runs it once and blocks until the result is ready
  {"save": path}    worker saves its last output (numpy) to `path`

A timed `run()` returns when every worker has finished: the time of the whole
batch, comparable with one process computing it on all the cores.
"""

import gc
import json
import os
import subprocess
import sys
import tempfile
from typing import Callable

import numpy as np

CORE_FLAG = '--core'


def pin_to_core(index: int) -> int:
  """Pins this process to the `index`-th core it may use; returns that core."""
  core = sorted(os.sched_getaffinity(0))[index]
  os.sched_setaffinity(0, {core})
  return core


class CoreProcesses:
  """One worker process per core, each running this script with `--core=i` and `argv`."""

  def __init__(self, script: str, argv: list[str], cores: int):
    self.workers = [
        subprocess.Popen([sys.executable, script, *argv, f'{CORE_FLAG}={index}'],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for index in range(cores)]

  def _send(self, index: int, name: str, value=None) -> None:
    self.workers[index].stdin.write(json.dumps({name: value}) + '\n')
    self.workers[index].stdin.flush()

  def _wait(self, index: int, name: str) -> None:
    if not self.workers[index].stdout.readline():
      raise RuntimeError(f'core worker {index} exited (status {self.workers[index].wait()}) '
                         f'during {name!r}; expected a reply, see its log above.')

  def build(self, case: str) -> None:
    """Builds `case` in one worker after the other, so their peaks of memory do not add up."""
    for index in range(len(self.workers)):
      self._send(index, 'build', case)
      self._wait(index, 'build')

  def run(self) -> None:
    """Runs the case in every worker at once; returns when all have finished."""
    for index in range(len(self.workers)):
      self._send(index, 'run')
    for index in range(len(self.workers)):
      self._wait(index, 'run')

  def output(self) -> np.ndarray:
    """The last output of every worker, concatenated along the batch."""
    with tempfile.TemporaryDirectory() as root:
      paths = [os.path.join(root, f'{index}.npy') for index in range(len(self.workers))]
      for index, path in enumerate(paths):
        self._send(index, 'save', path)
        self._wait(index, 'save')
      return np.concatenate([np.load(path) for path in paths])

  def close(self) -> None:
    for worker in self.workers:
      worker.stdin.close()
    for worker in self.workers:
      worker.wait()


def serve(build: Callable[[str], Callable[[], object]]) -> None:
  """The worker's loop: answers the parent's commands on stdin until it closes."""
  import jax  # pylint: disable=import-outside-toplevel
  reply = sys.stdout
  sys.stdout = sys.stderr  # Only replies go to the parent's pipe.
  fn, output = None, None
  for line in sys.stdin:
    (name, value), = json.loads(line).items()
    if name == 'build':
      fn = output = None
      gc.collect()  # The previous case's weights go first.
      fn = build(value)
      gc.collect()
      output = jax.block_until_ready(fn())
    elif name == 'run':
      output = jax.block_until_ready(fn())
    elif name == 'save':
      np.save(value, np.asarray(output))
    reply.write('{}\n')
    reply.flush()
