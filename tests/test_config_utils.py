"""Config scripts: `parse_arg` typing, locked configs, misspelled keys."""

import textwrap

import pytest

from videoldm import config_utils


def test_parse_arg_types_and_bare_flags():
  arg = config_utils.parse_arg('variant=tiny,runlocal,steps=7,lr=0.5',
                               variant='base', runlocal=False, steps=1, lr=1.0)
  assert (arg.variant, arg.runlocal, arg.steps, arg.lr) == ('tiny', True, 7, 0.5)


def test_parse_arg_defaults_when_empty():
  arg = config_utils.parse_arg(None, variant='base', runlocal=False)
  assert (arg.variant, arg.runlocal) == ('base', False)


def test_parse_arg_unknown_key_is_named():
  with pytest.raises(ValueError, match="Unknown config argument 'varaint'"):
    config_utils.parse_arg('varaint=tiny', variant='base')


def test_parse_arg_bad_integer_is_named():
  with pytest.raises(ValueError, match="steps='many' is not an integer"):
    config_utils.parse_arg('steps=many', steps=1)


@pytest.fixture()
def config_file(tmp_path):
  path = tmp_path / 'toy.py'
  path.write_text(textwrap.dedent('''
      import ml_collections
      from videoldm import config_utils

      def get_config(arg=None):
        arg = config_utils.parse_arg(arg, variant='base', runlocal=False)
        config = ml_collections.ConfigDict()
        config.optimizer = dict(lr=1e-4, warmup_steps=10)
        config.total_steps = 10 if arg.runlocal else 1000
        config.variant = arg.variant
        return config
  '''))
  return str(path)


def test_load_config_applies_arg(config_file):
  config = config_utils.load_config(config_file + ':variant=tiny,runlocal')
  assert (config.variant, config.total_steps) == ('tiny', 10)


def test_loaded_config_is_locked_and_names_misspelled_key(config_file):
  config = config_utils.load_config(config_file)
  with pytest.raises(AttributeError, match='lrr'):
    config.optimizer.lrr = 1.0
  with pytest.raises(AttributeError, match='totl_steps'):
    _ = config.totl_steps


def test_override_names_unknown_key(config_file):
  config = config_utils.load_config(config_file)
  changed = config_utils.override(config, **{'optimizer.lr': 3e-4})
  assert changed.optimizer.lr == 3e-4 and config.optimizer.lr == 1e-4
  with pytest.raises(ValueError, match="'optimizer.lrr'"):
    config_utils.override(config, **{'optimizer.lrr': 1.0})


def test_missing_config_file_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match='nope.py'):
    config_utils.load_config(str(tmp_path / 'nope.py') + ':runlocal')
