"""Resuming a used workdir: the saved config must match, or the old run is moved aside on request.

A workdir with checkpoints resumes only under the config it was trained with.
`check_config_change` compares the config saved with the newest checkpoint to
the new one, key by key: a change outside `RESUMABLE_CHANGES` (model, data,
seed, batch, optimiser, trainable set, ...) refuses with one error naming
every changed key (old -> new); changes inside it proceed with one warning
listing them. `--fresh_start` (`fresh_start=True`) moves the previous run aside
to `<workdir>/previous-<UTC time>/` and trains from scratch; nothing is deleted.
"""

import datetime
import fnmatch
import json

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import ml_collections

from videoldm import checkpoints

# Keys whose change keeps a run's meaning (shell-style patterns over dotted keys).
RESUMABLE_CHANGES = (
    'total_steps',                     # Train longer (or stop earlier).
    'optimizer.decay_steps',           # The learning-rate schedule's length.
    'log_every', 'eval_every', 'eval_steps', 'sample_every', 'metrics_every',
    'checkpoint.*',                    # Cadence, how many to keep, async writes.
    'max_consecutive_nonfinite',
    'multiprocess', 'mesh.*', 'sharding.*',  # The restore reshards onto the new devices.
    'init_from.*',                     # Read only by a fresh start.
    'sampling.*',                      # Logged samples and evaluation only.
    'data.data_dir',                   # Where the same prepared data lives (a moved run).
    'model.remat', 'model.remat_policy', '*.attention_implementation',  # Same maths.
    'model.decode_chunk',
)


class ConfigChangedError(ValueError):
  """The new config changes keys that the checkpoints in a workdir depend on."""


def flat_config(config: ml_collections.ConfigDict | dict) -> dict:
  """{'a.b': leaf} of a config as JSON data (tuples and lists compare equal)."""
  if isinstance(config, ml_collections.ConfigDict):
    config = checkpoints.config_to_json_dict(config)
  flat = {}
  for key, value in config.items():
    if isinstance(value, dict) and value:
      flat.update({f'{key}.{inner}': leaf for inner, leaf in flat_config(value).items()})
    else:
      flat[key] = value
  return flat


def config_changes(saved: ml_collections.ConfigDict,
                   new: ml_collections.ConfigDict) -> list[tuple[str, object, object]]:
  """(key, old, new) for every leaf that differs; a missing leaf reads as '<absent>'.

  `saved` may have been upgraded (`checkpoints.ADDED_FIELDS`): a field one side
  lacks and the other holds at its added default is not a change.
  """
  old_flat, new_flat = flat_config(saved), flat_config(new)
  added = {dotted: value for dotted, value, _ in checkpoints.ADDED_FIELDS}
  changes = []
  for key in sorted(set(old_flat) | set(new_flat)):
    old, value = old_flat.get(key, '<absent>'), new_flat.get(key, '<absent>')
    unchanged_addition = key in added and '<absent>' in (old, value) and added[key] in (old, value)
    if old == value or unchanged_addition:  # An added field at its old meaning: no change.
      continue
    changes.append((key, old, value))
  return changes


def is_resumable(key: str) -> bool:
  return any(fnmatch.fnmatchcase(key, pattern) for pattern in RESUMABLE_CHANGES)


def _describe(changes) -> str:
  return ', '.join(f'{key} {json.dumps(old)} -> {json.dumps(new)}' for key, old, new in changes)


def saved_steps(workdir: str) -> list[int]:
  """The finished checkpoint steps in `workdir`, newest first."""
  root = epath.Path(checkpoints.checkpoint_dir(workdir))
  if not root.is_dir():
    return []
  return sorted((int(path.name) for path in root.iterdir() if path.name.isdigit()), reverse=True)


def newest_saved_config(workdir: str) -> tuple[int, ml_collections.ConfigDict] | None:
  """(step, config) of the newest checkpoint whose config is readable, or None."""
  for step in saved_steps(workdir):
    step_dir = epath.Path(checkpoints.checkpoint_dir(workdir)) / str(step)
    try:
      return step, checkpoints.read_config(str(step_dir))
    except (OSError, ValueError) as error:  # Unreadable: the restore moves that step aside.
      logging.warning('Checkpoint step %d has no readable config (%s); trying older ones.',
                      step, error)
  return None


def check_config_change(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises ConfigChangedError unless `config` may resume `workdir`; warns about allowed changes."""
  found = newest_saved_config(workdir)
  if found is None:
    return
  step, saved = found
  changes = config_changes(saved, config)
  refused = [change for change in changes if not is_resumable(change[0])]
  if refused:
    raise ConfigChangedError(
        f'Workdir {workdir!r} holds a run at step {step} trained with another config: '
        f'{_describe(refused)}; resume with the saved values, choose a new --workdir, or pass '
        '--fresh_start (fresh_start=True) to move the old run aside and start over.')
  if changes:
    logging.warning('Resuming %s at step %d with config changes: %s.', workdir, step,
                    _describe(changes))


def move_previous_run(workdir: str) -> str | None:
  """Moves everything in `workdir` to `<workdir>/previous-<UTC time>/`; returns that path.

  Process 0 moves, the others wait for it. None when the workdir holds no checkpoint.
  """
  if not saved_steps(workdir):
    return None
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%d-%H%M%S')
  target = epath.Path(workdir) / f'previous-{stamp}'
  if jax.process_index() == 0:
    target.mkdir(parents=True, exist_ok=False)
    for path in epath.Path(workdir).iterdir():
      if path.name != target.name and not path.name.startswith('previous-'):
        path.rename(target / path.name)
    logging.warning('fresh_start: moved the previous run in %s to %s.', workdir, target)
  multihost_utils.sync_global_devices('videoldm_previous_run_moved')
  return str(target)
