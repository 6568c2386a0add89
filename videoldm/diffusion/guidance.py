"""Classifier-free and context guidance as one batched model call.

Nested guidance over conditionings c_0 (fully unconditional), c_1, ..., c_K,
each adding one condition to the previous, with scales s_1..s_K:

  f' = f(c_0) + sum_k s_k (f(c_k) - f(c_{k-1})).

K = 1 is classifier-free guidance, or the paper's context guidance (Eq. 4,
`f(z) + s (f(z; c_S) - f(z))`) when c_1 holds the context frames; K = 2 with
c_1 = context and c_2 = context + text applies both with their own scales.
All scales 1 give f(c_K). The weights sum to 1, so guiding eps, v or x0
predictions gives the same result.
"""

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

ModelFn = Callable[[jax.Array, jax.Array, Any], jax.Array]


def check_guidance(conds: Sequence[Any], scales: Sequence[Any]) -> None:
  """Raises ValueError unless there is one conditioning more than scales."""
  if len(conds) < 1:
    raise ValueError('Guidance needs at least one conditioning, got none.')
  if len(conds) != len(scales) + 1:
    raise ValueError(f'Guidance scales {list(scales)} need {len(scales) + 1} conditionings '
                     f'(the unconditional one first), got {len(conds)}.')


def combine_guided(outputs: Sequence[jax.Array], scales: Sequence[Any]) -> jax.Array:
  """`outputs[0] + sum_k scales[k-1] (outputs[k] - outputs[k-1])`."""
  check_guidance(outputs, scales)
  guided = outputs[0]
  for scale, previous, current in zip(scales, outputs[:-1], outputs[1:]):
    guided = guided + scale * (current - previous)
  return guided


def _concat_conds(conds: Sequence[Any]) -> Any:
  structures = [jax.tree.structure(cond) for cond in conds]
  for index, structure in enumerate(structures[1:], start=1):
    if structure != structures[0]:
      raise ValueError(f'Conditioning {index} has structure {structure}; expected that of '
                       f'conditioning 0, {structures[0]}.')
  for index, cond in enumerate(conds):
    for leaf in jax.tree.leaves(cond):
      if jnp.ndim(leaf) < 1:
        raise ValueError(f'Conditioning {index} has a leaf of shape {jnp.shape(leaf)}; every '
                         'leaf needs a leading batch axis.')
  return jax.tree.map(lambda *leaves: jnp.concatenate(leaves, axis=0), *conds)


def make_guided_denoiser(model_fn: ModelFn, conds: Sequence[Any],
                         scales: Sequence[Any]) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """Wraps `model_fn(x, t, cond)` into a guided `denoise_fn(x_t, t)`.

  Args:
    model_fn: the model; called ONCE per step on all branches stacked on the
      batch axis.
    conds: K+1 conditioning pytrees of equal structure, leaves with leading
      batch axis b (that of x_t), least conditioned first.
    scales: K guidance scales (floats or arrays broadcasting to the output).

  Returns:
    `denoise_fn(x_t, t)` for `ddim.ddim_sample`.
  """
  check_guidance(conds, scales)
  num_branches = len(conds)
  stacked_cond = _concat_conds(conds)
  scales = tuple(scales)

  def denoise_fn(x_t: jax.Array, t: jax.Array) -> jax.Array:
    for leaf in jax.tree.leaves(stacked_cond):
      if leaf.shape[0] != num_branches * x_t.shape[0]:
        raise ValueError(f'Conditioning leaves need leading axis {x_t.shape[0]} (the batch of '
                         f'x_t); got a stacked leaf of shape {leaf.shape} for {num_branches} '
                         'branches.')
    x_all = jnp.concatenate([x_t] * num_branches, axis=0)
    t_all = jnp.concatenate([t] * num_branches, axis=0)
    outputs = jnp.split(model_fn(x_all, t_all, stacked_cond), num_branches, axis=0)
    return combine_guided(outputs, scales)

  return denoise_fn
