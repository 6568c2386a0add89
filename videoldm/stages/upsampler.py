"""Stages `upsampler_image` and `upsampler`: the x4 diffusion upsampler (paper Sec. 3.4).

Pixel-space by default. The low-resolution frames are noise-augmented
(Eq. 5: `c = alpha_{t_g} x_low + sigma_{t_g} eps` with `t_g` uniform in
`[0, max_noise_level]`), resized to the output size and concatenated to the
noisy input; `t_g` reaches the U-Net through its class embedding (as in
Stable Diffusion's x4 upscaler), whose last row is the null class. Trained on
random patches (`patch_size`), applied convolutionally to whole frames.
With `residual`, the diffusion model generates `(x - resize(x_low)) *
residual_scale`, the detail that the bilinearly resized (clean) low-resolution
frames lack (scaled towards unit variance), and the output adds it back.

`upsampler_image` trains the spatial U-Net on single frames; `upsampler`
fine-tunes temporal layers on clips (`init_from` the image run, temporal
params exempt), so neighbouring frames are upsampled consistently.

Param tree: `unet/`.
"""

import einops
import jax
import jax.numpy as jnp

from videoldm import diffusion
from videoldm.diffusion import sampling
from videoldm.models import unet as unet_lib
from videoldm.models import video_unet as video_unet_lib
from videoldm.stages import base
from videoldm.stages import denoising


def downsample(video: jax.Array, factor: int) -> jax.Array:
  """Area-average `(b, f, H, W, c)` by `factor` (the low-resolution input)."""
  return einops.reduce(video, 'b f (h p) (w q) c -> b f h w c', 'mean', p=factor, q=factor)


def resize_to(video: jax.Array, height: int, width: int) -> jax.Array:
  """Bilinear resize of `(b, f, h, w, c)` frames to `(height, width)`."""
  b, f, _, _, c = video.shape
  return jax.image.resize(video, (b, f, height, width, c), 'bilinear')


def noise_augment(schedule: diffusion.Schedule, low_res: jax.Array, key: jax.Array,
                  max_noise_level: int, noise_level=None) -> tuple[jax.Array, jax.Array]:
  """Eq. 5: `(alpha_{t_g} x_low + sigma_{t_g} eps, t_g)` with `t_g ~ U{0..max}` per example,
  or `t_g = noise_level` (sampling)."""
  if noise_level is None:
    level_key, key = jax.random.split(key)
    t_g = jax.random.randint(level_key, (low_res.shape[0],), 0, max_noise_level + 1)
  else:
    t_g = jnp.full((low_res.shape[0],), noise_level, jnp.int32)
  noise = jax.random.normal(key, low_res.shape, low_res.dtype)
  return diffusion.q_sample(schedule, low_res, t_g, noise), t_g


def random_patches(video: jax.Array, size: int, key: jax.Array) -> jax.Array:
  """One random `size x size` crop per example (same place in every frame)."""
  b, _, height, width, _ = video.shape
  if size > height or size > width:
    raise ValueError(f'Upsampler patch_size={size} exceeds the frame size {height}x{width}.')
  y_key, x_key = jax.random.split(key)
  ys = jax.random.randint(y_key, (b,), 0, height - size + 1)
  xs = jax.random.randint(x_key, (b,), 0, width - size + 1)
  crop = lambda clip, y, x: jax.lax.dynamic_slice(
      clip, (0, y, x, 0), (clip.shape[0], size, size, clip.shape[-1]))
  return jax.vmap(crop)(video, ys, xs)


