"""Writing a run's orbax checkpoints, restoring them on resume, and `init_from` loading.

A run's checkpoints live in `<workdir>/checkpoints/<step>/` with three items:
`state` (the TrainState; each process writes its shards), `data` (JSON: the
data iterator state of every process, gathered to process 0, which writes
JSON items) and `config` (JSON). Orbax writes into a temporary dir and renames it when
complete, so a half-written step is never listed. Restoring tries the newest
step first and falls back to older ones when a step is unreadable.
"""

import base64
import json
import os
import re
from typing import Any, Callable

from absl import logging
import flax
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from videoldm import checkpoints

ITEMS = ('state', 'data', 'config')


def make_manager(workdir: str, checkpoint_config) -> ocp.CheckpointManager:
  """A CheckpointManager keeping the latest `checkpoint_config.keep` steps (0: all)."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=int(checkpoint_config.keep) if checkpoint_config.keep else None,
      enable_async_checkpointing=bool(checkpoint_config.async_save),
      create=True, cleanup_tmp_directories=True)
  return ocp.CheckpointManager(checkpoints.checkpoint_dir(workdir), options=options, item_names=ITEMS)


def _encode_data_state(data_state: Any) -> Any:
  """Iterator states may be bytes (e.g. grain); JSON needs text."""
  if isinstance(data_state, bytes):
    return {'__bytes_base64__': base64.b64encode(data_state).decode('ascii')}
  return data_state


def _decode_data_state(data_state: Any) -> Any:
  if isinstance(data_state, dict) and set(data_state) == {'__bytes_base64__'}:
    return base64.b64decode(data_state['__bytes_base64__'])
  return data_state


def gather_process_states(data_state: Any) -> list:
  """Every process's (JSON-ready) data iterator state, in process order; call on all processes."""
  data_state = _encode_data_state(data_state)
  if jax.process_count() == 1:
    return [data_state]
  text = np.frombuffer(json.dumps(data_state).encode(), np.uint8)
  lengths = multihost_utils.process_allgather(np.int32(len(text)))
  padded = np.zeros(int(np.max(lengths)), np.uint8)
  padded[:len(text)] = text
  rows = multihost_utils.process_allgather(padded)  # (process_count, longest)
  return [json.loads(bytes(row[:length]).decode()) for row, length in zip(rows, lengths)]


def own_data_state(saved: dict, step: int) -> Any:
  """This process's data iterator state from a restored `data` item."""
  states = saved.get('processes') or [saved['iterator']]
  if len(states) != jax.process_count():
    raise ValueError(f'The checkpoint at step {step} holds data iterator states of '
                     f'{len(states)} processes but this run has {jax.process_count()}; '
                     'expected the same process count to resume the data exactly.')
  return _decode_data_state(states[jax.process_index()])


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_state: Any,
         config: ml_collections.ConfigDict, force: bool = False) -> bool:
  """Saves (asynchronously when enabled) state, data iterator state and config."""
  args = ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=ocp.args.JsonSave({'processes': gather_process_states(data_state)}),
      config=ocp.args.JsonSave(checkpoints.config_to_json_dict(config)))
  return manager.save(step, args=args, force=force)


def restore_latest(manager: ocp.CheckpointManager,
                   abstract_state: Any) -> tuple[int, Any, Any] | None:
  """(step, state, data_state) from the newest readable step, or None if there is none.

  `abstract_state` is a tree of ShapeDtypeStructs carrying the target shardings.
  An unreadable step is moved aside to `<step>.corrupt` (one warning names it and
  the reason) and the next older one is tried, so the run can save that step
  again. Every process restores the same step: the one process 0 found.
  """
  manager.reload()
  corrupt, found = [], None
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    except Exception as error:  # Any unreadable file makes this step unusable.
      reason = str(error).splitlines()[0][:200] if str(error) else ''
      corrupt.append((step, f'{type(error).__name__}: {reason}'))
      continue
    found = step, restored.state, own_data_state(restored.data, step)
    break
  agreed = int(multihost_utils.broadcast_one_to_all(np.int64(-1 if found is None else found[0])))
  if agreed != (-1 if found is None else found[0]):
    raise RuntimeError(f'Process {jax.process_index()} restored step '
                       f'{None if found is None else found[0]} but process 0 restored '
                       f'{None if agreed < 0 else agreed}; the checkpoint folder '
                       f'{manager.directory} differs between processes.')
  for step, reason in corrupt:
    if jax.process_index() == 0:
      moved = move_aside(os.path.join(str(manager.directory), str(step)))
      logging.warning('Checkpoint step %d in %s is unreadable (%s); moved to %s and resuming '
                      'from %s.', step, manager.directory, reason, moved,
                      'scratch' if found is None else f'step {found[0]}')
  if corrupt:
    multihost_utils.sync_global_devices('videoldm_checkpoint_moved_aside')
    manager.reload()
  return found


