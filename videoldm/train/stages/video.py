"""Stage `video`: temporal layers of the video LDM as a prediction model.

Paper Eq. 2 (train phi, keep the image backbone theta frozen) and Eq. 3
(prediction models): per example, S context frames are drawn from
`config.model.context_probs` (probabilities of S = 0, 1, 2, ...), given to the
model as `c_S = (m_S * z, m_S)`, and the loss covers the frames to predict.
S = 0 trains the unconditional branch that context guidance (Eq. 4) needs.
`config.trainable` selects the temporal params (`unet/...temporal...`); set it
to `^unet/` for the paper's end-to-end ablation.

Param tree: `autoencoder/`, `latent_scale`, `unet/` (spatial + temporal).
"""

import jax
import jax.numpy as jnp

from videoldm.models import autoencoder as autoencoder_lib
from videoldm.models import unet as unet_lib
from videoldm.models import video_unet as video_unet_lib
from videoldm.train import stages
from videoldm.train.stages import base
from videoldm.train.stages import latent


class VideoStage(base.Stage):
  """Video prediction LDM on moving frames (masked context frames, Eq. 3)."""

  def __init__(self, config):
    super().__init__(config)
    self.autoencoder = autoencoder_lib.AutoencoderKL(latent.autoencoder_config(config))
    self.unet = video_unet_lib.VideoUNet(config.model.unet)
    self.schedule = latent.make_schedule(config)

  def init_params(self, rng, batch):
    ae_key, unet_key = jax.random.split(rng)
    ae_params = latent.init_autoencoder_params(self.autoencoder, ae_key, batch['video'].shape[2])
    scale = jnp.asarray(self.autoencoder.config.scaling_factor, jnp.float32)
    z = latent.encode_video(self.autoencoder, dict(autoencoder=ae_params, latent_scale=scale),
                            batch['video'][:1], None)
    unet_params = self.unet.init(
        unet_key, z, jnp.zeros((1,), jnp.int32), class_labels=jnp.zeros((1,), jnp.int32),
        context_latents=z, context_mask=jnp.zeros(z.shape[:2]))['params']
    return dict(autoencoder=ae_params, latent_scale=scale, unet=unet_params)

  def context_mask(self, key, batch_size: int, num_frames: int) -> jax.Array:
    """`(b, f)` mask of the S leading context frames, S ~ `context_probs`."""
    num_context = latent.sample_num_context(key, batch_size, self.config.model.context_probs)
    return latent.leading_frames_mask(num_context, num_frames)

  def apply_unet(self, params, x, t, labels, context_latents, mask):
    return self.unet.apply({'params': params['unet']}, x, t, class_labels=labels,
                           context_latents=context_latents, context_mask=mask)

  def loss_fn(self, params, batch, rng, step):
    del step
    enc_key, noise_key, drop_key, mask_key = jax.random.split(rng, 4)
    z0 = latent.encode_video(self.autoencoder, params, batch['video'], enc_key)
    b, f = z0.shape[:2]
    labels = latent.drop_labels(drop_key, latent.class_labels(batch),
                                self.config.model.label_dropout,
                                unet_lib.null_class_label(self.config.model.unet))
    mask = self.context_mask(mask_key, b, f)
    noised = latent.add_noise(self.schedule, z0, noise_key)
    prediction = self.apply_unet(params, noised.x_t, noised.t, labels, z0, mask)
    loss = latent.denoising_loss(self.config, self.schedule, prediction, z0, noised)
    return loss, {'context_frames': jnp.mean(jnp.sum(mask, axis=1))}

  def sample(self, params, batch, rng):
    """Continues each eval clip from its first `config.sampling.num_context` frames."""
    video = batch['video']
    z0 = latent.encode_video(self.autoencoder, params, video, None)
    b, f = z0.shape[:2]
    mask = latent.leading_frames_mask(
        jnp.full((b,), self.config.sampling.num_context), f)
    z = sample_with_context(self.config, self.schedule, self.apply_unet, params, z0, mask,
                            latent.class_labels(batch), rng)
    samples = latent.decode_latents(self.autoencoder, params, z)
    return {'prediction': jnp.clip(samples, -1, 1), 'data': video}


def sample_with_context(config, schedule, apply_unet, params, context_latents, mask, labels,
                        rng, regime=None):
  """DDIM with context guidance (Eq. 4) and label guidance, one model call per step.

  Branches (least conditioned first): no context and null label; context and
  null label; context and label. Known frames enter each step forward-noised
  and are copied into the result (`latent.ddim_sample_with_known`).
  """
  null_label = unet_lib.null_class_label(config.model.unet)
  no_mask = jnp.zeros_like(mask)
  null = jnp.full_like(labels, null_label)
  conds = [(null, no_mask), (null, mask), (labels, mask)]
  scales = [config.sampling.context_guidance, config.sampling.guidance_scale]

  def model_fn(x, t, cond):
    cond_labels, cond_mask = cond
    repeats = x.shape[0] // context_latents.shape[0]
    context = jnp.concatenate([context_latents] * repeats, axis=0)
    if regime is None:
      return apply_unet(params, x, t, cond_labels, context, cond_mask)
    regimes = jnp.concatenate([regime] * repeats, axis=0)
    return apply_unet(params, x, t, cond_labels, context, cond_mask, regimes)

  return latent.ddim_sample_with_known(config, schedule, model_fn, conds, scales,
                                      context_latents, mask, rng)


stages.register_stage('video', VideoStage)
