"""Registry of training stages: `register_stage(name, cls)` / `get_stage(name)`.

Stage modules register themselves on import; `get_stage` imports every module
of this package on first use, so a new stage module needs no edit here. A
module that fails to import is skipped (one broken stage does not disable the
others) and named, with its error, when a lookup fails.
"""

import importlib
import pkgutil

from absl import logging

from videoldm.train.stages.base import Stage

_REGISTRY: dict[str, type[Stage]] = {}
_IMPORT_ERRORS: dict[str, str] = {}
_builtins_loaded = False


def register_stage(name: str, cls: type[Stage]) -> type[Stage]:
  """Registers `cls` under `name`; re-registering a name replaces it."""
  if not (isinstance(cls, type) and issubclass(cls, Stage)):
    raise ValueError(f'Stage {name!r} must be a subclass of Stage, got {cls!r}.')
  _REGISTRY[name] = cls
  return cls


def _load_builtins() -> None:
  global _builtins_loaded
  if _builtins_loaded:
    return
  _builtins_loaded = True
  for module in pkgutil.iter_modules(__path__):
    if module.name == 'base':
      continue
    try:
      importlib.import_module(f'{__name__}.{module.name}')
    except ImportError as error:
      _IMPORT_ERRORS[module.name] = f'{type(error).__name__}: {error}'
      logging.warning('Stage module %s failed to import: %s', module.name, error)


def get_stage(name: str) -> type[Stage]:
  """The stage class registered as `name`; an unknown name is a ValueError listing known ones."""
  if name not in _REGISTRY:
    _load_builtins()
  if name not in _REGISTRY:
    broken = ''.join(f'; stage module {module!r} failed to import ({error})'
                     for module, error in sorted(_IMPORT_ERRORS.items()))
    raise ValueError(f'Unknown stage {name!r}; expected one of {sorted(_REGISTRY)}{broken}.')
  return _REGISTRY[name]


def known_stages() -> list[str]:
  """Names of all registered stages (built-ins included)."""
  _load_builtins()
  return sorted(_REGISTRY)


__all__ = ['Stage', 'get_stage', 'known_stages', 'register_stage']
