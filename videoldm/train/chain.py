"""Training the stages of a run in order, each started from its predecessor.

A run is a folder with one workdir per stage (`<run>/autoencoder`,
`<run>/image`, ...) and the dataset in `<run>/data`; the quickstart and the
ablation benchmark lay runs out this way and `videoldm.sample` reads them.
Re-running resumes: finished stages are skipped by the trainer's resume. A
signal stops the stage in training (`signals.Stopped`, raised to the caller).
"""

import os
import time

from absl import logging

from videoldm import config_utils
from videoldm import stages as stages_lib
from videoldm.train import signals
from videoldm.train import trainer


def _bundled_config(name: str) -> str:
  """The path of the bundled `configs/<name>.py`."""
  here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  return os.path.join(here, 'configs', f'{name}.py')


def default_config_file() -> str:
  """The bundled `configs/moving_digits.py`: the paper's stages at toy size."""
  return _bundled_config('moving_digits')


def quickstart_config_file() -> str:
  """The bundled `configs/moving_digits_quickstart.py`: the README's quickstart run."""
  return _bundled_config('moving_digits_quickstart')


def stage_config(config_file: str, stage: str, arg: str, workdir: str):
  """The stage's config, started from its predecessor's workdir."""
  config = config_utils.load_config(f'{config_file}:stage={stage}' + (f',{arg}' if arg else ''))
  overrides = {'data.data_dir': os.path.join(workdir, 'data')}
  predecessor = stages_lib.STAGES[stage].init_from
  if predecessor:
    overrides['init_from.workdir'] = os.path.join(workdir, predecessor)
  return config_utils.override(config, **overrides)


def train_all(workdir: str, config_file: str, arg: str, stages=stages_lib.CHAIN) -> None:
  """Trains `stages` in order, logging progress and an ETA over the whole run."""
  unknown = [stage for stage in stages if stage not in stages_lib.CHAIN]
  if unknown:
    raise ValueError(f'Unknown stages {unknown}; expected some of {stages_lib.CHAIN}.')
  start = time.time()
  for index, stage in enumerate(stages):
    config = stage_config(config_file, stage, arg, workdir)
    logging.info('=== Stage %d/%d: %s (%d steps) ===', index + 1, len(stages), stage,
                 config.total_steps)
    try:
      trainer.train_and_evaluate(config, os.path.join(workdir, stage))
    except signals.Stopped as stopped:
      raise signals.Stopped(f'Stage {stage!r}: {stopped}', stopped.step) from None
    elapsed = time.time() - start
    eta = elapsed / (index + 1) * (len(stages) - index - 1)
    logging.info('=== %s done; %.0f s elapsed, about %.0f s to go for training ===', stage,
                 elapsed, eta)
