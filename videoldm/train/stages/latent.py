"""What the latent diffusion stages share: latents, noising, loss, masks, DDIM.

Every latent stage keeps the frozen autoencoder under `autoencoder/` and the
latent scale under `latent_scale` in its param tree, so a stage started with
`init_from` a previous run gets both unchanged. The latent scale starts at the
autoencoder config's `scaling_factor` and, with
`config.model.calibrate_latent_scale`, is set once to 1 / std of the first
batch's latents (`Stage.calibrate`), as the LDM paper does for its VAE.

With `config.model.centre_latents` the calibration also removes the latents'
per-channel mean (an autoencoder trained from scratch with a tiny KL weight
puts constant offsets, larger than the variation, in its channels; diffusion
then spends its signal on the offsets). The shift is folded into the frozen
autoencoder's `quant_conv` / `post_quant_conv` biases (`centred_autoencoder`):
posterior means move by -shift and decoding is exactly unchanged, so no new
parameter or file format is needed.
"""

import dataclasses

import einops
import jax
import jax.numpy as jnp
import ml_collections

from videoldm import diffusion
from videoldm.models import autoencoder as autoencoder_lib


def autoencoder_config(config: ml_collections.ConfigDict) -> autoencoder_lib.AutoencoderConfig:
  """The `AutoencoderConfig` described by `config.model.autoencoder`."""
  fields = config.model.autoencoder.to_dict()
  return autoencoder_lib.AutoencoderConfig(**fields)


def make_schedule(config: ml_collections.ConfigDict) -> diffusion.Schedule:
  d = config.diffusion
  return diffusion.make_schedule(d.schedule, d.num_train_steps, d.beta_start, d.beta_end)


def frames_of(video: jax.Array) -> jax.Array:
  return einops.rearrange(video, 'b f h w c -> (b f) h w c')  # (b f) h w c


def encode_video(autoencoder: autoencoder_lib.AutoencoderKL, params, video: jax.Array,
                 key: jax.Array | None) -> jax.Array:
  """Video `(b, f, H, W, 3)` in [-1, 1] -> scaled latents `(b, f, h, w, c)`.

  A posterior sample with `key`, its mean without.
  """
  posterior = autoencoder.apply({'params': params['autoencoder']}, frames_of(video),
                                method=autoencoder.encode)
  z = posterior.mode() if key is None else posterior.sample(key)
  z = jax.lax.stop_gradient(z) * params['latent_scale']
  return einops.rearrange(z, '(b f) h w c -> b f h w c', b=video.shape[0])  # b f h w c


def decode_latents(autoencoder: autoencoder_lib.AutoencoderKL, params,
                   latents: jax.Array) -> jax.Array:
  """Scaled latents `(b, f, h, w, c)` -> video `(b, f, H, W, 3)` (frame by frame)."""
  frames = autoencoder.apply({'params': params['autoencoder']},
                             frames_of(latents) / params['latent_scale'],
                             method=autoencoder.decode)
  return einops.rearrange(frames, '(b f) h w c -> b f h w c', b=latents.shape[0])


def init_autoencoder_params(autoencoder: autoencoder_lib.AutoencoderKL, rng: jax.Array,
                            image_size: int) -> dict:
  """Fresh autoencoder params (normally replaced by `init_from`)."""
  images = jnp.zeros((1, image_size, image_size, autoencoder.config.in_channels))
  return autoencoder.init(rng, images)['params']


def calibrated_latent_scale(autoencoder, params, video: jax.Array) -> jax.Array:
  """1 / std of the (unscaled) posterior means of `video`."""
  unscaled = dict(params, latent_scale=jnp.ones(()))
  z = encode_video(autoencoder, unscaled, video, key=None)
  return 1.0 / jnp.maximum(jnp.std(z), 1e-6)


def latent_channel_means(autoencoder, params, video: jax.Array) -> jax.Array:
  """Per-channel mean `(c,)` of the (unscaled) posterior means of `video`."""
  unscaled = dict(params, latent_scale=jnp.ones(()))
  return jnp.mean(encode_video(autoencoder, unscaled, video, key=None), axis=(0, 1, 2, 3))


def centred_autoencoder(ae_params: dict, shift: jax.Array) -> dict:
  """Autoencoder params whose posterior means are `mean - shift`; decoding is unchanged.

  `quant_conv` (1x1, moments = [mean, logvar]) loses `shift` from its mean
  biases; `post_quant_conv` (1x1, `W z + b`) gains `W shift`, so it maps
  `z - shift` where it mapped `z` before.
  """
  if 'quant_conv' not in ae_params or 'post_quant_conv' not in ae_params:
    raise ValueError('centre_latents needs an autoencoder with quant_conv and post_quant_conv '
                     f'(use_quant_conv / use_post_quant_conv); got {sorted(ae_params)}.')
  quant, post = ae_params['quant_conv'], ae_params['post_quant_conv']
  channels = shift.shape[0]
  quant_bias = quant['bias'].at[:channels].add(-shift)
  post_bias = post['bias'] + jnp.einsum('c,cd->d', shift, post['kernel'][0, 0])  # (c,)
  return {**ae_params, 'quant_conv': {**quant, 'bias': quant_bias},
          'post_quant_conv': {**post, 'bias': post_bias}}


def calibrate_latents(autoencoder, params: dict, video: jax.Array, centre: bool) -> dict:
  """`params` with centred latents (when `centre`) and `latent_scale` = 1 / their std."""
  if centre:
    shift = latent_channel_means(autoencoder, params, video)
    params = dict(params, autoencoder=centred_autoencoder(params['autoencoder'], shift))
  return dict(params, latent_scale=calibrated_latent_scale(autoencoder, params, video))


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


def ddim_sample(config: ml_collections.ConfigDict, schedule: diffusion.Schedule, model_fn,
                conds, scales, noise: jax.Array, key: jax.Array) -> jax.Array:
  """DDIM (config.sampling) with nested guidance over `conds` (least conditioned first)."""
  return _configured_ddim(config, schedule, diffusion.make_guided_denoiser(model_fn, conds, scales),
                          noise, key)


def _configured_ddim(config, schedule, denoise, noise, key):
  s = config.sampling
  return diffusion.ddim_sample(
      denoise, noise, key, schedule, num_steps=s.num_steps, eta=s.eta,
      prediction_type=config.diffusion.prediction_type, timestep_spacing=s.timestep_spacing,
      steps_offset=s.steps_offset, set_alpha_to_one=s.set_alpha_to_one)


def ddim_sample_with_known(config: ml_collections.ConfigDict, schedule: diffusion.Schedule,
                           model_fn, conds, scales, known: jax.Array, mask: jax.Array,
                           key: jax.Array) -> jax.Array:
  """`ddim_sample` of latents `(b, f, h, w, c)` whose `mask` `(b, f)` frames are given.

  At every step the given frames enter the model forward-noised,
  `x_t = alpha_t known + sigma_t eps` with one fixed eps, exactly as the model
  saw context frames in training (the sampler's own estimate of them is never
  fed back), and they are copied unchanged into the result.
  """
  noise = jax.random.normal(key, known.shape)
  keep = mask[:, :, None, None, None]
  guided = diffusion.make_guided_denoiser(model_fn, conds, scales)

  def denoise(x_t, t):
    alpha = diffusion.expand_to(schedule.alpha(t), known.ndim)
    sigma = diffusion.expand_to(schedule.sigma(t), known.ndim)
    return guided(keep * (alpha * known + sigma * noise) + (1.0 - keep) * x_t, t)

  z = _configured_ddim(config, schedule, denoise, noise, key)
  return keep * known + (1.0 - keep) * z
