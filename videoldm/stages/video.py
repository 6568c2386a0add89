"""Stage `video`: temporal layers of the video LDM as a prediction model.

Paper Eq. 2 (train phi, keep the image backbone theta frozen) and Eq. 3
(prediction models): per example, S context frames are drawn from
`config.model.context_probs` (probabilities of S = 0, 1, 2, ...), given to the
model as `c_S = (m_S * z, m_S)`, and the loss covers the frames to predict.
S = 0 trains the unconditional branch that context guidance (Eq. 4) needs.
`config.trainable` selects the temporal params (`unet/...temporal...`); set it
to `^unet/` for the paper's end-to-end ablation, and with it a positive
`config.model.pixel_patch_size` for the pixel-space baseline: no autoencoder, the
model diffuses the frames (`stages.latents.make_autoencoder`).

`config.model.joint` mixes images into the batches (joint image-video training,
`stages.denoising`).

Param tree: `autoencoder/` (not in pixel space), `latent_scale`, `unet/` (spatial + temporal).
"""

import jax
import jax.numpy as jnp

from videoldm.diffusion import sampling
from videoldm.models import unet as unet_lib
from videoldm.models import video_unet as video_unet_lib
from videoldm.stages import denoising
from videoldm.stages import latents


class VideoStage(latents.LatentStage):
  """Video prediction LDM on moving frames (masked context frames, Eq. 3)."""

  def __init__(self, config):
    super().__init__(config)
    self.autoencoder = latents.make_autoencoder(config)
    self.unet = video_unet_lib.VideoUNet(config.model.unet)
    self.schedule = denoising.make_schedule(config)
    denoising.check_joint_config(config)

  def init_params(self, rng, batch):
    ae_key, unet_key = jax.random.split(rng)
    ae_params = latents.init_autoencoder_params(self.autoencoder, ae_key,
                                                self.config.data.image_size)
    scale = jnp.asarray(self.autoencoder.config.scaling_factor, jnp.float32)
    first = {key: value[:1] for key, value in batch.items()}
    z = latents.batch_latents(self.autoencoder, dict(autoencoder=ae_params, latent_scale=scale),
                              first, None)
    unet_params = self.unet.init(
        unet_key, z, jnp.zeros((1,), jnp.int32), class_labels=jnp.zeros((1,), jnp.int32),
        context_latents=z, context_mask=jnp.zeros(z.shape[:2]))['params']
    params = dict(autoencoder=ae_params) if ae_params else {}  # None in pixel space.
    return dict(params, latent_scale=scale, unet=unet_params)

  def context_mask(self, key, batch_size: int, num_frames: int) -> jax.Array:
    """`(b, f)` mask of the S leading context frames, S ~ `context_probs`."""
    num_context = denoising.sample_num_context(key, batch_size, self.config.model.context_probs)
    return denoising.leading_frames_mask(num_context, num_frames)

  def apply_unet(self, params, x, t, labels, context_latents, mask, image_only_indicator=None):
    return self.unet.apply({'params': params['unet']}, x, t, class_labels=labels,
                           context_latents=context_latents, context_mask=mask,
                           image_only_indicator=image_only_indicator)

  def loss_fn(self, params, batch, rng, step):
    del step
    enc_key, noise_key, drop_key, mask_key = jax.random.split(rng, 4)
    z0 = latents.batch_latents(self.autoencoder, params, batch, enc_key)  # Pixels or cache.
    b, f = z0.shape[:2]
    num_images = denoising.num_image_examples(self.config, b)
    labels = denoising.drop_labels(drop_key, denoising.class_labels(batch),
                                self.config.model.label_dropout,
                                unet_lib.null_class_label(self.config.model.unet))
    mask = self.context_mask(mask_key, b, f)
    images = {}
    if num_images:  # Their frames: alpha = 1 in every blender and no context frames.
      images['image_only_indicator'] = denoising.image_indicator(num_images, b, f)  # (b, f)
      mask = jnp.where(images['image_only_indicator'], 0.0, mask)
    noised = denoising.add_noise(self.schedule, z0, noise_key)
    prediction = self.apply_unet(params, noised.x_t, noised.t, labels, z0, mask, **images)
    loss, metrics = denoising.joint_loss(self.config, self.schedule, prediction, z0, noised,
                                         num_images)
    return loss, {'context_frames': jnp.mean(jnp.sum(mask, axis=1)), **metrics}

  def sample_window(self, params, known, mask, cond, key, options):
    """Context guidance (Eq. 4) and label guidance over one window, one model call per step."""
    null = jnp.full_like(cond, unet_lib.null_class_label(self.config.model.unet))
    model_fn = lambda x, t, labels, context, m: self.apply_unet(params, x, t, labels, context, m)
    return sampling.context_guided_sample(model_fn, known, mask, cond, null, key, self.schedule,
                                          self.config.diffusion.prediction_type, options)

  def sample(self, params, batch, rng):
    """Continues each eval clip from its first `config.sampling.num_context` frames."""
    z0 = latents.batch_latents(self.autoencoder, params, batch, None)
    video = batch['video'] if 'video' in batch else self.decode(params, z0)  # Cached: decoded.
    b, f = z0.shape[:2]
    mask = denoising.leading_frames_mask(
        jnp.full((b,), self.config.sampling.num_context), f)
    z = self.sample_window(params, z0, mask, denoising.class_labels(batch), rng,
                           self.sampling_options())
    samples = latents.decode_latents(self.autoencoder, params, z)
    return {'prediction': jnp.clip(samples, -1, 1), 'data': video}
