"""What the latent diffusion stages train with: the schedule, noising, Eq. 1's loss, masks.

Joint image-video training (`model.joint`, the video and text_video stages) mixes
images into every video batch: its first `round(image_fraction * b)` examples
have their frames trained as independent images, with `image_only_indicator`
True on every frame (alpha = 1 in each `learned_with_images` blender, so the
temporal layers get no gradient from them) and no context frames; the loss is
`image_weight * L_image + video_weight * L_video`. The split is a function of
the batch position only, so the data iterator (shuffled, checkpointed) serves
both kinds of example deterministically and resumably.

Sampling lives in `videoldm.diffusion.sampling`; latents in `stages.latents`.
"""

import dataclasses

import einops
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
                   prediction: jax.Array, x0: jax.Array, noised: Noised,
                   mask: jax.Array | None = None) -> jax.Array:
  """Eq. 1 with the configured objective (eps or v) and weighting, over every frame.

  Prediction and interpolation models use it unmasked as the paper's Eq. 3:
  context frames count too (the model learns to reproduce what it is given).
  `mask` (e.g. `(b,)`, 1 on the examples that count) restricts the mean.
  """
  d = config.diffusion
  alpha = diffusion.expand_to(noised.alpha, x0.ndim)
  sigma = diffusion.expand_to(noised.sigma, x0.ndim)
  target = diffusion.training_target(d.prediction_type, x0, noised.noise, alpha, sigma)
  return diffusion.diffusion_loss(
      prediction, target, log_snr=schedule.log_snr(noised.t),
      prediction_type=d.prediction_type, weighting=d.loss_weighting,
      min_snr_gamma=d.min_snr_gamma, mask=mask)


def joint_config() -> ml_collections.ConfigDict:
  """`config.model.joint` (see the module docstring); the defaults train on video only.

  image_fraction: share of each batch's examples trained as images, in [0, 1].
  image_weight, video_weight: lambda_img and lambda_vid of the loss.
  """
  return ml_collections.ConfigDict(dict(image_fraction=0.0, image_weight=1.0, video_weight=1.0))


def check_joint_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first inconsistent `model.joint` field."""
  joint = config.model.joint
  if not 0.0 <= joint.image_fraction <= 1.0:
    raise ValueError(f'model.joint.image_fraction={joint.image_fraction} must lie in [0, 1].')
  if joint.image_weight < 0 or joint.video_weight < 0:
    raise ValueError(f'model.joint.image_weight={joint.image_weight} and video_weight='
                     f'{joint.video_weight} must both be non-negative.')
  strategy = config.model.unet.temporal.merge_strategy
  if joint.image_fraction > 0 and strategy != 'learned_with_images':
    raise ValueError(f'model.joint.image_fraction={joint.image_fraction} needs '
                     "model.unet.temporal.merge_strategy='learned_with_images' (alpha = 1 on "
                     f'images), got {strategy!r}.')


def num_image_examples(config: ml_collections.ConfigDict, batch_size: int) -> int:
  """How many leading examples of a batch train as images: round(image_fraction * b)."""
  check_joint_config(config)
  return round(config.model.joint.image_fraction * batch_size)


def image_indicator(num_images: int, batch_size: int, num_frames: int) -> jax.Array:
  """`(b, f)` bool `image_only_indicator`: True on every frame of the first `num_images`."""
  images = jnp.arange(batch_size) < num_images  # (b,)
  return einops.repeat(images, 'b -> b f', f=num_frames)  # (b, f)


def joint_loss(config: ml_collections.ConfigDict, schedule: diffusion.Schedule,
               prediction: jax.Array, x0: jax.Array, noised: Noised,
               num_images: int) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(`image_weight * L_image + video_weight * L_video`, the two terms as metrics).

  L_image is Eq. 1 over the first `num_images` examples, L_video over the rest;
  with no images, exactly `video_weight * denoising_loss(...)`.
  """
  joint = config.model.joint
  b = x0.shape[0]
  if not num_images:
    loss = denoising_loss(config, schedule, prediction, x0, noised)
    return (loss if joint.video_weight == 1.0 else joint.video_weight * loss), {}
  images = (jnp.arange(b) < num_images).astype(jnp.float32)  # (b,)
  image_loss = denoising_loss(config, schedule, prediction, x0, noised, mask=images)
  if num_images == b:
    return joint.image_weight * image_loss, {'image_loss': image_loss}
  video_loss = denoising_loss(config, schedule, prediction, x0, noised, mask=1.0 - images)
  loss = joint.image_weight * image_loss + joint.video_weight * video_loss
  return loss, {'image_loss': image_loss, 'video_loss': video_loss}


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
