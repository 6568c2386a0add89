"""Stage `autoencoder`: the image KL autoencoder on video frames (paper Sec. 2).

L1 reconstruction + `kl_weight` * KL + a 2D patch discriminator (hinge loss,
adaptive weight on the decoder's `conv_out` kernel, started at `disc_start`),
folded into one scalar as `videoldm.stages.gan` describes. Frames are
reconstructed from a posterior sample. The KL term is the per-example KL
divided by the pixels per frame, so with the mean-per-pixel L1 it keeps the
taming/LDM balance (their L1 and KL are both summed per example).
The perceptual (LPIPS) term is off (`perceptual_weight` must be 0.0).

Param tree: `autoencoder/`, `discriminator/`; `config.trainable` is
`^(autoencoder|discriminator)/`. Config fields: `config.model.autoencoder`,
`config.model.loss`, `config.model.discriminator` (see `gan`).
"""

import einops
import jax
import jax.numpy as jnp

from videoldm.models import autoencoder as autoencoder_lib
from videoldm.stages import base
from videoldm.stages import gan
from videoldm.stages import latents

LAST_LAYER = ('decoder', 'conv_out', 'kernel')


class AutoencoderStage(base.Stage):
  """Image autoencoder with a patch GAN, trained on every frame of the clips."""

  def __init__(self, config):
    super().__init__(config)
    gan.check_loss_config(config.model.loss)
    self.autoencoder = autoencoder_lib.AutoencoderKL(latents.autoencoder_config(config))
    self.discriminator = gan.discriminator_2d(config)

  def init_params(self, rng, batch):
    ae_key, disc_key = jax.random.split(rng)
    frames = latents.frames_of(batch['video'][:1, :1])  # (1, H, W, 3)
    return dict(autoencoder=self.autoencoder.init(ae_key, frames)['params'],
                discriminator=self.discriminator.init(disc_key, frames)['params'])

  def discriminate(self, disc_params, frames):
    return self.discriminator.apply({'params': disc_params}, frames)

  def reconstruct(self, ae_params, frames, key):
    """`(reconstruction, posterior, last_layer_vjp)` of frames `(n, H, W, 3)`."""
    posterior = self.autoencoder.apply({'params': ae_params}, frames,
                                       method=self.autoencoder.encode)
    z = posterior.sample(key)
    decode = lambda p: self.autoencoder.apply({'params': p}, z, method=self.autoencoder.decode)
    reconstruction, last_layer_vjp = gan.output_with_last_layer_vjp(decode, ae_params,
                                                                    LAST_LAYER)
    return reconstruction, posterior, last_layer_vjp

  def loss_fn(self, params, batch, rng, step):
    frames = latents.frames_of(batch['video'])
    reconstruction, posterior, last_layer_vjp = self.reconstruct(params['autoencoder'], frames,
                                                                 rng)
    kl = jnp.mean(posterior.kl()) / (frames[0].size)
    generator, disc_loss, metrics = gan.gan_losses(
        frames, reconstruction, last_layer_vjp, self.discriminate, params['discriminator'],
        step, self.config.model.loss, self.config.total_steps)
    loss = generator + self.config.model.loss.kl_weight * kl + disc_loss
    return loss, dict(metrics, kl_loss=kl)

  def sample(self, params, batch, rng):
    """Posterior-mean reconstructions of the eval clips next to the data."""
    del rng
    video = batch['video']
    reconstruction, _ = self.autoencoder.apply({'params': params['autoencoder']},
                                               latents.frames_of(video))
    reconstruction = einops.rearrange(reconstruction, '(b f) h w c -> b f h w c',
                                      b=video.shape[0])  # b f h w c
    return {'reconstruction': jnp.clip(reconstruction, -1, 1), 'data': video}
