"""The denoising loss of Eq. 1: a (weighted, optionally masked) MSE.

Weightings are per example, from the log-SNR of its timestep:

  none     w = 1
  min_snr  Min-SNR-gamma (Hang et al. 2023): the x0-space weight min(snr, gamma),
           re-expressed for the prediction type, since
           |eps err|^2 = snr |x0 err|^2 and |v err|^2 = (snr + 1) |x0 err|^2:
           eps -> min(snr, gamma) / snr, v -> min(snr, gamma) / (snr + 1),
           x0 -> min(snr, gamma).

A mask (e.g. per frame, to leave context frames out of the loss) is aligned
with the leading axes of the prediction and broadcast over the rest; the loss
is the weighted squared error summed over masked-in elements divided by their
count, so an all-ones mask equals no mask.
"""

import jax
import jax.numpy as jnp

from videoldm.diffusion import parametrization
from videoldm.diffusion import schedules

WEIGHTINGS = ('none', 'min_snr')


def loss_weight(log_snr: jax.Array, prediction_type: str, weighting: str = 'none',
                min_snr_gamma: float = 5.0) -> jax.Array:
  """Per-example loss weights (b,) for `weighting` and `prediction_type`."""
  prediction_type = parametrization.canonical_prediction_type(prediction_type)
  log_snr = jnp.asarray(log_snr, jnp.float32)
  if weighting == 'none':
    return jnp.ones_like(log_snr)
  if weighting != 'min_snr':
    raise ValueError(f'Unknown loss weighting {weighting!r}; expected one of {WEIGHTINGS}.')
  if min_snr_gamma <= 0:
    raise ValueError(f'min_snr_gamma={min_snr_gamma!r} must be positive.')
  snr = jnp.exp(log_snr)
  if prediction_type == 'x0':
    return jnp.minimum(snr, min_snr_gamma)
  clipped_ratio = jnp.minimum(1.0, min_snr_gamma * jnp.exp(-log_snr))  # min(snr, gamma) / snr.
  if prediction_type == 'eps':
    return clipped_ratio
  return clipped_ratio * jax.nn.sigmoid(log_snr)  # snr / (snr + 1) = sigmoid(log_snr).


def _broadcast_mask(mask: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  mask = jnp.asarray(mask)
  compatible = mask.ndim <= len(shape) and all(
      m in (1, s) for m, s in zip(mask.shape, shape))
  if not compatible:
    raise ValueError(f'Loss mask of shape {mask.shape} must match the leading axes of the '
                     f'prediction shape {shape} (or be 1 there).')
  return jnp.broadcast_to(schedules.expand_to(mask, len(shape)), shape)


def diffusion_loss(prediction: jax.Array,
                   target: jax.Array,
                   *,
                   log_snr: jax.Array | None = None,
                   prediction_type: str = 'eps',
                   weighting: str = 'none',
                   min_snr_gamma: float = 5.0,
                   mask: jax.Array | None = None) -> jax.Array:
  """Scalar float32 loss of Eq. 1.

  Args:
    prediction: model output (b, ...).
    target: `parametrization.training_target(...)`, same shape.
    log_snr: per-example log-SNR (b,), e.g. `schedule.log_snr(t)`; needed
      unless `weighting='none'`.
    prediction_type: `eps`, `v` or `x0` (selects the weighting's form).
    weighting: `none` or `min_snr`.
    min_snr_gamma: gamma of `min_snr`.
    mask: 1 where the loss counts, aligned with the leading axes, e.g. (b, f)
      for videos (b, f, h, w, c); `None` counts everything.

  Returns:
    The weighted mean squared error over masked-in elements.
  """
  if prediction.shape != target.shape:
    raise ValueError(f'prediction shape {prediction.shape} must equal target shape {target.shape}.')
  if log_snr is None:
    if weighting != 'none':
      raise ValueError(f'weighting={weighting!r} needs the per-example log_snr, got None.')
    log_snr = jnp.zeros((prediction.shape[0],), jnp.float32)
  weights = loss_weight(log_snr, prediction_type, weighting, min_snr_gamma)
  if weights.shape != (prediction.shape[0],):
    raise ValueError(f'log_snr of shape {jnp.shape(log_snr)} must be ({prediction.shape[0]},), '
                     'one per example.')
  squared_error = jnp.square(prediction.astype(jnp.float32) - target.astype(jnp.float32))
  weighted = schedules.expand_to(weights, squared_error.ndim) * squared_error
  if mask is None:
    return jnp.mean(weighted)
  full_mask = _broadcast_mask(mask, squared_error.shape).astype(jnp.float32)
  return jnp.sum(weighted * full_mask) / jnp.maximum(jnp.sum(full_mask), 1.0)
