"""configs/*.py: `runlocal` shrinks without dropping keys, every leaf is settable from the
command line, and the quickstart is moving_digits plus its listed overrides."""

import importlib.util
import os
import pathlib

from absl import flags
from ml_collections import config_dict
from ml_collections import config_flags
import pytest

from videoldm import config_utils
from videoldm import stages

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / 'configs'
MOVING_DIGITS = str(CONFIGS / 'moving_digits.py')
QUICKSTART = str(CONFIGS / 'moving_digits_quickstart.py')
SD_VIDEO = str(CONFIGS / 'sd_video.py')
SD_ARGS = ('', 'sd_version=sd21', 'video_dir=/data/videos', 'init_path=/models/p.safetensors',
           'stage=text_interpolation,init_workdir=/runs/sd/video', 'stage=text_image',
           'stage=text_decoder', 'stage=text_upsampler,upscaler_path=/models/sd_x4_upscaler')
# The dataset builder's free-form kwargs: runlocal may swap the dataset, and with it their keys.
BUILDER_KWARGS = ('data', 'builder_kwargs')


def _module(path: str):
  spec = importlib.util.spec_from_file_location(f'_test_config_{pathlib.Path(path).stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope='module')
def tiny_sd(tmp_path_factory):
  """A tiny random SD folder, so sd_video reads its backbone configs from disk."""
  from videoldm.convert import tiny_sd as tiny_sd_lib  # pylint: disable=g-import-not-at-top
  return tiny_sd_lib.write_tiny_sd(str(tmp_path_factory.mktemp('tiny_sd')))


def full_specs(tiny_sd: str) -> list[str]:
  """`path[:arg]` of every shipped full-size config (add `runlocal` for the CPU-size one)."""
  specs = [f'{MOVING_DIGITS}:stage={stage}' for stage in stages.CHAIN]
  specs += [f'{QUICKSTART}:stage={stage}' for stage in stages.CHAIN]
  specs += [f'{SD_VIDEO}:{arg}' for arg in SD_ARGS + (
      f'sd_path={tiny_sd}', f'stage=text_interpolation,sd_path={tiny_sd}')]
  return specs


def leaves(config, prefix=(), whole=BUILDER_KWARGS) -> dict[tuple, tuple]:
  """{path: (value, declared type)} of every leaf; the ConfigDict at `whole` counts as one."""
  found = {}
  for name in config.keys():
    path, value = prefix + (name,), config[name]
    if isinstance(value, config_dict.ConfigDict) and path != whole:
      found.update(leaves(value, path, whole))
    else:
      found[path] = (value, config.get_type(name))
  return found


def values(config) -> dict[str, object]:
  """{dotted key: value} of every leaf."""
  return {'.'.join(path): value for path, (value, _) in leaves(config, whole=None).items()}


def test_runlocal_shrinks_and_keeps_every_key(tiny_sd):
  for spec in full_specs(tiny_sd):
    full = config_utils.load_config(spec)
    local = config_utils.load_config(spec + ',runlocal')
    assert leaves(local).keys() == leaves(full).keys(), spec
    assert local.total_steps < full.total_steps and local.batch_size < full.batch_size, spec
    assert local.sampling.num_steps <= full.sampling.num_steps, spec


def _new_value(value, kind):
  """A value of `kind` different from `value`, and how the command line writes it."""
  if kind is bool:
    return (not value), str(not value).lower()
  if kind in (int, float):
    new = kind((value or 0) + 1)
    return new, repr(new)
  if kind is str:
    return (value or '') + 'x', (value or '') + 'x'
  if kind is tuple:
    return value + ('x',), repr(value + ('x',))
  raise AssertionError(f'No command-line form for a {kind.__name__} leaf.')


@pytest.mark.filterwarnings('ignore:the load_module:DeprecationWarning')  # In config_flags.
def test_every_leaf_can_be_set_from_the_command_line(tiny_sd):
  for spec in full_specs(tiny_sd):
    for local in ('', ',runlocal'):
      config = config_utils.load_config(spec + local)
      argv, expected = ['main', f'--config={spec}{local}'], {}
      for path, (value, kind) in leaves(config, whole=None).items():
        if isinstance(value, config_dict.ConfigDict):  # sd_video runlocal's builder_kwargs.
          assert path == BUILDER_KWARGS and not value, (spec, path)
          continue
        assert kind is not type(None), f'{".".join(path)} of {spec}{local} is a bare None'
        new, text = _new_value(value, kind)
        expected['.'.join(path)] = new
        argv.append(f'--config.{".".join(path)}={text}')
      flag_values = flags.FlagValues()
      config_flags.DEFINE_config_file('config', None, 'Config file.', flag_values=flag_values,
                                      lock_config=True, sys_argv=argv)
      flag_values(argv)
      parsed = values(flag_values.config)
      assert {path: parsed[path] for path in expected} == expected, spec + local


@pytest.mark.parametrize('local', ['', ',runlocal'])
def test_quickstart_is_moving_digits_with_its_overrides(local):
  quickstart = _module(QUICKSTART)
  assert set(quickstart.QUICKSTART_STEPS) == set(stages.CHAIN)
  for stage in stages.CHAIN:
    base = values(config_utils.load_config(f'{MOVING_DIGITS}:stage={stage}{local}'))
    config = values(config_utils.load_config(f'{QUICKSTART}:stage={stage}{local}'))
    overrides = quickstart.overrides(stage)
    assert config.keys() == base.keys(), stage
    changed = {key for key in base if config[key] != base[key]}
    assert changed <= set(overrides), (stage, changed - set(overrides))
    if not local:  # Every override takes effect (runlocal then shrinks some of them).
      assert {key: config[key] for key in overrides} == overrides, stage
      assert config['total_steps'] == quickstart.QUICKSTART_STEPS[stage]


def test_moving_digits_has_no_quickstart_argument():
  with pytest.raises(ValueError, match="Unknown config argument 'quickstart'"):
    config_utils.load_config(f'{MOVING_DIGITS}:stage=video,quickstart')


def test_sd_video_reads_the_schedule_of_the_pipeline_folder(tiny_sd, tmp_path):
  """An SD 2.x folder's v-prediction comes from its scheduler config (its U-Net's config
  does not say), as do its betas."""
  import json  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  folder = str(tmp_path / 'sd2')
  shutil.copytree(tiny_sd, folder)
  path = os.path.join(folder, 'scheduler', 'scheduler_config.json')
  with open(path) as f:
    scheduler = json.load(f)
  with open(path, 'w') as f:
    json.dump(dict(scheduler, prediction_type='v_prediction', beta_end=0.02), f)
  config = config_utils.load_config(f'{SD_VIDEO}:sd_path={folder}')
  assert config.diffusion.prediction_type == config.model.unet.prediction_type == 'v'
  assert config.diffusion.beta_end == 0.02
  plain = config_utils.load_config(f'{SD_VIDEO}:sd_path={tiny_sd}')
  assert plain.diffusion.prediction_type == 'eps'
