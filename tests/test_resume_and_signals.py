"""A used workdir resumes only under its config; signals stop a run at any phase.

The toy stage and fake data come from tests/test_trainer.py. Signal tests run
the trainer in this (main) thread with SIGTERM sent to this process; a
test-owned handler stands in for the default one, which would kill pytest.
"""

import os
import shutil
import signal
import threading
import time

import pytest

from test_trainer import FakeVideos, toy_config
from test_trainer import persistent_compilation_cache  # pylint: disable=unused-import  # Fixture.
from videoldm import checkpoints
from videoldm.train import resume
from videoldm.train import signals
from videoldm.train import train_step as train_step_lib
from videoldm.train import trainer


def short_config(**overrides):
  return toy_config(**{'total_steps': 2, 'checkpoint.every_steps': 2,
                       'optimizer.warmup_steps': 1, **overrides})


@pytest.fixture(scope='module')
def used_workdir(tmp_path_factory):
  """A workdir holding a 2-step run of `short_config()` (checkpoint 2)."""
  workdir = str(tmp_path_factory.mktemp('used'))
  trainer.train_and_evaluate(short_config(), workdir, dataset_fn=FakeVideos)
  return workdir


def saved_steps(workdir):
  return sorted(name for name in os.listdir(checkpoints.checkpoint_dir(workdir)))


# ----------------------------------------------------------------------------
# Config checks on resume.
# ----------------------------------------------------------------------------


def test_a_changed_model_seed_or_data_refuses_naming_each_key(used_workdir):
  config = short_config(seed=1, **{'model.channels': 32, 'data.size': 16,
                                   'checkpoint.keep': 5})
  with pytest.raises(resume.ConfigChangedError) as error:
    trainer.train_and_evaluate(config, used_workdir, dataset_fn=FakeVideos)
  assert str(error.value) == (
      f'Workdir {used_workdir!r} holds a run at step 2 trained with another config: '
      'data.size 8 -> 16, model.channels 16 -> 32, seed 0 -> 1; resume with the saved values, '
      'choose a new --workdir, or pass --fresh_start (fresh_start=True) to move the old run aside '
      'and start over.')
  assert saved_steps(used_workdir) == ['2']  # Untouched.


def test_allowed_changes_resume_with_one_warning(used_workdir, tmp_path, caplog):
  workdir = str(tmp_path / 'run')
  shutil.copytree(used_workdir, workdir)
  config = short_config(total_steps=4, log_every=2, **{'optimizer.decay_steps': 8,
                                                       'checkpoint.keep': 3})
  with caplog.at_level('WARNING'):
    state = trainer.train_and_evaluate(config, workdir, dataset_fn=FakeVideos)
  assert int(state.step) == 4
  warnings = [record.getMessage() for record in caplog.records
              if 'config changes' in record.getMessage()]
  assert warnings == [f'Resuming {workdir} at step 2 with config changes: checkpoint.keep 2 -> 3, '
                      'log_every 1 -> 2, optimizer.decay_steps 0 -> 8, total_steps 2 -> 4.']


