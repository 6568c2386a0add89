"""Train state, optimiser (AdamW + warmup-cosine + clipping), freezing and EMA.

Freezing: `config.trainable` is a regex matched (`re.search`) against each
parameter's '/'-joined path; matches are labelled 'trainable', the rest
'frozen'. The optimiser is `optax.multi_transform` with `optax.set_to_zero()`
for 'frozen', so moments exist only for trainable leaves. The train step splits
the params with `partition` and differentiates only the trainable part.

Held dtypes: trainable params are float32 master weights; frozen ones are held
in the compute dtype of their top-level module (`held_params`), so a bf16
U-Net's frozen spatial layers take half the memory and no float32 copy.
"""

import re
from typing import Any

import flax
from flax import struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from videoldm.models import text

TRAINABLE, FROZEN = 'trainable', 'frozen'


@struct.dataclass
class TrainState:
  """Everything the train step updates; checkpointed as one pytree.

  `ema_params` holds only the trainable leaves (None when EMA is off).
  `step` counts consumed batches, skipped (non-finite) ones included.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any
  nonfinite_count: jax.Array
  consecutive_nonfinite: jax.Array


def _flat(params) -> dict[str, Any]:
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep='/')


def trainable_labels(params: Any, pattern: str | None) -> Any:
  """Tree like `params` of 'trainable'/'frozen' from a regex (None or '.*' = all)."""
  if pattern is None or pattern == '.*':
    return jax.tree.map(lambda _: TRAINABLE, params)
  try:
    regex = re.compile(pattern)
  except re.error as error:
    raise ValueError(f'config.trainable={pattern!r} is not a valid regex ({error}).') from None
  labels = {path: TRAINABLE if regex.search(path) else FROZEN for path in _flat(params)}
  if TRAINABLE not in labels.values():
    raise ValueError(f'config.trainable={pattern!r} matches no parameter; expected a regex '
                     f'matching some of e.g. {sorted(labels)[:5]}.')
  return flax.traverse_util.unflatten_dict(labels, sep='/')


def partition(params: Any, labels: Any) -> tuple[dict, dict]:
  """Splits params into (trainable, frozen) nested dicts holding only their leaves."""
  flat_params, flat_labels = _flat(params), _flat(labels)
  parts = {TRAINABLE: {}, FROZEN: {}}
  for path, value in flat_params.items():
    parts[flat_labels[path]][path] = value
  unflatten = lambda flat: flax.traverse_util.unflatten_dict(flat, sep='/')
  return unflatten(parts[TRAINABLE]), unflatten(parts[FROZEN])


def merge(*trees: dict) -> dict:
  """Inverse of `partition`: a union of disjoint nested dicts."""
  flat = {}
  for tree in trees:
    flat.update(_flat(tree))
  return flax.traverse_util.unflatten_dict(flat, sep='/')


def learning_rate_schedule(optimizer_config, total_steps: int) -> optax.Schedule:
  """Linear warmup to `lr`, then cosine decay to 0; both last `decay_steps` (0: total_steps)."""
  warmup = int(optimizer_config.warmup_steps)
  decay_steps = optimizer_config.decay_steps or total_steps
  if decay_steps <= warmup:
    raise ValueError(f'Optimizer decay_steps={decay_steps} must exceed '
                     f'warmup_steps={warmup}.')
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=float(optimizer_config.lr), warmup_steps=warmup,
      decay_steps=int(decay_steps), end_value=0.0)


def make_optimizer(optimizer_config, total_steps: int, labels: Any) -> optax.GradientTransformation:
  """Clip by global norm (`grad_clip`; 0: off) + AdamW on trainable labels, zero on frozen."""
  schedule = learning_rate_schedule(optimizer_config, total_steps)
  chain = []
  if optimizer_config.grad_clip:
    chain.append(optax.clip_by_global_norm(float(optimizer_config.grad_clip)))
  chain.append(optax.adamw(schedule, b1=float(optimizer_config.b1), b2=float(optimizer_config.b2),
                           weight_decay=float(optimizer_config.weight_decay)))
  return optax.multi_transform(
      {TRAINABLE: optax.chain(*chain), FROZEN: optax.set_to_zero()}, labels)


def ema_update(ema: Any, params: Any, decay: float) -> Any:
  """`ema <- decay * ema + (1 - decay) * params`, leafwise."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def compute_dtypes(model_config: ml_collections.ConfigDict | None) -> dict[str, jnp.dtype]:
  """The compute dtype of each sub-model by name: its config's `dtype` (e.g. `unet`), and
  a text stage's CLIP (`text_encoder`) computes in its U-Net's."""
  dtypes = {name: jnp.dtype(sub.dtype) for name, sub in (model_config or {}).items()
            if isinstance(sub, ml_collections.ConfigDict) and sub.get('dtype')}
  if 'text_encoder' in (model_config or {}) and 'unet' in dtypes:
    dtypes.setdefault('text_encoder', text.stage_dtype(model_config))
  return dtypes


def frozen_dtype(path: str, dtype: Any, frozen_dtypes: dict[str, Any]) -> Any:
  """The held dtype of the frozen param at '/'-joined `path`: its top-level module's, if named."""
  return frozen_dtypes.get(path.split('/', 1)[0], dtype)


def held_params(params: Any, labels: Any, frozen_dtypes: dict[str, Any]) -> dict:
  """Trainable float leaves as float32; frozen ones in `frozen_dtypes[top-level name]`.

  A frozen leaf whose top-level module is not in `frozen_dtypes` keeps its dtype.
  """
  flat_labels = _flat(labels)

  def hold(path, value):
    if not jnp.issubdtype(value.dtype, jnp.floating):
      return value
    if flat_labels[path] == TRAINABLE:
      return value.astype(jnp.float32)
    return value.astype(frozen_dtype(path, value.dtype, frozen_dtypes))

  held = {path: hold(path, value) for path, value in _flat(params).items()}
  return flax.traverse_util.unflatten_dict(held, sep='/')


def init_state(params: Any, labels: Any, tx: optax.GradientTransformation,
               ema_decay: float | None, frozen_dtypes: dict[str, Any] | None = None
               ) -> TrainState:
  """A fresh TrainState at step 0 (jittable); params held as `held_params` gives them."""
  params = held_params(params, labels, frozen_dtypes or {})
  trainable, _ = partition(params, labels)
  ema = jax.tree.map(jnp.copy, trainable) if ema_decay is not None else None
  zero = jnp.zeros((), jnp.int32)
  return TrainState(step=zero, params=params, opt_state=tx.init(params), ema_params=ema,
                    nonfinite_count=zero, consecutive_nonfinite=zero)


def parameter_overview(params: Any, labels: Any) -> str:
  """A table of every parameter (path, shape, label) with trainable/frozen totals."""
  flat_params, flat_labels = _flat(params), _flat(labels)
  width = max((len(path) for path in flat_params), default=4)
  lines = [f'{"path":<{width}}  {"shape":<20}  label']
  totals = {TRAINABLE: 0, FROZEN: 0}
  for path, value in sorted(flat_params.items()):
    totals[flat_labels[path]] += int(value.size)
    lines.append(f'{path:<{width}}  {str(tuple(value.shape)):<20}  {flat_labels[path]}')
  lines.append(f'trainable: {totals[TRAINABLE]:,} params; frozen: {totals[FROZEN]:,} params')
  return '\n'.join(lines)
