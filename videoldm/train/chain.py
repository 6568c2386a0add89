"""Training the stages of a run in order, each started from its predecessor.

A run is a folder with one workdir per stage, named after the stage's role in
the sampling stack where it has one (`<run>/image`, `<run>/video`, ...; the
text stack's `text_video` trains in `<run>/video`), else after the stage
(`<run>/autoencoder`), and the dataset in `<run>/data`; the quickstart, the
ablation benchmark and `videoldm.train_chain` lay runs out this way and
`videoldm.sample` reads them. A stage starts from its predecessor's workdir
when the predecessor is trained in the same chain or already in the run.
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


def stage_dir(stage: str) -> str:
  """The stage's workdir name in a run: its sampling role, else its own name."""
  return stages_lib.STAGES[stage].role or stage


def chain_of(stage: str) -> tuple[str, ...]:
  """The chain (`stages.CHAIN` or `stages.TEXT_CHAIN`) that holds `stage`."""
  for chain in (stages_lib.CHAIN, stages_lib.TEXT_CHAIN):
    if stage in chain:
      return chain
  raise ValueError(f'Stage {stage!r} is in no chain; expected one of '
                   f'{stages_lib.CHAIN + stages_lib.TEXT_CHAIN}.')


def default_stages(config_file: str, arg: str = '') -> tuple[str, ...]:
  """The chain of the config's default stage, without its optional stages."""
  config = config_utils.load_config(f'{config_file}:{arg}' if arg else config_file)
  return tuple(s for s in chain_of(config.stage) if s not in stages_lib.OPTIONAL)


def stage_config(config_file: str, stage: str, arg: str, workdir: str, trained=None):
  """The stage's config, started from its predecessor's workdir; an optional predecessor
  (`stages.OPTIONAL`) only when it is in `trained` (default: always) or already in the run."""
  config = config_utils.load_config(f'{config_file}:stage={stage}' + (f',{arg}' if arg else ''))
  overrides = {'data.data_dir': os.path.join(workdir, 'data')}
  predecessor = stages_lib.STAGES[stage].init_from
  if predecessor:
    source = os.path.join(workdir, stage_dir(predecessor))
    if (trained is None or predecessor not in stages_lib.OPTIONAL or predecessor in trained
        or os.path.isdir(source)):
      overrides.update({'init_from.workdir': source, 'init_from.path': '',
                        'init_from.use_ema': True})
  return config_utils.override(config, **overrides)


def train_all(workdir: str, config_file: str, arg: str, stages=stages_lib.CHAIN) -> None:
  """Trains `stages` (of one chain) in order, logging progress and an ETA over the run."""
  known = stages_lib.CHAIN + stages_lib.TEXT_CHAIN
  unknown = [stage for stage in stages if stage not in known]
  if unknown:
    raise ValueError(f'Unknown stages {unknown}; expected some of {known}.')
  start = time.time()
  for index, stage in enumerate(stages):
    config = stage_config(config_file, stage, arg, workdir, trained=stages[:index])
    logging.info('=== Stage %d/%d: %s (%d steps) ===', index + 1, len(stages), stage,
                 config.total_steps)
    try:
      trainer.train_and_evaluate(config, os.path.join(workdir, stage_dir(stage)))
    except signals.Stopped as stopped:
      raise signals.Stopped(f'Stage {stage!r}: {stopped}', stopped.step) from None
    elapsed = time.time() - start
    eta = elapsed / (index + 1) * (len(stages) - index - 1)
    logging.info('=== %s done; %.0f s elapsed, about %.0f s to go for training ===', stage,
                 elapsed, eta)
