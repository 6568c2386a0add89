"""Autoencoder latents shared by the latent diffusion stages: encode, decode, calibrate.

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

With `config.model.pixel_patch_size` > 0 (the video stage only) there is no
autoencoder: `make_autoencoder` gives a `PixelAutoencoder`, the identity up to
reading the frames as p x p patches, and the stage diffuses the frames
themselves (the paper's pixel-space baseline); its param tree then has no
`autoencoder/` and `latent_scale` stays 1.
"""

import einops
import jax
import jax.numpy as jnp
import ml_collections

from videoldm.models import autoencoder as autoencoder_lib
from videoldm.stages import base


def autoencoder_config(config: ml_collections.ConfigDict) -> autoencoder_lib.AutoencoderConfig:
  """The `AutoencoderConfig` described by `config.model.autoencoder`."""
  fields = config.model.autoencoder.to_dict()
  return autoencoder_lib.AutoencoderConfig(**fields)


def make_autoencoder(config: ml_collections.ConfigDict):
  """`AutoencoderKL` of `config.model.autoencoder`, or with `config.model.pixel_patch_size`
  > 0 the parameter-free `PixelAutoencoder`, whose latents the U-Net must match."""
  patch = config.model.get('pixel_patch_size', 0)
  if not patch:
    return autoencoder_lib.AutoencoderKL(autoencoder_config(config))
  pixel = autoencoder_lib.PixelAutoencoderConfig(
      in_channels=config.model.autoencoder.in_channels, patch_size=patch)
  unet = config.model.unet
  if (unet.in_channels, unet.out_channels) != (pixel.latent_channels,) * 2:
    raise ValueError(f'Pixel space with patch size {patch} needs model.unet.in_channels and '
                     f'out_channels {pixel.latent_channels}, got {unet.in_channels} and '
                     f'{unet.out_channels}.')
  return autoencoder_lib.PixelAutoencoder(pixel)


def _variables(params) -> dict:
  """The autoencoder's variables in a stage's params (none for `PixelAutoencoder`)."""
  return {'params': params.get('autoencoder', {})}


def frames_of(video: jax.Array) -> jax.Array:
  return einops.rearrange(video, 'b f h w c -> (b f) h w c')  # (b f) h w c


def encode_video(autoencoder: autoencoder_lib.AutoencoderKL, params, video: jax.Array,
                 key: jax.Array | None) -> jax.Array:
  """Video `(b, f, H, W, 3)` in [-1, 1] -> scaled latents `(b, f, h, w, c)`.

  A posterior sample with `key`, its mean without.
  """
  posterior = autoencoder.apply(_variables(params), frames_of(video),
                                method=autoencoder.encode)
  z = posterior.mode() if key is None else posterior.sample(key)
  z = jax.lax.stop_gradient(z) * params['latent_scale']
  return einops.rearrange(z, '(b f) h w c -> b f h w c', b=video.shape[0])  # b f h w c


def posterior(autoencoder: autoencoder_lib.AutoencoderKL, params,
              video: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Unscaled posterior (mean, logvar), each `(b, f, h, w, c)`, of video `(b, f, H, W, 3)`."""
  gaussian = autoencoder.apply(_variables(params), frames_of(video),
                               method=autoencoder.encode)
  split = lambda x: einops.rearrange(x, '(b f) h w c -> b f h w c', b=video.shape[0])
  return split(gaussian.mean), split(gaussian.logvar)


def batch_latents(autoencoder: autoencoder_lib.AutoencoderKL, params, batch: dict,
                  key: jax.Array | None) -> jax.Array:
  """Scaled latents `(b, f, h, w, c)` of a batch: encoded from `video`, or drawn from the
  cached posterior `latent_mean`/`latent_logvar` (`videoldm.cache`) with the same noise.

  A posterior sample with `key`, its mean without.
  """
  if 'latent_mean' not in batch:
    return encode_video(autoencoder, params, batch['video'], key)
  mean = batch['latent_mean'].astype(jnp.float32)
  z = mean
  if key is not None:  # As `DiagonalGaussian.sample` on the (b f) frames.
    noise = jax.random.normal(key, frames_of(mean).shape, mean.dtype)
    noise = einops.rearrange(noise, '(b f) h w c -> b f h w c', b=mean.shape[0])
    z = mean + jnp.exp(0.5 * batch['latent_logvar'].astype(jnp.float32)) * noise
  return jax.lax.stop_gradient(z) * params['latent_scale']


def decode_latents(autoencoder: autoencoder_lib.AutoencoderKL, params,
                   latents: jax.Array) -> jax.Array:
  """Scaled latents `(b, f, h, w, c)` -> video `(b, f, H, W, 3)` (frame by frame)."""
  frames = autoencoder.apply(_variables(params),
                             frames_of(latents) / params['latent_scale'],
                             method=autoencoder.decode)
  return einops.rearrange(frames, '(b f) h w c -> b f h w c', b=latents.shape[0])


def init_autoencoder_params(autoencoder: autoencoder_lib.AutoencoderKL, rng: jax.Array,
                            image_size: int) -> dict:
  """Fresh autoencoder params (normally replaced by `init_from`); {} for `PixelAutoencoder`."""
  images = jnp.zeros((1, image_size, image_size, autoencoder.config.in_channels))
  return dict(autoencoder.init(rng, images).get('params', {}))


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


class LatentStage(base.Stage):
  """A stage that diffuses in the latents of a frozen autoencoder (`self.autoencoder`)."""

  autoencoder: autoencoder_lib.AutoencoderKL

  def latent_size(self) -> tuple[int, int]:
    data, factor = self.config.data, self.autoencoder.config.downsampling_factor
    return data.image_size // factor, (data.image_width or data.image_size) // factor

  def encode(self, params, video):
    return encode_video(self.autoencoder, params, video, None)

  def decode(self, params, latents):
    return decode_latents(self.autoencoder, params, latents)

  def cache_entries(self, params, batch) -> dict:
    """What `videoldm.cache` keeps per clip: the frames' unscaled posterior."""
    mean, logvar = posterior(self.autoencoder, params, self.preprocess(batch)['video'])
    return {'latent_mean': mean, 'latent_logvar': logvar}