def move_aside(step_dir: str) -> str:
  """Renames an unreadable step dir to `<step>.corrupt` (`.corrupt-1`, ... if taken)."""
  target, suffix = step_dir + '.corrupt', 0
  while os.path.exists(target):
    suffix += 1
    target = f'{step_dir}.corrupt-{suffix}'
  os.rename(step_dir, target)
  return target


# ----------------------------------------------------------------------------
# init_from: params of another run (or a params file) into a fresh tree.
# ----------------------------------------------------------------------------


def merge_init_params(target: Any, source: dict[str, np.ndarray], exempt=(),
                      description: str = 'source', ignore=()) -> tuple[Any, list[str]]:
  """Copies `source` leaves into `target` with a strict name and shape check.

  Source params matching an `ignore` regex are dropped first (e.g. a previous
  stage's discriminator). Target params matching an `exempt` regex may be
  absent from the source (they keep their init). Returns the new tree (numpy
  for loaded leaves) and the exempt paths that kept their init.
  """
  ignored = [re.compile(pattern) for pattern in ignore or ()]
  source = {path: value for path, value in source.items()
            if not any(regex.search(path) for regex in ignored)}
  regexes = [re.compile(pattern) for pattern in exempt or ()]
  is_exempt = lambda path: any(regex.search(path) for regex in regexes)
  flat_target = checkpoints.flat_params(target)
  kept_init = []
  for path, value in flat_target.items():
    if path not in source:
      if not is_exempt(path):
        raise ValueError(f'Parameter {path!r} is not in init_from {description!r} and matches '
                         'no init_from.exempt regex.')
      kept_init.append(path)
      continue
    if tuple(source[path].shape) != tuple(value.shape):
      if not is_exempt(path):
        raise ValueError(f'Parameter {path!r} has shape {tuple(source[path].shape)} in init_from '
                         f'{description!r} but {tuple(value.shape)} in the model.')
      kept_init.append(path)
      continue
    flat_target[path] = np.asarray(source[path], dtype=value.dtype)
  for path in source:
    if path not in flat_target and not is_exempt(path):
      raise ValueError(f'Parameter {path!r} of init_from {description!r} has no counterpart '
                       'in the model and matches no init_from.exempt regex.')
  return flax.traverse_util.unflatten_dict(flat_target, sep='/'), kept_init


def init_from_enabled(init_config) -> bool:
  return init_config is not None and bool(init_config.workdir or init_config.path)


def load_init_params(init_config, target: Any,
                     init_kept: Callable[[list[str]], dict[str, Any]] | None = None) -> Any:
  """`target` with every non-exempt leaf replaced by the one from `init_config`'s source.

  With `init_kept`, `target` may be abstract (ShapeDtypeStructs): the names are
  checked first, then `init_kept(paths)` gives the values of the leaves that
  keep their init (a flat dict), so only those are ever initialised.
  """
  description, source = checkpoints.read_source_params(init_config)
  params, kept_init = merge_init_params(target, source, init_config.exempt, description,
                                        init_config.ignore)
  if init_kept is not None:
    params = flax.traverse_util.unflatten_dict(
        {**checkpoints.flat_params(params), **init_kept(kept_init)}, sep='/')
  logging.info(init_summary(description, kept_init, init_config.exempt))
  return params


def init_summary(description: str, kept_init: list[str], exempt) -> str:
  """One log line: the source, and how many params keep their init under which patterns."""
  counts = {pattern: sum(1 for path in kept_init if re.search(pattern, path))
            for pattern in exempt}
  by_pattern = ', '.join(f'{count} match {pattern!r}' for pattern, count in counts.items())
  return (f'Initialised params from {description}; {len(kept_init)} exempt params keep their '
          f'init' + (f' ({by_pattern}).' if by_pattern else '.'))
