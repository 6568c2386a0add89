"""Stopping a run on a signal, at any phase, with exit codes a scheduler can read.

SIGTERM (preemption, `scancel`, SLURM's early warning), SIGUSR1 and SIGINT
(Ctrl-C, Colab's stop button) stop a training run cleanly:

  * during setup (data, init or restore, compile) the run stops at once; no
    step has been trained, so there is nothing new to save;
  * in the training loop it stops at the next step boundary after saving a
    checkpoint there (all processes agree on the step).

Either way `train_and_evaluate` raises `Stopped`; the entry points turn it
into `EXIT_STOPPED`. A second SIGINT interrupts at once (KeyboardInterrupt).

Exit codes of `python -m videoldm.main` and `python -m videoldm.quickstart`:
  0    EXIT_FINISHED  every step trained and saved.
  75   EXIT_STOPPED   stopped by a signal; the latest checkpoint is complete,
                      so the same command resumes (sysexits' EX_TEMPFAIL).
  1    a failure (traceback on stderr); rerunning repeats it unless fixed.
"""

import signal
import threading

from absl import logging

EXIT_FINISHED = 0
EXIT_STOPPED = 75
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class Stopped(Exception):
  """A run stopped by a signal; `step` is the step of its latest checkpoint (or None)."""

  def __init__(self, message: str, step: int | None = None):
    super().__init__(message)
    self.step = step


def stop_now(signum, frame):
  """A handler for the time before the trainer installs its own: exit as stopped."""
  del frame
  logging.warning('Stopped by %s while starting; nothing was trained.',
                  signal.Signals(signum).name)
  raise SystemExit(EXIT_STOPPED)


def install_early_handlers() -> None:
  """Entry points call this first, so a signal during imports exits with EXIT_STOPPED."""
  if threading.current_thread() is threading.main_thread():
    for signum in SIGNALS:
      signal.signal(signum, stop_now)


class StopSignal:
  """Installs the handlers for a run (restoring the previous ones on exit).

  While `in_loop` is False a signal raises `Stopped` where the main thread is;
  once the loop starts it only sets `requested`, read by `should_stop()` at
  step boundaries.
  """

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.requested = False
    self.in_loop = False
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = {signum: signal.signal(signum, self._handle) for signum in SIGNALS}
    else:
      logging.warning('Not in the main thread: signals will not stop the run cleanly.')
    return self

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.requested:
      if signum == signal.SIGINT:
        raise KeyboardInterrupt
      logging.warning('Received %s again; already stopping.', name)
      return
    self.requested = True
    if not self.in_loop:
      raise Stopped(f'Stopped by {name} before the first step; no step was trained, so '
                    f'nothing new was saved. Run the same command to start {self.workdir}.')
    logging.warning('Received %s; saving a checkpoint at the next step boundary.', name)

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)

  def start_loop(self) -> None:
    """From here on a signal stops at the next step boundary (or now, if one came)."""
    if self.requested:
      raise Stopped(f'Stopped by a signal before the first step; nothing new was saved. '
                    f'Run the same command to start {self.workdir}.')
    self.in_loop = True

  def should_stop(self) -> bool:
    """Whether any process received a signal (a collective when multi-process)."""
    import jax  # pylint: disable=g-import-not-at-top  # Entry points import this module first.
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    if jax.process_count() == 1:
      return self.requested
    return bool(np.max(multihost_utils.process_allgather(np.int32(self.requested))))
