"""Loading trained stages for sampling: a run's stage workdirs or an exported folder.

A run (as the quickstart lays it out) is a folder with one workdir per stage:
`<run>/autoencoder`, `<run>/image`, `<run>/video`, ... Each holds orbax
checkpoints whose `config` item is the stage's config; params are read with
their EMA values where the run kept an EMA.
"""

import os

import flax

from videoldm import checkpoints
from videoldm import stages
from videoldm.pipelines import video_ldm


def load_stage(workdir: str, use_ema: bool = True) -> video_ldm.Model:
  """The stage trained in `workdir` (its latest checkpoint) with inference params."""
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f'Stage workdir {workdir!r} does not exist.')
  step_dir = checkpoints.latest_step_dir(workdir)
  config = checkpoints.read_config(step_dir)
  stage = stages.get_stage(config.stage)(config)
  flat = checkpoints.read_state_params(os.path.join(step_dir, 'state'),
                                         use_ema=use_ema and config.get('ema_decay') is not None)
  params = flax.traverse_util.unflatten_dict(flat, sep='/')
  return video_ldm.Model(stage, params)


def load_run(run_dir: str, names=stages.SAMPLING_ROLES, required=('image', 'video')) -> dict:
  """`{stage name: Model}` for the stages of `run_dir` that exist (required ones must)."""
  if not os.path.isdir(run_dir):
    raise FileNotFoundError(f'Run directory {run_dir!r} does not exist.')
  from videoldm.pipelines import exported  # pylint: disable=g-import-not-at-top
  if exported.is_exported(run_dir):  # A `videoldm.export --format=safetensors` folder.
    return exported.load_exported(run_dir, names, required)
  models = {}
  for name in names:
    workdir = os.path.join(run_dir, name)
    if not os.path.isdir(workdir):
      if name in required:
        raise FileNotFoundError(f'Run {run_dir!r} has no {name!r} stage ({workdir!r} is '
                                'missing); train it first.')
      continue
    models[name] = load_stage(workdir)
  return models
