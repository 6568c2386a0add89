"""Stage `text_upsampler`: Stable Diffusion's x4 upscaler as a latent video upsampler.

Paper Sec. 3.4 and 4.2: the spatial layers (a U-Net of 7 input channels, 4
noisy latents + 3 low-resolution RGB; its f=4 VAE; its CLIP text encoder) come
from a `StableDiffusionUpscalePipeline` folder and stay frozen; temporal layers
are inserted and trained on captioned clips. The f=4 latents of a frame are
the size of its x4-downsampled frame, so the low-resolution RGB is
concatenated without resizing, after Eq. 5's noise augmentation
`c = alpha_{t_g} x_low + sigma_{t_g} eps` with `t_g` uniform in
`[0, max_noise_level]` (350 in SD's upscaler), given to the U-Net as its
class label (`num_class_embeds` 1000, one per level). The upscaler's schedule
serves both the latents and the augmentation, as in SD's upscaler whose two
schedulers share their betas.

Sampling is convolutional in space: every U-Net call and the VAE decode run
on overlapping latent tiles of `model.upsampler.tile` with
`tile_overlap` (`diffusion.tiling`), so a 1280x2048 output needs the memory of
one tile; the sampling pipeline feeds it windows of frames.

Param tree: `autoencoder/` (f=4), `latent_scale`, `text_encoder/`, `unet/`.
"""

import einops
import jax
import jax.numpy as jnp

from videoldm.diffusion import sampling
from videoldm.diffusion import tiling
from videoldm.stages import denoising
from videoldm.stages import latents
from videoldm.stages import text_video
from videoldm.stages import upsampler

RGB = 3


