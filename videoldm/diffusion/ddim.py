"""DDIM sampling (Song et al. 2021) as one `lax.scan`, matching diffusers.

Timesteps follow `DDIMScheduler.set_timesteps` for each `timestep_spacing`
(`steps_offset` applies to `leading` only, as there), and each step follows
`DDIMScheduler.step`, including its previous timestep `t - T // num_steps` for
every spacing and `set_alpha_to_one` for the last step. (For the step counts
where diffusers' `trailing` timesteps end in a spurious -1, e.g. 61, that entry
is dropped.) `eta > 0` adds noise drawn from `fold_in(key, step_index)` (see
`ddim_variance_noise`).

Usage, jitted once with the settings static:

  sampler = make_ddim_sampler(lambda params, x, t: model.apply(params, x, t),
                              schedule, num_steps=50, eta=0.0)
  x0 = sampler(params, noise, key)

or `jax.jit(functools.partial(ddim_sample, denoise_fn, schedule=schedule,
num_steps=50))(noise, key)`.
"""

import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from videoldm.diffusion import parametrization
from videoldm.diffusion import schedules

TIMESTEP_SPACINGS = ('leading', 'trailing', 'linspace')
SAMPLER_SETTINGS = ('num_steps', 'eta', 'prediction_type', 'timestep_spacing', 'steps_offset',
                    'set_alpha_to_one', 'clip_x0', 'return_trajectory')

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]


