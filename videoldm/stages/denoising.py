"""What the latent diffusion stages train with: the schedule, noising, Eq. 1's loss, masks.

Sampling lives in `videoldm.diffusion.sampling`; latents in `stages.latents`.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from videoldm import diffusion


def make_schedule(config: ml_collections.ConfigDict) -> diffusion.Schedule:
  d = config.diffusion
  return diffusion.make_schedule(d.schedule, d.num_train_steps, d.beta_start, d.beta_end)


@dataclasses.dataclass(frozen=True)
class Noised:
  """A noised training example: `x_t = alpha x0 + sigma noise` at timesteps `t`."""
  t: jax.Array  # (b,)
  noise: jax.Array
  x_t: jax.Array
  alpha: jax.Array  # (b,)
  sigma: jax.Array  # (b,)


def add_noise(schedule: diffusion.Schedule, x0: jax.Array, key: jax.Array) -> Noised:
  """Uniform timesteps per example and Gaussian noise (paper Eq. 1)."""
  t_key, noise_key = jax.random.split(key)
  t = diffusion.sample_timesteps(t_key, x0.shape[0], schedule)
  noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
  return Noised(t, noise, diffusion.q_sample(schedule, x0, t, noise),
                schedule.alpha(t), schedule.sigma(t))


def denoising_loss(config: ml_collections.ConfigDict, schedule: diffusion.Schedule,
                   prediction: jax.Array, x0: jax.Array, noised: Noised) -> jax.Array:
  """Eq. 1 with the configured objective (eps or v) and weighting, over every frame.

  Prediction and interpolation models use it unmasked as the paper's Eq. 3:
  context frames count too (the model learns to reproduce what it is given).
  """
  d = config.diffusion
  alpha = diffusion.expand_to(noised.alpha, x0.ndim)
  sigma = diffusion.expand_to(noised.sigma, x0.ndim)
  target = diffusion.training_target(d.prediction_type, x0, noised.noise, alpha, sigma)
  return diffusion.diffusion_loss(
      prediction, target, log_snr=schedule.log_snr(noised.t),
      prediction_type=d.prediction_type, weighting=d.loss_weighting,
      min_snr_gamma=d.min_snr_gamma)


def drop_labels(key: jax.Array, labels: jax.Array, rate: float, null_label: int) -> jax.Array:
  """Replaces each label by `null_label` with probability `rate` (for CFG)."""
  drop = jax.random.bernoulli(key, rate, labels.shape)
  return jnp.where(drop, null_label, labels)


def class_labels(batch: dict) -> jax.Array:
  """The conditioning class of each video: its first digit label, `(b,)`."""
  return batch['labels'][:, 0].astype(jnp.int32)


def leading_frames_mask(num_context: jax.Array, num_frames: int) -> jax.Array:
  """`(b, f)` float mask with ones on the first `num_context[i]` frames."""
  return (jnp.arange(num_frames)[None, :] < num_context[:, None]).astype(jnp.float32)


def sample_num_context(key: jax.Array, batch_size: int, probabilities) -> jax.Array:
  """S per example from `{0, 1, ..., len(probabilities) - 1}` (paper Sec. 3.2)."""
  logits = jnp.log(jnp.asarray(probabilities, jnp.float32))
  return jax.random.categorical(key, logits, shape=(batch_size,))