class UpsamplerStage(base.Stage):
  """x4 upsampler; `temporal` selects the video U-Net (stage `upsampler`)."""

  temporal = True

  def __init__(self, config):
    super().__init__(config)
    self.options = config.model.upsampler
    unet_config = config.model.upsampler_unet
    if unet_config.num_class_embeds != self.options.max_noise_level + 2:
      raise ValueError(f'upsampler_unet.num_class_embeds={unet_config.num_class_embeds} must be '
                       f'max_noise_level + 2 = {self.options.max_noise_level + 2} '
                       '(noise levels 0..max and the null class).')
    self.unet = (video_unet_lib.VideoUNet(unet_config) if self.temporal
                 else unet_lib.UNet(unet_config))
    self.schedule = denoising.make_schedule(config)

  def apply_unet(self, params, x, t, condition, noise_level):
    """x, condition: `(b, f, H, W, 3)`; the U-Net sees their channel concatenation."""
    inputs = jnp.concatenate([x, condition], axis=-1)  # b f H W 6
    if self.temporal:
      return self.unet.apply({'params': params['unet']}, inputs, t, class_labels=noise_level)
    f = x.shape[1]
    frames = einops.rearrange(inputs, 'b f h w c -> (b f) h w c')
    out = self.unet.apply({'params': params['unet']}, frames, jnp.repeat(t, f),
                          class_labels=jnp.repeat(noise_level, f))
    return einops.rearrange(out, '(b f) h w c -> b f h w c', f=f)

  def condition(self, high_res: jax.Array, key: jax.Array, noise_level=None):
    """The conditioning for `high_res` training/eval frames: see `condition_low_res`."""
    return self.condition_low_res(downsample(high_res, self.options.scale), key, noise_level)

  @property
  def target_scale(self) -> float:
    """The factor on what the diffusion model generates: `residual_scale` or 1."""
    return float(self.options.residual_scale) if self.options.residual else 1.0

  def base(self, low: jax.Array) -> jax.Array:
    """What the diffusion model adds to: `low` resized x`scale` (`residual`), else zeros."""
    scale = self.options.scale
    if not self.options.residual:
      return jnp.zeros(low.shape[:2] + (low.shape[2] * scale, low.shape[3] * scale, low.shape[4]),
                       low.dtype)
    return resize_to(low, low.shape[2] * scale, low.shape[3] * scale)

  def condition_low_res(self, low: jax.Array, key: jax.Array, noise_level=None):
    """Noise-augmented low-res frames resized x`scale`, and `t_g` (Eq. 5).

    `t_g` is drawn per example (training) unless `noise_level` fixes it (sampling).
    """
    augmented, t_g = noise_augment(self.schedule, low, key, self.options.max_noise_level,
                                   noise_level)
    scale = self.options.scale
    return resize_to(augmented, low.shape[2] * scale, low.shape[3] * scale), t_g

  def init_params(self, rng, batch):
    video = batch['video'][:1]
    if not self.temporal:
      video = video[:, :1]
    size = self.options.patch_size
    x = video[:, :, :size, :size]
    condition, t_g = self.condition(x, rng)
    inputs = jnp.concatenate([x, condition], axis=-1)
    if self.temporal:
      params = self.unet.init(rng, inputs, jnp.zeros((1,), jnp.int32), class_labels=t_g)
    else:
      params = self.unet.init(rng, inputs[:, 0], jnp.zeros((1,), jnp.int32), class_labels=t_g)
    return dict(unet=params['params'])

  def loss_fn(self, params, batch, rng, step):
    del step
    patch_key, aug_key, noise_key = jax.random.split(rng, 3)
    video = batch['video']
    if not self.temporal:  # Every frame is an independent image.
      video = einops.rearrange(video, 'b f h w c -> (b f) 1 h w c')
    x0 = random_patches(video, self.options.patch_size, patch_key)
    low = downsample(x0, self.options.scale)
    condition, t_g = self.condition_low_res(low, aug_key)
    target = (x0 - self.base(low)) * self.target_scale  # b f H W 3: frames or their detail
    noised = denoising.add_noise(self.schedule, target, noise_key)
    prediction = self.apply_unet(params, noised.x_t, noised.t, condition, t_g)
    loss = denoising.denoising_loss(self.config, self.schedule, prediction, target, noised)
    return loss, {'noise_level': jnp.mean(t_g.astype(jnp.float32))}

  def upsample(self, params, low_res, key, options):
    """DDIM x`scale` upsampling of `low_res` `(b, f, h, w, 3)` in [-1, 1].

    The low-resolution frames are noise-augmented at `config.sampling.upsampler_noise_level`.
    """
    aug_key, key = jax.random.split(key)
    condition, t_g = self.condition_low_res(low_res, aug_key,
                                            self.config.sampling.upsampler_noise_level)
    model_fn = lambda x, t, cond: self.apply_unet(params, x, t, *cond)
    noise = jax.random.normal(key, condition.shape)
    x = sampling.guided_sample(model_fn, [(condition, t_g)], [], noise, key, self.schedule,
                               self.config.diffusion.prediction_type, options)
    return jnp.clip(self.base(low_res) + x / self.target_scale, -1, 1)

  def sample(self, params, batch, rng):
    """Upsamples whole eval frames (convolutionally) at the sampling noise level."""
    video = batch['video'] if self.temporal else batch['video'][:, :1]
    low_res = downsample(video, self.options.scale)
    return {'upsampled': self.upsample(params, low_res, rng, self.sampling_options()),
            'data': video}


class ImageUpsamplerStage(UpsamplerStage):
  temporal = False