def _check_int(name: str, value: Any, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
    raise ValueError(f'{name}={value!r} must be an integer >= {minimum}.')


def _check_eta(eta: float) -> None:
  if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or eta < 0:
    raise ValueError(f'eta={eta!r} must be a non-negative Python float.')


def ddim_timesteps(num_train_steps: int, num_steps: int, timestep_spacing: str = 'leading',
                   steps_offset: int = 0) -> np.ndarray:
  """Descending int64 timesteps, equal to diffusers' `DDIMScheduler.set_timesteps`."""
  _check_int('num_steps', num_steps, 1)
  _check_int('steps_offset', steps_offset, 0)
  if num_steps > num_train_steps:
    raise ValueError(f'num_steps={num_steps} must not exceed the schedule\'s '
                     f'{num_train_steps} train steps.')
  if timestep_spacing == 'leading':
    step_ratio = num_train_steps // num_steps
    timesteps = np.arange(num_steps, dtype=np.int64)[::-1] * step_ratio + steps_offset
  elif timestep_spacing == 'trailing':
    # diffusers' float arange yields a spurious extra timestep -1 for some
    # num_steps (61, 103, ...); keeping the first num_steps drops only that one.
    step_ratio = num_train_steps / num_steps
    timesteps = np.round(np.arange(num_train_steps, 0, -step_ratio)).astype(np.int64)
    timesteps = timesteps[:num_steps] - 1
  elif timestep_spacing == 'linspace':
    timesteps = np.linspace(0, num_train_steps - 1, num_steps).round()[::-1].astype(np.int64)
  else:
    raise ValueError(f'Unknown timestep_spacing {timestep_spacing!r}; expected one of '
                     f'{TIMESTEP_SPACINGS}.')
  if timesteps.max() >= num_train_steps:
    raise ValueError(f'steps_offset={steps_offset} with num_steps={num_steps} gives timestep '
                     f'{timesteps.max()}, outside [0, {num_train_steps}).')
  return np.ascontiguousarray(timesteps)


def ddim_variance_noise(key: jax.Array, step_index: jax.Array, shape: tuple[int, ...],
                        dtype: Any = jnp.float32) -> jax.Array:
  """The standard normal noise the sampler adds at `step_index` when eta > 0."""
  return jax.random.normal(jax.random.fold_in(key, step_index), shape, dtype)


def ddim_step(schedule: schedules.Schedule,
              model_output: jax.Array,
              x_t: jax.Array,
              t: jax.Array,
              prev_t: jax.Array,
              *,
              eta: float = 0.0,
              prediction_type: str = 'eps',
              set_alpha_to_one: bool = True,
              clip_x0: float | None = None,
              variance_noise: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """One DDIM update from `t` to `prev_t` (scalars or (b,) ints).

  Equals diffusers' `DDIMScheduler.step` (with `clip_sample_range=clip_x0`,
  `use_clipped_model_output=False`); a negative `prev_t` means the final step,
  whose alpha product is 1 (`set_alpha_to_one`) or that of step 0.

  Returns:
    `(x_prev, x0_prediction)`, both shaped and typed like `x_t`.
  """
  _check_eta(eta)
  if eta > 0 and variance_noise is None:
    raise ValueError(f'eta={eta!r} > 0 needs variance_noise, got None.')
  alphas_cumprod = jnp.asarray(schedule.alphas_cumprod, jnp.float32)
  final_alpha_cumprod = 1.0 if set_alpha_to_one else alphas_cumprod[0]
  prev_t = jnp.asarray(prev_t)
  alpha_prod_t = alphas_cumprod[t]
  alpha_prod_prev = jnp.where(prev_t >= 0, alphas_cumprod[jnp.maximum(prev_t, 0)],
                              final_alpha_cumprod)
  alpha_prod_t = schedules.expand_to(alpha_prod_t, x_t.ndim)
  alpha_prod_prev = schedules.expand_to(alpha_prod_prev, x_t.ndim)

  x0, eps = parametrization.x0_and_eps(model_output, x_t, jnp.sqrt(alpha_prod_t),
                                       jnp.sqrt(1.0 - alpha_prod_t), prediction_type)
  if clip_x0 is not None:
    x0 = jnp.clip(x0, -clip_x0, clip_x0)
  variance = (1.0 - alpha_prod_prev) / (1.0 - alpha_prod_t) * (1.0 - alpha_prod_t / alpha_prod_prev)
  std = eta * jnp.sqrt(variance)
  direction = jnp.sqrt(jnp.maximum(1.0 - alpha_prod_prev - std**2, 0.0)) * eps
  x_prev = jnp.sqrt(alpha_prod_prev) * x0 + direction
  if eta > 0:
    x_prev = x_prev + std * variance_noise
  return x_prev.astype(x_t.dtype), x0.astype(x_t.dtype)


def ddim_sample(denoise_fn: DenoiseFn,
                noise: jax.Array,
                key: jax.Array | None,
                schedule: schedules.Schedule,
                *,
                num_steps: int,
                eta: float = 0.0,
                prediction_type: str = 'eps',
                timestep_spacing: str = 'leading',
                steps_offset: int = 0,
                set_alpha_to_one: bool = True,
                clip_x0: float | None = None,
                return_trajectory: bool = False):
  """Samples with DDIM from `noise` (x_T) in one `lax.scan`.

  Args:
    denoise_fn: `(x_t, t) -> prediction`, `t` int32 of shape (b,).
    noise: the starting sample x_T, (b, ...).
    key: PRNG key for eta > 0 (may be None when eta == 0).
    schedule: the training schedule.
    num_steps: number of DDIM steps, 1..T.
    eta: 0 is deterministic DDIM, 1 is DDPM-like ancestral noise.
    prediction_type: what `denoise_fn` predicts: `eps`, `v` or `x0`.
    timestep_spacing: `leading`, `trailing` or `linspace` (diffusers').
    steps_offset: added to `leading` timesteps (Stable Diffusion uses 1).
    set_alpha_to_one: final step to alpha product 1 (else that of step 0).
    clip_x0: clamp predicted x0 to [-clip_x0, clip_x0]; None does not.
    return_trajectory: also return the x0 predictions (num_steps, b, ...).

  Returns:
    The final sample, or `(sample, x0_trajectory)` if `return_trajectory`.
  """
  parametrization.canonical_prediction_type(prediction_type)
  _check_eta(eta)
  if eta > 0 and key is None:
    raise ValueError(f'eta={eta!r} > 0 needs a PRNG key, got None.')
  timesteps = ddim_timesteps(schedule.num_train_steps, num_steps, timestep_spacing, steps_offset)
  prev_timesteps = timesteps - schedule.num_train_steps // num_steps
  batch_size = noise.shape[0]

  def body(x, step):
    index, t, prev_t = step
    model_output = denoise_fn(x, jnp.full((batch_size,), t, jnp.int32))
    if model_output.shape != x.shape:
      raise ValueError(f'denoise_fn returned shape {model_output.shape}; expected {x.shape}.')
    variance_noise = ddim_variance_noise(key, index, x.shape, x.dtype) if eta > 0 else None
    x_prev, x0 = ddim_step(schedule, model_output, x, t, prev_t, eta=eta,
                           prediction_type=prediction_type, set_alpha_to_one=set_alpha_to_one,
                           clip_x0=clip_x0, variance_noise=variance_noise)
    return x_prev, (x0 if return_trajectory else None)

  steps = (jnp.arange(num_steps, dtype=jnp.int32), jnp.asarray(timesteps, jnp.int32),
           jnp.asarray(prev_timesteps, jnp.int32))
  sample, trajectory = jax.lax.scan(body, noise, steps)
  return (sample, trajectory) if return_trajectory else sample


def make_ddim_sampler(denoise_fn: Callable[[Any, jax.Array, jax.Array], jax.Array],
                      schedule: schedules.Schedule, **settings) -> Callable[..., Any]:
  """A jitted `sampler(model_args, noise, key)` with `settings` fixed.

  `denoise_fn(model_args, x_t, t)` takes any pytree `model_args` (params,
  conditionings, guidance scales) as a traced argument, so new values reuse
  the compiled sampler. `settings` are `ddim_sample`'s keyword arguments and
  are validated here.
  """
  unknown = sorted(set(settings) - set(SAMPLER_SETTINGS))
  if unknown:
    raise ValueError(f'Unknown DDIM settings {unknown}; expected some of {SAMPLER_SETTINGS}.')
  ddim_timesteps(schedule.num_train_steps, settings.get('num_steps'),
                 settings.get('timestep_spacing', 'leading'), settings.get('steps_offset', 0))
  parametrization.canonical_prediction_type(settings.get('prediction_type', 'eps'))
  _check_eta(settings.get('eta', 0.0))

  def sampler(model_args, noise, key):
    return ddim_sample(lambda x, t: denoise_fn(model_args, x, t), noise, key, schedule, **settings)

  return jax.jit(sampler)
