"""Stage `image`: the image LDM on video frames (paper Sec. 2; Fig. 5's backbone).

The spatial U-Net learns to denoise autoencoder latents of single frames,
with class labels dropped at `config.model.label_dropout` for classifier-free
guidance. The autoencoder (from the `autoencoder` stage, via `init_from`) is
frozen: `config.trainable` selects `unet/`.

Param tree: `autoencoder/`, `latent_scale`, `unet/`.
"""

import jax
import jax.numpy as jnp

from videoldm.diffusion import sampling
from videoldm.models import autoencoder as autoencoder_lib
from videoldm.models import unet as unet_lib
from videoldm.stages import denoising
from videoldm.stages import latents


class ImageStage(latents.LatentStage):
  """Image LDM: Eq. 1 on frame latents, eps or v objective."""

  def __init__(self, config):
    super().__init__(config)
    self.autoencoder = autoencoder_lib.AutoencoderKL(latents.autoencoder_config(config))
    self.unet = unet_lib.UNet(config.model.unet)
    self.schedule = denoising.make_schedule(config)

  def frame_batch(self, batch):
    """Video batch -> one image per frame: latents input `(b f) h w c`, labels `(b f,)`."""
    video = batch['video']
    labels = jnp.repeat(denoising.class_labels(batch), video.shape[1])  # (b f,)
    return video, labels

  def init_params(self, rng, batch):
    ae_key, unet_key = jax.random.split(rng)
    ae_params = latents.init_autoencoder_params(self.autoencoder, ae_key, batch['video'].shape[2])
    scale = jnp.asarray(self.autoencoder.config.scaling_factor, jnp.float32)
    z = latents.encode_video(self.autoencoder, dict(autoencoder=ae_params, latent_scale=scale),
                            batch['video'][:1, :1], None)[:, 0]
    unet_params = self.unet.init(unet_key, z, jnp.zeros((1,), jnp.int32),
                                 class_labels=jnp.zeros((1,), jnp.int32))['params']
    return dict(autoencoder=ae_params, latent_scale=scale, unet=unet_params)

  def calibrate(self, params, batch):
    if not self.config.model.calibrate_latent_scale:
      return params
    return latents.calibrate_latents(self.autoencoder, params, batch['video'],
                                    centre=self.config.model.centre_latents)

  def loss_fn(self, params, batch, rng, step):
    del step
    enc_key, noise_key, drop_key = jax.random.split(rng, 3)
    video, labels = self.frame_batch(batch)
    z0 = latents.frames_of(latents.encode_video(self.autoencoder, params, video, enc_key))
    labels = denoising.drop_labels(drop_key, labels, self.config.model.label_dropout,
                                unet_lib.null_class_label(self.config.model.unet))
    noised = denoising.add_noise(self.schedule, z0, noise_key)
    prediction = self.unet.apply({'params': params['unet']}, noised.x_t, noised.t,
                                 class_labels=labels)
    loss = denoising.denoising_loss(self.config, self.schedule, prediction, z0, noised)
    return loss, {'latent_std': jnp.std(z0)}

  def sample_images(self, params, labels, latent_shape, key, options):
    """Classifier-free guided DDIM of frame latents `latent_shape` for `labels`."""
    null = jnp.full_like(labels, unet_lib.null_class_label(self.config.model.unet))
    noise = jax.random.normal(key, latent_shape)  # (b, h, w, c)

    def model_fn(x, t, cond):
      return self.unet.apply({'params': params['unet']}, x, t, class_labels=cond)

    return sampling.guided_sample(model_fn, [null, labels], [options.guidance_scale], noise, key,
                                  self.schedule, self.config.diffusion.prediction_type, options)

  def sample(self, params, batch, rng):
    """One class-conditional sample per eval video (its first frame's label), CFG."""
    video = batch['video']
    z_shape = latents.encode_video(self.autoencoder, params, video[:, :1], None).shape
    z = self.sample_images(params, denoising.class_labels(batch), z_shape[:1] + z_shape[2:], rng,
                           self.sampling_options())
    samples = latents.decode_latents(self.autoencoder, params, z[:, None])
    reference = video[:, :1]
    return {'samples': jnp.clip(samples, -1, 1), 'data': reference}
