"""Helpers for ml-collections config scripts (`get_config(arg)` convention).

A config script in `configs/` defines `get_config(arg=None)`; `arg` is the
text after the colon in `--config=configs/moving_digits.py:stage=video,runlocal`
and is read with `parse_arg`. Configs are used locked: a misspelled key is an
error that names it.
"""

import copy
import importlib.util
import os

import ml_collections
from ml_collections import config_dict

# Model fields where None means "unset", and the type a command-line value for them has.
OPTIONAL_FIELDS = dict(attention_implementation=str, attention_head_dim=int,
                       cross_attention_dim=int, num_class_embeds=int, num_heads=int,
                       head_dim=int)


def typed_nones(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with each None leaf of `OPTIONAL_FIELDS` a typed placeholder (still None).

  A bare None cannot be set from the command line; a typed placeholder can.
  """
  for name, value in list(config.items()):
    if isinstance(value, ml_collections.ConfigDict):
      typed_nones(value)
    elif value is None and name in OPTIONAL_FIELDS:
      config[name] = config_dict.placeholder(OPTIONAL_FIELDS[name])
  return config


def load_module(path: str):
  """The config script at `path` as a module (configs/ is a folder of scripts, not a package)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'Config file {path!r} does not exist.')
  module_spec = importlib.util.spec_from_file_location(
      f'_videoldm_config_{abs(hash(path))}', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def _parse_value(name: str, text: str, default):
  """Parses `text` into the type of `default`."""
  if isinstance(default, bool):
    if text.lower() in ('', 'true', '1', 'yes'):
      return True
    if text.lower() in ('false', '0', 'no'):
      return False
    raise ValueError(f'Config argument {name}={text!r} is not a boolean; '
                     'expected true/false.')
  if isinstance(default, int):
    try:
      return int(text)
    except ValueError:
      raise ValueError(f'Config argument {name}={text!r} is not an integer.') from None
  if isinstance(default, float):
    try:
      return float(text)
    except ValueError:
      raise ValueError(f'Config argument {name}={text!r} is not a number.') from None
  return text


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses `'k1=v1,k2,k3=v3'` into a locked ConfigDict typed like `defaults`.

  A bare key (`runlocal`) sets a boolean to True. Keys not in `defaults` raise
  a ValueError naming them, so a typo in the command line is caught.

  >>> parse_arg('variant=tiny,runlocal', variant='base', runlocal=False)
  """
  values = dict(defaults)
  for item in (arg or '').split(','):
    item = item.strip()
    if not item:
      continue
    name, _, text = item.partition('=')
    name = name.strip()
    if name not in defaults:
      raise ValueError(f'Unknown config argument {name!r}; expected one of '
                       f'{sorted(defaults)}.')
    if '=' not in item and not isinstance(defaults[name], bool):
      raise ValueError(f'Config argument {name!r} needs a value ({name}=...).')
    values[name] = _parse_value(name, text.strip(), defaults[name])
  return ml_collections.ConfigDict(values, type_safe=True)


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads `'path/to/config.py[:arg]'` and returns the config, locked."""
  path, _, arg = spec.partition(':')
  module = load_module(path)
  if not hasattr(module, 'get_config'):
    raise ValueError(f'Config file {path!r} defines no get_config(arg).')
  config = module.get_config(arg or None)
  config.lock()
  return config


def override(config: ml_collections.ConfigDict, **values) -> ml_collections.ConfigDict:
  """Returns a locked copy of `config` with dotted-key overrides applied.

  `override(cfg, **{'optimizer.lr': 1e-3})`; an unknown key raises a
  ValueError naming it.
  """
  config = copy.deepcopy(config)  # Keeps typed placeholders typed.
  config.lock()
  for dotted, value in values.items():
    node = config
    *parents, leaf = dotted.split('.')
    for parent in parents:
      if parent not in node:
        raise ValueError(f'Unknown config key {dotted!r}: {parent!r} does not exist.')
      node = node[parent]
    if leaf not in node:
      raise ValueError(f'Unknown config key {dotted!r}: {leaf!r} does not exist.')
    node[leaf] = value
  return config
