"""Device mesh, logical parameter axes and their mapping to mesh axes.

The mesh has two axes, `('data', 'fsdp')`. Every parameter gets logical axis
names from its path and rank (`logical_axes`); `config.sharding.rules` maps
logical names to mesh axes, e.g. `[('mlp', 'fsdp'), ('embed', None)]`. A dim
whose size is not divisible by its mesh axis stays replicated (and is logged).
Batches are sharded over both mesh axes along their leading dim.
"""

from collections.abc import Sequence
import math
from typing import Any

from absl import logging
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np

MESH_AXES = ('data', 'fsdp')
BATCH_SPEC = PartitionSpec(MESH_AXES)


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A `('data', 'fsdp')` mesh from `mesh_config.data/.fsdp` (-1 = remaining devices)."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = [int(mesh_config.data), int(mesh_config.fsdp)]
  if sizes.count(-1) > 1:
    raise ValueError(f'Mesh {dict(zip(MESH_AXES, sizes))} has more than one -1; '
                     'at most one axis may take the remaining devices.')
  known = math.prod(size for size in sizes if size != -1)
  if any(size == 0 or size < -1 for size in sizes) or len(devices) % known:
    raise ValueError(f'Mesh {dict(zip(MESH_AXES, sizes))} does not fit {len(devices)} devices; '
                     'expected positive sizes (or one -1) whose product divides the device count.')
  sizes = [len(devices) // known if size == -1 else size for size in sizes]
  if math.prod(sizes) != len(devices):
    raise ValueError(f'Mesh {dict(zip(MESH_AXES, sizes))} uses {math.prod(sizes)} devices '
                     f'but {len(devices)} are available; expected the product to match.')
  return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def path_names(key_path) -> tuple[str, ...]:
  """A jax key path as a tuple of plain strings (dict keys, attribute names, indices)."""
  names = []
  for key in key_path:
    for attribute in ('key', 'name', 'idx'):
      if hasattr(key, attribute):
        names.append(str(getattr(key, attribute)))
        break
    else:
      names.append(str(key))
  return tuple(names)


def logical_axes(path: Sequence[str], ndim: int) -> tuple[str | None, ...]:
  """Logical axis names of a parameter from its path and rank.

  Dense kernels `(in, out)` -> `('embed', 'mlp')`; convolution kernels
  `(*window, in, out)` -> `(None, ..., 'embed', 'mlp')`; embeddings
  `(vocab, dim)` -> `('vocab', 'embed')`; biases -> `('mlp',)`; norm scales ->
  `('norm',)`; anything else is replicated.
  """
  name = path[-1] if path else ''
  if name == 'kernel' and ndim >= 2:
    return (None,) * (ndim - 2) + ('embed', 'mlp')
  if name == 'embedding' and ndim == 2:
    return ('vocab', 'embed')
  if name == 'bias' and ndim == 1:
    return ('mlp',)
  if name == 'scale' and ndim == 1:
    return ('norm',)
  return (None,) * ndim


def _rules_dict(rules) -> dict[str, str | None]:
  """`[(logical, mesh_axis_or_None), ...]` -> dict; first rule for a name wins."""
  mapping = {}
  for rule in rules or ():
    if len(rule) != 2:
      raise ValueError(f'Sharding rule {rule!r} is not a (logical_name, mesh_axis) pair.')
    logical, mesh_axis = rule
    if mesh_axis is not None and mesh_axis not in MESH_AXES:
      raise ValueError(f'Sharding rule {rule!r} names mesh axis {mesh_axis!r}; '
                       f'expected one of {MESH_AXES} or None.')
    mapping.setdefault(logical, mesh_axis)
  return mapping


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int], rules, mesh: Mesh,
                    name: str = '') -> PartitionSpec:
  """Maps logical axes to a PartitionSpec; non-divisible or reused mesh axes replicate."""
  mapping = _rules_dict(rules)
  spec, used = [], set()
  for logical, size in zip(axes, shape):
    mesh_axis = mapping.get(logical) if logical is not None else None
    if mesh_axis is None or mesh_axis in used:
      spec.append(None)
      continue
    if size % mesh.shape[mesh_axis]:
      logging.info('Replicating dim %r (size %d) of %s: not divisible by mesh axis %r (size %d).',
                   logical, size, name or 'param', mesh_axis, mesh.shape[mesh_axis])
      spec.append(None)
      continue
    spec.append(mesh_axis)
    used.add(mesh_axis)
  return PartitionSpec(*spec)


def param_specs(params: Any, rules, mesh: Mesh) -> Any:
  """PartitionSpec for every leaf of a param tree (arrays or ShapeDtypeStructs)."""
  def spec(key_path, leaf):
    path = path_names(key_path)
    return logical_to_spec(logical_axes(path, leaf.ndim), leaf.shape, rules, mesh, '/'.join(path))
  return jax.tree_util.tree_map_with_path(spec, params)


def param_shardings(params: Any, rules, mesh: Mesh) -> Any:
  """NamedSharding for every leaf of a param tree."""
  return jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs(params, rules, mesh))


def tree_shardings_like_params(tree: Any, params: Any, rules, mesh: Mesh) -> Any:
  """Shardings for a tree holding param-shaped leaves (optimizer moments, EMA).

  A leaf whose path ends with a parameter's path and has its shape gets that
  parameter's sharding; every other leaf (counters, scalars) is replicated.
  """
  by_path = {}
  for key_path, leaf in jax.tree_util.tree_leaves_with_path(params):
    path = path_names(key_path)
    by_path[path] = (tuple(leaf.shape), logical_to_spec(
        logical_axes(path, leaf.ndim), leaf.shape, rules, mesh, '/'.join(path)))

  def sharding(key_path, leaf):
    path = path_names(key_path)
    for start in range(len(path)):
      match = by_path.get(path[start:])
      if match is not None and match[0] == tuple(leaf.shape):
        return NamedSharding(mesh, match[1])
    return NamedSharding(mesh, PartitionSpec())
  return jax.tree_util.tree_map_with_path(sharding, tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dim split over `('data', 'fsdp')`."""
  return NamedSharding(mesh, BATCH_SPEC)


def replicated(mesh: Mesh) -> NamedSharding:
  """Fully replicated sharding on `mesh`."""
  return NamedSharding(mesh, PartitionSpec())
