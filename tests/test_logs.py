"""Console logs: libraries' INFO lines stay off the console unless asked for."""

import logging as std_logging
import os

from absl import logging

from videoldm import logs


def _record(pathname, level):
  return std_logging.LogRecord('absl', level, pathname, 1, 'message', (), None)


def test_library_info_is_dropped_and_warnings_and_own_lines_kept():
  site = os.path.join(os.sep, 'venv', 'lib', 'python3.11', 'site-packages')
  orbax = os.path.join(site, 'orbax', 'checkpoint', '_src', 'checkpoint_manager.py')
  tfds = os.path.join(site, 'tensorflow_datasets', 'core', 'dataset_builder.py')
  own = os.path.join(os.sep, 'work', 'videoldm', 'train', 'trainer.py')
  clu = os.path.join(site, 'clu', 'metric_writers', 'logging_writer.py')  # Training lines.
  keep = logs.LibraryInfoFilter().filter
  assert not keep(_record(orbax, std_logging.INFO))
  assert not keep(_record(tfds, std_logging.DEBUG))
  assert keep(_record(orbax, std_logging.WARNING))
  assert keep(_record(own, std_logging.INFO))
  assert keep(_record(clu, std_logging.INFO))


def test_quiet_libraries_installs_once_and_show_removes_it():
  handler = logging.get_absl_handler()
  try:
    logs.quiet_libraries(show=False)
    logs.quiet_libraries(show=False)
    assert sum(isinstance(f, logs.LibraryInfoFilter) for f in handler.filters) == 1
  finally:
    logs.quiet_libraries(show=True)
  assert not any(isinstance(f, logs.LibraryInfoFilter) for f in handler.filters)
