"""Stage `decoder`: temporal decoder fine-tuning (paper Sec. 3.1.1, Fig. 3).

The image autoencoder (from the `autoencoder` stage via `init_from`) gets
temporal layers in its decoder (`TemporalAutoencoderKL`). The encoder and
the spatial decoder stay frozen, so latents do not change; the temporal
layers learn, on clips, from L1 reconstruction + the patch-wise temporal
discriminator of 3D convolutions (`PatchDiscriminator3D`, hinge loss,
adaptive weight on the decoder's last kernel, see `gan`). Latents are
posterior samples of the frozen encoder.

Param tree: `autoencoder/` (spatial + temporal), `discriminator/` (3D).
`config.trainable`: `^(autoencoder/decoder/.*(temporal|time_mixer)|discriminator/)`.
`config.init_from.exempt` must cover the new params: the temporal regex and
`^discriminator/` (the source's 2D discriminator has other shapes).
Config fields: `config.model.autoencoder`, `config.model.temporal_decoder`
(`merge_strategy`, `alpha`, `kernel_size`, `use_conv_out`; see
`TemporalDecoderConfig`), `config.model.loss`, `config.model.discriminator`.
"""

import einops
import jax
import jax.numpy as jnp
import ml_collections

from videoldm.models import autoencoder as autoencoder_lib
from videoldm.models import temporal_decoder
from videoldm.stages import base
from videoldm.stages import gan
from videoldm.stages import latents


def temporal_decoder_config(
    config: ml_collections.ConfigDict) -> temporal_decoder.TemporalDecoderConfig:
  """The `TemporalDecoderConfig` described by `config.model.temporal_decoder`."""
  return temporal_decoder.TemporalDecoderConfig(**config.model.temporal_decoder.to_dict())


class DecoderStage(base.Stage):
  """Temporal layers of the decoder, trained on clips against a 3D patch GAN."""

  def __init__(self, config):
    super().__init__(config)
    gan.check_loss_config(config.model.loss)
    ae_config = latents.autoencoder_config(config)
    self.temporal_config = temporal_decoder_config(config)
    self.autoencoder = temporal_decoder.TemporalAutoencoderKL(ae_config,
                                                              temporal=self.temporal_config)
    self.image_autoencoder = autoencoder_lib.AutoencoderKL(ae_config)
    self.discriminator = gan.discriminator_3d(config)

  def init_params(self, rng, batch):
    ae_key, disc_key = jax.random.split(rng)
    video = batch['video'][:1]  # (1, f, H, W, 3)
    ae_params = self.autoencoder.init(ae_key, latents.frames_of(video),
                                      num_frames=video.shape[1])['params']
    return dict(autoencoder=ae_params,
                discriminator=self.discriminator.init(disc_key, video)['params'])

  def discriminate(self, disc_params, video):
    return self.discriminator.apply({'params': disc_params}, video)

  def encode(self, ae_params, video, key):
    """Frozen-encoder latents `((b f), h, w, c)`: a posterior sample with `key`, else the mean."""
    posterior = self.autoencoder.apply({'params': ae_params}, latents.frames_of(video),
                                       method=self.autoencoder.encode)
    z = posterior.mode() if key is None else posterior.sample(key)
    return jax.lax.stop_gradient(z)

  def decode_video(self, ae_params, z, num_frames):
    """Latent frames `((b f), h, w, c)` -> video `(b, f, H, W, 3)` via the temporal decoder."""
    frames = self.autoencoder.apply({'params': ae_params}, z, num_frames,
                                    method=self.autoencoder.decode)
    return einops.rearrange(frames, '(b f) h w c -> b f h w c', f=num_frames)  # b f H W c

  def reconstruct(self, ae_params, video, key):
    """`(reconstruction (b, f, H, W, 3), last_layer_vjp)`."""
    z = self.encode(ae_params, video, key)
    decode = lambda p: self.decode_video(p, z, video.shape[1])
    return gan.output_with_last_layer_vjp(decode, ae_params,
                                          temporal_decoder.last_layer_path(self.temporal_config))

  def loss_fn(self, params, batch, rng, step):
    video = batch['video']
    reconstruction, last_layer_vjp = self.reconstruct(params['autoencoder'], video, rng)
    generator, disc_loss, metrics = gan.gan_losses(
        video, reconstruction, last_layer_vjp, self.discriminate, params['discriminator'],
        step, self.config.model.loss, self.config.total_steps)
    return generator + disc_loss, metrics

  def sample(self, params, batch, rng):
    """Temporal vs frame-wise (image decoder) reconstructions of the eval clips."""
    del rng
    video = batch['video']
    z = self.encode(params['autoencoder'], video, None)
    temporal = self.decode_video(params['autoencoder'], z, video.shape[1])
    framewise = self.image_autoencoder.apply({'params': params['autoencoder']}, z,
                                             method=self.image_autoencoder.decode)
    framewise = einops.rearrange(framewise, '(b f) h w c -> b f h w c', b=video.shape[0])
    return {'temporal_decoder': jnp.clip(temporal, -1, 1),
            'image_decoder': jnp.clip(framewise, -1, 1), 'data': video}
