"""Strict, mechanical conversion between PyTorch state dicts and Flax params.

Flax modules in `videoldm.models` mirror PyTorch state-dict names, with index
segments joined by an underscore: torch `down_blocks.0.resnets.1.conv1.weight`
is flax `('down_blocks_0', 'resnets_1', 'conv1', 'kernel')`. Leaves map as

  Conv weight (O, I, kh, kw)      <-> kernel (kh, kw, I, O)
  Conv3d weight (O, I, kf, kh, kw) <-> kernel (kf, kh, kw, I, O)
  Linear weight (O, I)            <-> kernel (I, O)
  Norm weight (C,)                <-> scale (C,)
  Embedding weight (N, D)         <-> embedding (N, D)
  bias                            <-> bias

Which of `kernel`/`scale`/`embedding` a `weight` becomes is read off the target
param tree, so the conversion needs no per-model table beyond optional renames.
`raise_on_mismatch` is the package's one report of weights that do not fit a
model (also used by `videoldm.evaluation.weights`).
"""

from typing import Callable, Iterable, Mapping

import flax.traverse_util
import numpy as np

_WEIGHT_LEAVES = ('kernel', 'scale', 'embedding')
# PyTorch module names that end in `_<digit>` without being list indices.
UNINDEXED_NAMES = frozenset({'linear_1', 'linear_2'})


def torch_key_to_flax_path(key: str) -> tuple[str, ...]:
  """Maps `a.0.b.weight` to `('a_0', 'b', 'weight')` (leaf not yet renamed)."""
  parts = []
  for part in key.split('.'):
    if part.isdigit() and parts:
      parts[-1] = f'{parts[-1]}_{part}'
    else:
      parts.append(part)
  return tuple(parts)


def flax_path_to_torch_key(path: tuple[str, ...]) -> str:
  """Inverse of `torch_key_to_flax_path` with the leaf renamed to torch's."""
  *modules, leaf = path
  names = []
  for module in modules:
    head, sep, index = module.rpartition('_')
    indexed = sep and index.isdigit() and module not in UNINDEXED_NAMES
    names.append(f'{head}.{index}' if indexed else module)
  names.append('bias' if leaf == 'bias' else 'weight')
  return '.'.join(names)


def _to_flax_layout(value: np.ndarray, leaf: str) -> np.ndarray:
  if leaf == 'kernel' and value.ndim >= 3:  # Conv: (O, I, *k) -> (*k, I, O).
    return np.transpose(value, tuple(range(2, value.ndim)) + (1, 0))
  if leaf == 'kernel' and value.ndim == 2:  # Linear: (O, I) -> (I, O).
    return value.T
  return value


def _to_torch_layout(value: np.ndarray, leaf: str) -> np.ndarray:
  if leaf == 'kernel' and value.ndim >= 3:  # Conv: (*k, I, O) -> (O, I, *k).
    n = value.ndim
    return np.transpose(value, (n - 1, n - 2) + tuple(range(n - 2)))
  if leaf == 'kernel' and value.ndim == 2:
    return value.T
  return value


def _format_names(names) -> str:
  names = sorted(names)
  shown = ', '.join(names[:20])
  return shown + (f' (and {len(names) - 20} more)' if len(names) > 20 else '')


def raise_on_mismatch(
    loaded: str,
    target: str,
    source: str,
    missing: Iterable[str] = (),
    unexpected: Iterable[str] = (),
    misshaped: Iterable[tuple[str, tuple[int, ...], tuple[int, ...], str | None]] = (),
) -> None:
  """Raises one ValueError naming every missing, unexpected and mis-shaped entry, if any.

  The message reads `<loaded> does not match <target>; missing from <source>:
  a, b; unexpected in <source>: c; mis-shaped: d (9,) (expected flax shape (8,)
  for d/path).` with up to 20 sorted names per kind.

  Args:
    loaded: what was read, e.g. 'State dict' or "Weights file 'i3d.npz'".
    target: what it must fit, e.g. 'the model' or 'I3D'.
    source: where missing names were looked for, e.g. 'the state dict'.
    missing: names the target needs and the source lacks.
    unexpected: names in the source that the target does not have.
    misshaped: `(name, found shape, expected flax shape, target name)`; the
      target name is None where it equals `name`.
  """
  missing, unexpected = list(missing), list(unexpected)
  misshaped = [f'{name} {tuple(found)} (expected flax shape {tuple(expected)}'
               f'{"" if path is None else f" for {path}"})'
               for name, found, expected, path in misshaped]
  problems = []
  if missing:
    problems.append(f'missing from {source}: {_format_names(missing)}')
  if unexpected:
    problems.append(f'unexpected in {source}: {_format_names(unexpected)}')
  if misshaped:
    problems.append(f'mis-shaped: {_format_names(misshaped)}')
  if problems:
    raise ValueError(f'{loaded} does not match {target}; ' + '; '.join(problems) + '.')


def state_dict_to_params(
    state_dict: Mapping[str, np.ndarray],
    target,
    rename: Callable[[str], str] | None = None,
    ignore: Callable[[str], bool] | None = None,
):
  """Converts a PyTorch state dict into a Flax param tree shaped like `target`.

  Args:
    state_dict: torch parameter name -> numpy array.
    target: nested dict of arrays or `jax.ShapeDtypeStruct` (e.g. the 'params'
      collection of `jax.eval_shape(model.init, ...)`).
    rename: optional map applied to each torch name before the mechanical one.
    ignore: optional predicate naming buffers to drop (e.g. `position_ids`).

  Returns:
    A nested dict of numpy arrays with exactly the structure of `target`.

  Raises:
    ValueError: naming every missing, unexpected or mis-shaped parameter.
  """
  flat_target = flax.traverse_util.flatten_dict(target)
  by_prefix = {}
  for path in flat_target:
    by_prefix.setdefault(path[:-1], []).append(path[-1])

  converted, unexpected, misshaped, misshaped_paths = {}, [], [], set()
  for key, value in state_dict.items():
    if ignore is not None and ignore(key):
      continue
    name = rename(key) if rename is not None else key
    *prefix, leaf = torch_key_to_flax_path(name)
    prefix = tuple(prefix)
    leaves = by_prefix.get(prefix, [])
    if leaf == 'weight':
      matches = [l for l in leaves if l in _WEIGHT_LEAVES]
      leaf = matches[0] if matches else None
    elif leaf != 'bias' or 'bias' not in leaves:
      leaf = None
    if leaf is None:
      unexpected.append(key)
      continue
    path = prefix + (leaf,)
    array = _to_flax_layout(np.asarray(value), leaf)
    expected = tuple(flat_target[path].shape)
    if array.shape != expected:
      misshaped.append((key, np.shape(value), expected, '/'.join(path)))
      misshaped_paths.add(path)
      continue
    converted[path] = array.astype(np.dtype(flat_target[path].dtype))
  missing = ['/'.join(p) for p in flat_target
             if p not in converted and p not in misshaped_paths]
  raise_on_mismatch('State dict', 'the model', 'the state dict', missing, unexpected, misshaped)
  return flax.traverse_util.unflatten_dict(converted)


def params_to_state_dict(
    params,
    rename_back: Callable[[str], str] | None = None,
) -> dict[str, np.ndarray]:
  """Converts a Flax param tree back into a PyTorch-layout state dict."""
  state_dict = {}
  for path, value in flax.traverse_util.flatten_dict(params).items():
    key = flax_path_to_torch_key(path)
    if rename_back is not None:
      key = rename_back(key)
    state_dict[key] = np.ascontiguousarray(
        _to_torch_layout(np.asarray(value), path[-1]))
  return state_dict
