"""What the denoiser predicts: noise `eps`, velocity `v` or the clean `x0`.

With `x_t = alpha x0 + sigma eps` and `v = alpha eps - sigma x0` (paper Sec. 2),
any one prediction plus `x_t` determines the other two. The formulas below
hold for any (alpha, sigma), VP or not; `alpha` and `sigma` are arrays that
broadcast against `x_t` (use `schedules.expand_to` for per-example values).
"""

import jax

PREDICTION_TYPES = ('eps', 'v', 'x0')
_PREDICTION_ALIASES = {'epsilon': 'eps', 'v_prediction': 'v', 'sample': 'x0'}


def canonical_prediction_type(prediction_type: str) -> str:
  """Returns `eps`, `v` or `x0`; accepts diffusers' names as aliases."""
  canonical = _PREDICTION_ALIASES.get(prediction_type, prediction_type)
  if canonical not in PREDICTION_TYPES:
    raise ValueError(f'Unknown prediction type {prediction_type!r}; expected one of '
                     f'{PREDICTION_TYPES} (or diffusers\' {tuple(_PREDICTION_ALIASES)}).')
  return canonical


def x0_and_eps(prediction: jax.Array, x_t: jax.Array, alpha: jax.Array, sigma: jax.Array,
               prediction_type: str) -> tuple[jax.Array, jax.Array]:
  """Converts a model prediction at `x_t` into the implied `(x0, eps)` pair."""
  prediction_type = canonical_prediction_type(prediction_type)
  if prediction_type == 'eps':
    return (x_t - sigma * prediction) / alpha, prediction
  if prediction_type == 'x0':
    return prediction, (x_t - alpha * prediction) / sigma
  norm = alpha**2 + sigma**2  # 1 for VP schedules.
  x0 = (alpha * x_t - sigma * prediction) / norm
  eps = (sigma * x_t + alpha * prediction) / norm
  return x0, eps


def training_target(prediction_type: str, x0: jax.Array, noise: jax.Array, alpha: jax.Array,
                    sigma: jax.Array) -> jax.Array:
  """The regression target of Eq. 1 for `prediction_type`, given x0 and its noise."""
  prediction_type = canonical_prediction_type(prediction_type)
  if prediction_type == 'eps':
    return noise
  if prediction_type == 'x0':
    return x0
  return alpha * noise - sigma * x0


def convert_prediction(prediction: jax.Array, x_t: jax.Array, alpha: jax.Array, sigma: jax.Array,
                       from_type: str, to_type: str) -> jax.Array:
  """Re-expresses a prediction at `x_t` in another parametrisation."""
  from_type = canonical_prediction_type(from_type)
  to_type = canonical_prediction_type(to_type)
  if from_type == to_type:
    return prediction
  x0, eps = x0_and_eps(prediction, x_t, alpha, sigma, from_type)
  return training_target(to_type, x0, eps, alpha, sigma)

