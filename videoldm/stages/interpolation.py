"""Stage `interpolation`: T -> 4T temporal interpolation (paper Sec. 3.3).

Same masking machinery as the prediction model, but the visible frames are
the key frames every 4th frame of a window of `4 (K - 1) + 1` frames, and the
3 frames between each pair are generated. One model is trained jointly for two
regimes — T -> 4T (key frames far apart, frame stride `strides[0]`) and
4T -> 16T (stride `strides[1]`) — told apart by a binary regime conditioning
that reaches the temporal layers' frame embedding.

Param tree: `autoencoder/`, `latent_scale`, `unet/` (with `regime` inputs).
"""

import jax
import jax.numpy as jnp

from videoldm.diffusion import sampling
from videoldm.models import autoencoder as autoencoder_lib
from videoldm.models import unet as unet_lib
from videoldm.models import video_unet as video_unet_lib
from videoldm.stages import denoising
from videoldm.stages import latents

UPSAMPLING = 4  # Frames per key-frame interval: 3 new frames between each pair.


def window_length(num_key_frames: int) -> int:
  return UPSAMPLING * (num_key_frames - 1) + 1


def key_frame_mask(num_key_frames: int) -> jax.Array:
  """`(4 (K - 1) + 1,)` float mask, 1 on the key frames (every 4th frame)."""
  length = window_length(num_key_frames)
  return (jnp.arange(length) % UPSAMPLING == 0).astype(jnp.float32)


def regime_windows(frames: jax.Array, regime: jax.Array, strides, num_key_frames: int,
                   offset_key: jax.Array, **others: jax.Array):
  """Per example, a window of `4 (K - 1) + 1` frames at the stride of its regime.

  frames: `(b, F, ...)` loaded at stride 1; regime: `(b,)` int in {0, 1}. Arrays in
  `others` with the same leading `(b, F)` (e.g. cached latent posteriors) get the
  same windows; then `(frames window, {name: window})` is returned.
  """
  b, num_frames = frames.shape[:2]
  length = window_length(num_key_frames)
  stride = jnp.asarray(strides, jnp.int32)[regime]  # (b,)
  span = (length - 1) * stride + 1
  offset = jax.random.randint(offset_key, (b,), 0, num_frames - span + 1)
  index = offset[:, None] + jnp.arange(length)[None, :] * stride[:, None]  # (b, length)
  take = lambda x: jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)),
                                       axis=1)
  if others:
    return take(frames), {name: take(x) for name, x in others.items()}
  return take(frames)


def sample_windows(batch: dict, interp, key: jax.Array, regime: jax.Array | None = None):
  """`(windows, regime, mask)`: the batch's per-frame entries (`video`, or the cached
  `latent_mean`/`latent_logvar`) cut to windows, regimes (random unless given), key mask."""
  regime_key, offset_key = jax.random.split(key)
  frames = {name: batch[name] for name in ('video', 'latent_mean', 'latent_logvar')
            if name in batch}
  first = next(iter(frames.values()))
  b = first.shape[0]
  if regime is None:
    regime = jax.random.bernoulli(regime_key, 0.5, (b,)).astype(jnp.int32)
  _, windows = regime_windows(first, regime, interp.strides, interp.num_key_frames, offset_key,
                              **frames)
  mask = jnp.broadcast_to(key_frame_mask(interp.num_key_frames), first.shape[:1] + (
      window_length(interp.num_key_frames),))
  return windows, regime, mask


