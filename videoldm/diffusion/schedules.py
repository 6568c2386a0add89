"""Discrete variance-preserving noise schedules (paper Sec. 2, Eq. 1).

`x_t = alpha_t x_0 + sigma_t eps` with `alpha_t = sqrt(alphas_cumprod[t])` and
`sigma_t = sqrt(1 - alphas_cumprod[t])` over `num_train_steps` integer steps.
The beta schedules reproduce diffusers' `DDIMScheduler` (`linear`,
`scaled_linear`, `squaredcos_cap_v2`, here called `cosine`), computed in
float64 numpy; lookups by timestep return float32 jax arrays and work inside
`jit` (the tables become constants).
"""

import dataclasses
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

SCHEDULE_NAMES = ('linear', 'scaled_linear', 'cosine')
_SCHEDULE_ALIASES = {'squaredcos_cap_v2': 'cosine'}
_COSINE_MAX_BETA = 0.999
_COSINE_OFFSET = 0.008


@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
  """A VP schedule: float64 `betas` and `alphas_cumprod` of length T.

  Build it with `make_schedule`. Equality and hashing use the name and the
  beta values, so a schedule can be a static argument of `jax.jit`.
  """

  name: str
  betas: np.ndarray = dataclasses.field(repr=False)
  alphas_cumprod: np.ndarray = dataclasses.field(repr=False)

  @property
  def num_train_steps(self) -> int:
    return int(self.betas.shape[0])

  @property
  def alphas(self) -> np.ndarray:
    """float64 `sqrt(alphas_cumprod)` per step (the signal scale)."""
    return np.sqrt(self.alphas_cumprod)

  @property
  def sigmas(self) -> np.ndarray:
    """float64 `sqrt(1 - alphas_cumprod)` per step (the noise scale)."""
    return np.sqrt(1.0 - self.alphas_cumprod)

  @property
  def log_snrs(self) -> np.ndarray:
    """float64 `log(alpha^2 / sigma^2)` per step."""
    return np.log(self.alphas_cumprod) - np.log1p(-self.alphas_cumprod)

  def alpha(self, t: jax.Array) -> jax.Array:
    """float32 `alpha_t` gathered at integer timesteps `t` (any shape)."""
    return jnp.asarray(self.alphas, jnp.float32)[t]

  def sigma(self, t: jax.Array) -> jax.Array:
    """float32 `sigma_t` gathered at integer timesteps `t` (any shape)."""
    return jnp.asarray(self.sigmas, jnp.float32)[t]

  def log_snr(self, t: jax.Array) -> jax.Array:
    """float32 log signal-to-noise ratio at integer timesteps `t`."""
    return jnp.asarray(self.log_snrs, jnp.float32)[t]

  def __eq__(self, other) -> bool:
    if not isinstance(other, Schedule):
      return NotImplemented
    return self.name == other.name and np.array_equal(self.betas, other.betas)

  def __hash__(self) -> int:
    return hash((self.name, self.betas.tobytes()))

  def __repr__(self) -> str:
    return f'Schedule(name={self.name!r}, num_train_steps={self.num_train_steps})'


def _cosine_betas(num_train_steps: int) -> np.ndarray:
  """Glide's squared-cosine `alpha_bar`, discretised with betas capped at 0.999."""

  def alpha_bar(s):
    return np.cos((s + _COSINE_OFFSET) / (1 + _COSINE_OFFSET) * math.pi / 2) ** 2

  steps = np.arange(num_train_steps, dtype=np.float64)
  ratio = alpha_bar((steps + 1) / num_train_steps) / alpha_bar(steps / num_train_steps)
  return np.minimum(1.0 - ratio, _COSINE_MAX_BETA)


def make_schedule(name: str = 'scaled_linear',
                  num_train_steps: int = 1000,
                  beta_start: float = 0.00085,
                  beta_end: float = 0.012) -> Schedule:
  """Builds a VP schedule.

  Args:
    name: `linear` (betas linear in [beta_start, beta_end]), `scaled_linear`
      (square roots linear, Stable Diffusion's) or `cosine` (alias
      `squaredcos_cap_v2`; ignores beta_start/beta_end).
    num_train_steps: number of discrete diffusion steps T.
    beta_start: first beta of the linear schedules.
    beta_end: last beta of the linear schedules.

  Returns:
    A `Schedule` with float64 betas and alphas_cumprod.
  """
  canonical = _SCHEDULE_ALIASES.get(name, name)
  if canonical not in SCHEDULE_NAMES:
    raise ValueError(f'Unknown schedule {name!r}; expected one of {SCHEDULE_NAMES}.')
  if (isinstance(num_train_steps, bool) or not isinstance(num_train_steps, numbers.Integral)
      or num_train_steps < 1):
    raise ValueError(f'num_train_steps={num_train_steps!r} must be a positive integer.')
  if canonical == 'cosine':
    betas = _cosine_betas(num_train_steps)
  else:
    if not 0.0 < beta_start <= beta_end < 1.0:
      raise ValueError(f'beta_start={beta_start!r}, beta_end={beta_end!r} must satisfy '
                       '0 < beta_start <= beta_end < 1.')
    if canonical == 'linear':
      betas = np.linspace(beta_start, beta_end, num_train_steps, dtype=np.float64)
    else:
      betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_steps, dtype=np.float64) ** 2
  alphas_cumprod = np.cumprod(1.0 - betas)
  betas.flags.writeable = False
  alphas_cumprod.flags.writeable = False
  return Schedule(name=canonical, betas=betas, alphas_cumprod=alphas_cumprod)


def expand_to(values: jax.Array, ndim: int) -> jax.Array:
  """Appends singleton axes so per-example `values` (b,) broadcast over `ndim` dims."""
  values = jnp.asarray(values)
  return values.reshape(values.shape + (1,) * (ndim - values.ndim))


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """Diffuses `x0` to step `t` (b,): `alpha_t x0 + sigma_t noise`, per example."""
  t = jnp.asarray(t)
  if t.ndim != 1 or t.shape[0] != x0.shape[0]:
    raise ValueError(f'Timesteps of shape {t.shape} must be ({x0.shape[0]},), one per example '
                     'of x0.')
  if noise.shape != x0.shape:
    raise ValueError(f'noise shape {noise.shape} must equal x0 shape {x0.shape}.')
  alpha = expand_to(schedule.alpha(t), x0.ndim).astype(x0.dtype)
  sigma = expand_to(schedule.sigma(t), x0.ndim).astype(x0.dtype)
  return alpha * x0 + sigma * noise


def sample_timesteps(key: jax.Array, batch_size: int, schedule: Schedule) -> jax.Array:
  """Uniform integer training timesteps in [0, T), int32 of shape (batch_size,)."""
  return jax.random.randint(key, (batch_size,), 0, schedule.num_train_steps, dtype=jnp.int32)
