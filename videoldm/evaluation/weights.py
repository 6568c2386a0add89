"""Weights files for the standard feature networks (Inception-v3, I3D).

Layout (documented for converters): one `.npz` file whose keys are the Flax
variable paths joined with '/', prefixed by their collection:
`params/Conv2d_1a_3x3/conv/kernel`, `batch_stats/Conv2d_1a_3x3/bn/mean`, ...
Kernels are Flax-shaped (spatial..., in, out). Scalars under `config/` are
fields of the module that the weights need (`config/batch_norm_epsilon`),
read by `read_fields`. `load_variables` checks the
file against the module's own variables in both directions (every name
present, none extra, every shape equal) and names what differs (the report of
`videoldm.convert.common.raise_on_mismatch`).
"""

import os

import flax
import jax
import numpy as np

from videoldm.convert import common


def flatten_variables(variables) -> dict[str, np.ndarray]:
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables), sep='/')
  return {name: np.asarray(value) for name, value in flat.items()}


FIELDS = 'config/'


def save_variables(path: str, variables, fields: dict | None = None) -> None:
  """Writes `variables` ({'params': ..., 'batch_stats': ...}) and module `fields` in the
  documented layout."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  arrays = dict(flatten_variables(variables),
                **{FIELDS + name: np.asarray(value) for name, value in (fields or {}).items()})
  with open(path, 'wb') as file:
    np.savez(file, **arrays)


def read_fields(path: str) -> dict:
  """The module fields stored in a weights file (`{}` when it stores none)."""
  if not os.path.isfile(path):
    return {}  # load_variables names the missing file.
  with np.load(path) as file:
    return {name[len(FIELDS):]: file[name].item() if file[name].ndim == 0
            else tuple(file[name].tolist()) for name in file.files if name.startswith(FIELDS)}


def load_variables(path: str, module, example) -> dict:
  """Variables of `module` (applied to `example`) read from `path`, strictly checked."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'Weights file {path!r} does not exist; expected an .npz in the '
                            'layout of videoldm/evaluation/weights.py.')
  expected = jax.eval_shape(lambda: module.init(jax.random.key(0), example))
  expected = {name: tuple(leaf.shape) for name, leaf in flatten_variables_shapes(expected)}
  with np.load(path) as file:
    found = {name: file[name] for name in file.files if not name.startswith(FIELDS)}
  misshaped = [(name, found[name].shape, expected[name], None)
               for name in set(expected) & set(found)
               if tuple(found[name].shape) != expected[name]]
  common.raise_on_mismatch(f'Weights file {path!r}', type(module).__name__, 'the weights file',
                           missing=set(expected) - set(found),
                           unexpected=set(found) - set(expected), misshaped=misshaped)
  return flax.traverse_util.unflatten_dict(
      {name: np.asarray(value, np.float32) for name, value in found.items()}, sep='/')


def flatten_variables_shapes(tree):
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep='/').items()
