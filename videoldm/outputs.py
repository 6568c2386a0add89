"""Where the entry points write: never over an existing output unless asked, never into checkpoints;
workdirs that are writable and have room.

`check_output(path, overwrite)` runs before any work: an existing file, or a
non-empty folder, at `path` is refused unless `overwrite`; a path inside a
run's checkpoint folder (`<workdir>/checkpoints/...`, where orbax keeps the
steps a run resumes from) is always refused.
"""

import os
import shutil

from videoldm import checkpoints


def inside_checkpoints(path: str) -> str | None:
  """The checkpoint folder that `path` is in (or is), else None."""
  current = os.path.abspath(path)
  while True:
    if os.path.basename(current) == os.path.basename(checkpoints.checkpoint_dir('')) and any(
        name.isdigit() for name in _listdir(current)):
      return current
    parent = os.path.dirname(current)
    if parent == current:
      return None
    current = parent


def _listdir(path: str) -> list[str]:
  return os.listdir(path) if os.path.isdir(path) else []


def check_output(path: str, overwrite: bool = False) -> None:
  """Raises unless `path` may be written; see the module docstring."""
  folder = inside_checkpoints(path)
  if folder is not None:
    raise ValueError(f'Output {path!r} is inside the checkpoint folder {folder!r}; write it '
                     'elsewhere (a run resumes from those files).')
  exists = os.path.isfile(path) or bool(_listdir(path))
  if exists and not overwrite:
    raise FileExistsError(f'Output {path!r} already exists; pass --overwrite (overwrite=True) '
                          'to replace it, or choose another path.')


def replace_folder(path: str, overwrite: bool = False) -> None:
  """`check_output` for a folder output, then an empty folder at `path` (old content removed)."""
  check_output(path, overwrite)
  if os.path.isdir(path) and _listdir(path):
    shutil.rmtree(path)
  os.makedirs(path, exist_ok=True)


MIN_FREE_BYTES = 100 * 2**20  # Below this a checkpoint write would fail midway.


def check_workdir(workdir: str, min_free_bytes: int = MIN_FREE_BYTES) -> None:
  """Raises unless the local `workdir` can be created, written and has room; remote ones pass."""
  if '://' in workdir:  # gs:// and the like: orbax and TensorFlow check those themselves.
    return
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write_probe_{os.getpid()}')
    with open(probe, 'w', encoding='utf-8') as file:
      file.write('ok')
    os.remove(probe)
  except OSError as error:
    raise PermissionError(f'Workdir {workdir!r} is not writable ({error.strerror}); choose '
                          'another --workdir.') from None
  free = shutil.disk_usage(workdir).free
  if free < min_free_bytes:
    raise OSError(f'Workdir {workdir!r} has {free / 2**20:.0f} MiB free; at least '
                  f'{min_free_bytes / 2**20:.0f} MiB are needed for checkpoints.')