def test_fresh_start_moves_the_previous_run_aside_and_trains_from_scratch(used_workdir, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(used_workdir, workdir)
  before = sorted(os.listdir(workdir))
  config = short_config(**{'model.channels': 32})
  state = trainer.train_and_evaluate(config, workdir, dataset_fn=FakeVideos, fresh_start=True)
  assert int(state.step) == 2
  assert state.params['conv_in']['kernel'].shape[-1] == 32
  previous = [name for name in os.listdir(workdir) if name.startswith('previous-')]
  assert len(previous) == 1
  assert sorted(os.listdir(os.path.join(workdir, previous[0]))) == before  # Nothing lost.
  assert saved_steps(workdir) == ['2']
  saved = checkpoints.read_config(os.path.join(checkpoints.checkpoint_dir(workdir), '2'))
  assert saved.model.channels == 32


def test_config_changes_compare_json_values():
  old = toy_config()
  new = toy_config(**{'sharding.rules': tuple(tuple(rule) for rule in old.sharding.rules)})
  assert resume.config_changes(old, new) == []  # Tuples and lists are the same JSON.
  with new.unlocked():
    new.model.extra = 3
  assert resume.config_changes(old, new) == [('model.extra', '<absent>', 3)]
  assert resume.is_resumable('model.unet.attention_implementation')
  # A config saved before data.image_width existed, upgraded on reading: no change unless set.
  saved = checkpoints.upgrade_config(checkpoints.config_to_json_dict(old))
  assert saved.data.image_width == 0 and resume.config_changes(saved, old) == []
  with old.unlocked():
    old.data.image_width = 5
  assert resume.config_changes(saved, old) == [('data.image_width', 0, 5)]
  assert not resume.is_resumable('model.unet.block_out_channels')


# ----------------------------------------------------------------------------
# Signals.
# ----------------------------------------------------------------------------


class Killed(Exception):
  """What the default SIGTERM action would have done."""


@pytest.fixture
def default_action():
  """A SIGTERM handler standing in for the default (kill the process); restored after."""
  def kill(signum, frame):
    del signum, frame
    raise Killed('SIGTERM reached the default action: the process would have died.')
  previous = signal.signal(signal.SIGTERM, kill)
  yield kill
  signal.signal(signal.SIGTERM, previous)


def test_a_signal_during_init_stops_cleanly(tmp_path, monkeypatch, default_action):
  original = train_step_lib.create_train_state

  def create_then_signal(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(1)  # The handler runs at the next bytecode, well within this.
    return original(*args, **kwargs)

  monkeypatch.setattr(train_step_lib, 'create_train_state', create_then_signal)
  workdir = str(tmp_path / 'run')
  with pytest.raises(signals.Stopped, match='Stopped by SIGTERM before the first step') as error:
    trainer.train_and_evaluate(short_config(), workdir, dataset_fn=FakeVideos)
  assert error.value.step is None
  assert not os.listdir(checkpoints.checkpoint_dir(workdir))  # Nothing was saved.
  assert signal.getsignal(signal.SIGTERM) is default_action  # Handlers restored.


def test_a_signal_during_compile_stops_without_waiting_for_it(tmp_path, monkeypatch,
                                                             default_action):
  """The compile thread signals while the main thread waits for it; the wait is cut short."""
  del default_action
  initialised, release = threading.Event(), threading.Event()
  original_create = train_step_lib.create_train_state

  def create_and_mark(*args, **kwargs):
    result = original_create(*args, **kwargs)
    initialised.set()
    return result

  def slow_compile(jitted, *args):
    del jitted, args
    future = train_step_lib.concurrent.futures.Future()

    def compile_step():
      initialised.wait(60)
      time.sleep(0.2)  # The main thread is now waiting on the future.
      os.kill(os.getpid(), signal.SIGTERM)
      release.wait(60)  # A compile that would take a minute.
      future.set_exception(TimeoutError('The wait for the compile was not interrupted.'))

    threading.Thread(target=compile_step, daemon=True).start()
    return future

  monkeypatch.setattr(train_step_lib, 'create_train_state', create_and_mark)
  monkeypatch.setattr(train_step_lib, 'compile_in_background', slow_compile)
  workdir = str(tmp_path / 'run')
  start = time.monotonic()
  try:
    with pytest.raises(signals.Stopped, match='before the first step'):
      trainer.train_and_evaluate(short_config(), workdir, dataset_fn=FakeVideos)
  finally:
    release.set()
  assert initialised.is_set() and time.monotonic() - start < 50
  assert not os.listdir(checkpoints.checkpoint_dir(workdir))


def test_a_second_sigint_interrupts_at_once():
  with signals.StopSignal('/run') as stop_signal:
    stop_signal.start_loop()
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.1)
    assert stop_signal.should_stop()  # The first one only asks for a stop at the next step.
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(1)


def test_signal_before_the_loop_runs_stops_when_it_starts():
  with signals.StopSignal('/run') as stop_signal:
    stop_signal.requested = True  # A signal whose handler ran where it could not raise.
    with pytest.raises(signals.Stopped, match='before the first step'):
      stop_signal.start_loop()