def guided_interpolation(stage, params, known, mask, cond, null, key, options, regime=None):
  """`context_guided_sample` of an interpolation stage (`stage.apply_unet(..., regime)`),
  each window's regime `(b,)` (default 0, T -> 4T) repeated over the guidance branches."""
  if regime is None:
    regime = jnp.zeros(known.shape[:1], jnp.int32)

  def model_fn(x, t, c, context, m):
    regimes = jnp.concatenate([regime] * (x.shape[0] // regime.shape[0]), axis=0)
    return stage.apply_unet(params, x, t, c, context, m, regimes)

  return sampling.context_guided_sample(model_fn, known, mask, cond, null, key, stage.schedule,
                                        stage.config.diffusion.prediction_type, options)


def check_clip_length(num_frames: int, strides, num_key_frames: int) -> None:
  needed = (window_length(num_key_frames) - 1) * max(strides) + 1
  if num_frames < needed:
    raise ValueError(f'Interpolation needs clips of at least {needed} frames for '
                     f'{num_key_frames} key frames at strides {tuple(strides)}; '
                     f'config.data.num_frames is {num_frames}.')


class InterpolationStage(latents.LatentStage):
  """Masked-frame interpolation LDM with binary regime conditioning."""

  def __init__(self, config):
    super().__init__(config)
    interp = config.model.interpolation
    check_clip_length(config.data.num_frames, interp.strides, interp.num_key_frames)
    if not config.model.unet.temporal.regime_conditioning:
      raise ValueError('The interpolation stage needs '
                       'config.model.unet.temporal.regime_conditioning=True.')
    self.autoencoder = autoencoder_lib.AutoencoderKL(latents.autoencoder_config(config))
    self.unet = video_unet_lib.VideoUNet(config.model.unet)
    self.schedule = denoising.make_schedule(config)

  def windows(self, batch, key, regime=None):
    """Windows `(b, 4 (K - 1) + 1, H, W, 3)`, their regimes (random unless given), mask."""
    windows, regime, mask = sample_windows(batch, self.config.model.interpolation, key, regime)
    return windows['video'], regime, mask

  def apply_unet(self, params, x, t, labels, context_latents, mask, regime):
    return self.unet.apply({'params': params['unet']}, x, t, class_labels=labels,
                           context_latents=context_latents, context_mask=mask,
                           regime=regime.astype(jnp.float32))

  def init_params(self, rng, batch):
    ae_key, unet_key = jax.random.split(rng)
    ae_params = latents.init_autoencoder_params(self.autoencoder, ae_key, batch['video'].shape[2])
    scale = jnp.asarray(self.autoencoder.config.scaling_factor, jnp.float32)
    length = window_length(self.config.model.interpolation.num_key_frames)
    z = latents.encode_video(self.autoencoder, dict(autoencoder=ae_params, latent_scale=scale),
                            batch['video'][:1, :length], None)
    unet_params = self.unet.init(
        unet_key, z, jnp.zeros((1,), jnp.int32), class_labels=jnp.zeros((1,), jnp.int32),
        context_latents=z, context_mask=jnp.ones(z.shape[:2]),
        regime=jnp.zeros((1,)))['params']
    return dict(autoencoder=ae_params, latent_scale=scale, unet=unet_params)

  def loss_fn(self, params, batch, rng, step):
    del step
    window_key, enc_key, noise_key, drop_key = jax.random.split(rng, 4)
    video, regime, mask = self.windows(batch, window_key)
    z0 = latents.encode_video(self.autoencoder, params, video, enc_key)
    labels = denoising.drop_labels(drop_key, denoising.class_labels(batch),
                                self.config.model.label_dropout,
                                unet_lib.null_class_label(self.config.model.unet))
    noised = denoising.add_noise(self.schedule, z0, noise_key)
    prediction = self.apply_unet(params, noised.x_t, noised.t, labels, z0, mask, regime)
    loss = denoising.denoising_loss(self.config, self.schedule, prediction, z0, noised)
    return loss, {'regime_fine': jnp.mean(regime.astype(jnp.float32))}

  def sample_window(self, params, known, mask, cond, key, options, regime=None):
    """Generates the frames between the `mask` key frames of each window in `regime` `(b,)`.

    Context guidance (Eq. 4) and label guidance, one model call per step;
    `regime` defaults to T -> 4T (0).
    """
    null = jnp.full_like(cond, unet_lib.null_class_label(self.config.model.unet))
    return guided_interpolation(self, params, known, mask, cond, null, key, options, regime)

  def sample(self, params, batch, rng):
    """Interpolates the key frames of each eval window, in the T -> 4T regime."""
    window_key, sample_key = jax.random.split(rng)
    regime = jnp.zeros((batch['video'].shape[0],), jnp.int32)
    video, regime, mask = self.windows(batch, window_key, regime)
    z0 = latents.encode_video(self.autoencoder, params, video, None)
    z = self.sample_window(params, z0, mask, denoising.class_labels(batch), sample_key,
                           self.sampling_options(), regime=regime)
    samples = latents.decode_latents(self.autoencoder, params, z)
    return {'interpolation': jnp.clip(samples, -1, 1), 'data': video}
