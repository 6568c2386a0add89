"""Console logging of the entry points: the run's own lines, libraries' INFO on request.

orbax writes a dozen INFO lines per checkpoint and TensorFlow, tfds, grain and
JAX more at start-up; they bury the training lines. `quiet_libraries()` drops
INFO (and DEBUG) records logged from those packages; their warnings and errors
always show. Entry points call it unless `--library_logs` is given.
"""

import logging as std_logging
import os

from absl import flags
from absl import logging

# Not clu: its writers and progress reports log the training lines themselves.
LIBRARIES = ('orbax', 'tensorflow', 'tensorflow_datasets', 'grain', 'jax', 'jaxlib', 'etils',
             'array_record')

_LIBRARY_LOGS = flags.DEFINE_bool('library_logs', False,
                                  "Show the INFO lines of orbax, TensorFlow, tfds, grain and JAX.")


def _library_of(pathname: str) -> str | None:
  parts = os.path.normpath(pathname).split(os.sep)
  return next((name for name in LIBRARIES if name in parts), None)


class LibraryInfoFilter(std_logging.Filter):
  """Drops records below WARNING that were logged from one of `LIBRARIES`."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or _library_of(record.pathname) is None


_FILTER = LibraryInfoFilter()


def quiet_libraries(show: bool | None = None) -> None:
  """Installs the filter on the console handlers (not when `show`; default: the flag)."""
  if show is None:
    show = _LIBRARY_LOGS.value if flags.FLAGS.is_parsed() else False
  handlers = [logging.get_absl_handler()] + std_logging.getLogger().handlers
  for handler in handlers:
    if show:
      handler.removeFilter(_FILTER)
    elif _FILTER not in handler.filters:
      handler.addFilter(_FILTER)
