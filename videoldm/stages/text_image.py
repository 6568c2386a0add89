"""Stage `text_image`: Stable Diffusion's spatial layers fine-tuned on video frames.

Paper Sec. 4.2: before temporal layers are added, SD's U-Net is fine-tuned on
frames of the video data, each frame a captioned image, so the spatial
backbone matches the video domain (optional: `text_video` can also start from
SD directly). The VAE and text encoder stay frozen; `text_video` then starts
`init_from` this run, its temporal layers new.

Param tree: `autoencoder/`, `latent_scale`, `text_encoder/`, `unet/` (image U-Net).
"""

import einops
import jax
import jax.numpy as jnp

from videoldm.models import unet as unet_lib
from videoldm.stages import text_video


def frames_as_clips(batch: dict) -> dict:
  """A clip batch `(b, f, ...)` as `(b f)` one-frame clips, each with its clip's caption."""
  out = {}
  for key, value in batch.items():
    if key in ('video', 'latent_mean', 'latent_logvar'):
      out[key] = einops.rearrange(value, 'b f ... -> (b f) 1 ...')
    else:  # Per-clip entries (caption ids, text context) repeat per frame.
      frames = (batch['video'] if 'video' in batch else batch['latent_mean']).shape[1]
      out[key] = jnp.repeat(value, frames, axis=0)
  return out


class TextImageStage(text_video.TextVideoStage):
  """Text-to-image LDM on video frames: the SD U-Net, every layer trainable."""

  def __init__(self, config):
    super().__init__(config)
    if config.model.unet.temporal.context_frames:
      raise ValueError('The text_image stage has no context frames; set '
                       'model.unet.temporal.context_frames=False.')
    self.unet = unet_lib.UNet(config.model.unet)

  def init_params(self, rng, batch):
    ae_key, text_key, unet_key = jax.random.split(rng, 3)
    h, w = self.config.model.frame_size
    ae_params = self.autoencoder.init(ae_key, jnp.zeros((1, h, w, 3)))['params']
    text_params = self.text_encoder.init(text_key, jnp.zeros((1, self.text_length), jnp.int32))
    unet_cfg = self.config.model.unet
    z = jnp.zeros((1,) + self.latent_size() + (unet_cfg.out_channels,))
    context = jnp.zeros((1, self.text_length, unet_cfg.cross_attention_dim))
    unet_params = self.unet.init(unet_key, z, jnp.zeros((1,), jnp.int32), context=context)
    scale = jnp.asarray(self.autoencoder.config.scaling_factor, jnp.float32)
    return dict(autoencoder=ae_params, latent_scale=scale, text_encoder=text_params['params'],
                unet=unet_params['params'])

  def apply_unet(self, params, x, t, text_context, context_latents, mask):
    """Frames of `x` `(b, f, h, w, c)` denoised as independent images."""
    del context_latents, mask
    f = x.shape[1]
    images = einops.rearrange(x, 'b f h w c -> (b f) h w c')  # ((b f), h, w, c)
    t = jnp.repeat(jnp.broadcast_to(t, (x.shape[0],)), f)
    out = self.unet.apply({'params': params['unet']}, images, t,
                          context=jnp.repeat(text_context, f, axis=0))
    return einops.rearrange(out.astype(jnp.float32), '(b f) h w c -> b f h w c', f=f)

  def loss_fn(self, params, batch, rng, step):
    """Eq. 1 on every frame as its own image (own noise level), with its clip's caption."""
    return super().loss_fn(params, frames_as_clips(batch), rng, step)

  def sample(self, params, batch, rng):
    """An image from each eval clip's caption, next to the clip's first frame."""
    first = {k: (v[:, :1] if k in ('video', 'latent_mean', 'latent_logvar') else v)
             for k, v in batch.items()}
    return super().sample(params, first, rng)