class TextUpsamplerStage(text_video.TextVideoStage):
  """x4 latent video upsampler: noisy f=4 latents + noise-augmented low-res RGB, text."""

  def __init__(self, config):
    super().__init__(config)
    self.options = config.model.upsampler
    unet_config, scale = config.model.unet, self.options.scale
    channels, factor = (self.autoencoder.config.latent_channels,
                        self.autoencoder.config.downsampling_factor)
    levels, max_level = unet_config.num_class_embeds, self.options.max_noise_level
    if unet_config.in_channels != channels + RGB:
      raise ValueError(f'The upsampler U-Net has in_channels={unet_config.in_channels}; '
                       f'expected {channels + RGB} ({channels} latent + {RGB} RGB).')
    if factor != scale:
      raise ValueError(f'The upsampler autoencoder has f={factor}; expected '
                       f'model.upsampler.scale={scale}, so latents match the low-res frames.')
    if not levels or max_level >= levels:
      raise ValueError(f'model.upsampler.max_noise_level={max_level} needs a U-Net class per '
                       f'level; num_class_embeds is {levels}.')

  def init_params(self, rng, batch):
    ae_key, text_key, unet_key = jax.random.split(rng, 3)
    h, w = self.config.model.frame_size
    ae_params = self.autoencoder.init(ae_key, jnp.zeros((1, h, w, RGB)))['params']
    text_params = self.text_encoder.init(text_key, jnp.zeros((1, self.text_length), jnp.int32))
    unet_cfg = self.config.model.unet
    x = jnp.zeros((1, 1) + self.latent_size() + (unet_cfg.in_channels,))
    context = jnp.zeros((1, self.text_length, unet_cfg.cross_attention_dim))
    unet_params = self.unet.init(unet_key, x, jnp.zeros((1,), jnp.int32), context=context,
                                 class_labels=jnp.zeros((1,), jnp.int32))['params']
    scale = jnp.asarray(self.autoencoder.config.scaling_factor, jnp.float32)
    return dict(autoencoder=ae_params, latent_scale=scale, text_encoder=text_params['params'],
                unet=unet_params)

  def apply_unet(self, params, x, t, text_context, condition, noise_level):
    """x `(b, f, h, w, 4)` and the low-res frames `(b, f, h, w, 3)`, concatenated."""
    inputs = jnp.concatenate([x, condition.astype(x.dtype)], axis=-1)  # b f h w 7
    out = self.unet.apply({'params': params['unet']}, inputs, t, context=text_context,
                          class_labels=noise_level)
    return out.astype(jnp.float32)

  def augment(self, low: jax.Array, key: jax.Array, noise_level=None):
    """Eq. 5 on low-res frames: `(augmented, t_g)`; `t_g` drawn per clip unless given."""
    return upsampler.noise_augment(self.schedule, low, key, self.options.max_noise_level,
                                   noise_level)

  def cache_entries(self, params, batch) -> dict:
    raise ValueError('The text_upsampler stage trains from pixels (it needs the low-resolution '
                     'frames too); unset data.cache_dir.')

  def loss_fn(self, params, batch, rng, step):
    del step
    patch_key, enc_key, aug_key, noise_key, drop_key = jax.random.split(rng, 5)
    if 'video' not in batch:
      raise ValueError('The text_upsampler stage trains from pixels; the batch has only '
                       f'{sorted(batch)} (unset data.cache_dir).')
    video = batch['video']
    if self.options.patch_size:  # Random square crops of the (high-res) frames.
      video = upsampler.random_patches(video, self.options.patch_size, patch_key)
    z0 = latents.encode_video(self.autoencoder, params, video, enc_key)  # b f h w 4
    low = upsampler.downsample(video, self.options.scale)  # b f h w 3
    condition, t_g = self.augment(low, aug_key)
    text_context, drop = self.training_text_context(params, batch, drop_key)
    noised = denoising.add_noise(self.schedule, z0, noise_key)
    prediction = self.apply_unet(params, noised.x_t, noised.t, text_context, condition, t_g)
    loss = denoising.denoising_loss(self.config, self.schedule, prediction, z0, noised)
    return loss, {'noise_level': jnp.mean(t_g.astype(jnp.float32)),
                  'captions_dropped': jnp.mean(drop.astype(jnp.float32))}

  def decode(self, params, z: jax.Array) -> jax.Array:
    """Scaled latents `(b, f, h, w, c)` -> frames `(b, f, 4h, 4w, 3)`, frame by frame, tiled."""
    decode_frame = lambda frame: latents.decode_latents(self.autoencoder, params,
                                                        frame[None, None])[0, 0]
    frames = einops.rearrange(z, 'b f h w c -> (b f) h w c')  # ((b f), h, w, c)
    tile = tuple(self.options.tile)
    decoded = jax.lax.map(lambda frame: tiling.tiled_apply(
        decode_frame, frame, tile, self.options.tile_overlap, scale=self.options.scale), frames)
    return einops.rearrange(decoded, '(b f) h w c -> b f h w c', b=z.shape[0])

  def upsample(self, params, low_res, key, options, ids):
    """DDIM x4 of `low_res` `(b, f, h, w, 3)` in [-1, 1] for token ids `(b, n)`: frames
    `(b, f, 4h, 4w, 3)`; every U-Net call and the decode run tile by tile."""
    aug_key, key = jax.random.split(key)
    condition, t_g = self.augment(low_res, aug_key, self.config.sampling.upsampler_noise_level)
    text = self.encode_text(params, ids)
    null = self.encode_text(params, jnp.asarray(self.null_ids(ids.shape[0])))
    tile, overlap = tuple(self.options.tile), self.options.tile_overlap

    def model_fn(x, t, cond):
      text_context, level = cond
      branches = x.shape[0] // condition.shape[0]  # Guidance branches stacked on the batch.
      inputs = jnp.concatenate([x, jnp.concatenate([condition] * branches)], axis=-1)  # B f h w 7
      fn = lambda tile_inputs: self.apply_unet(params, tile_inputs[..., :-RGB], t, text_context,
                                               tile_inputs[..., -RGB:], level)
      return tiling.tiled_apply(fn, inputs, tile, overlap)

    noise = jax.random.normal(key, low_res.shape[:-1] + (self.autoencoder.config.latent_channels,))
    z = sampling.guided_sample(model_fn, [(null, t_g), (text, t_g)], [options.guidance_scale],
                               noise, key, self.schedule, self.config.diffusion.prediction_type,
                               options)
    return jnp.clip(self.decode(params, z), -1, 1)

  def sample(self, params, batch, rng):
    """Upsamples each eval clip's x4-downsampled frames, with its caption."""
    video = batch['video']
    low = upsampler.downsample(video, self.options.scale)
    return {'upsampled': self.upsample(params, low, rng, self.sampling_options(),
                                       batch['caption']), 'data': video}
