"""Stage `text_interpolation`: T -> 4T interpolation of text-to-video key frames (Sec. 3.3, 4.2).

The interpolation model of `stages/interpolation.py` on the Stable Diffusion
backbone of `stages/text_video.py`: windows of `4 (K - 1) + 1` frames whose key
frames (every 4th) are given through the masked context (`c_S = (m_S * z, m_S)`),
two frame-rate regimes (window stride `model.interpolation.strides[regime]`,
regime 0 = T -> 4T, 1 = 4T -> 16T) told apart by the regime conditioning of the
temporal layers, and the caption cross-attended by spatial and temporal layers
(dropped with `model.caption_dropout` for classifier-free guidance). Started
from a `text_video` run (`init_from.workdir`); only temporal params train.

Param tree: as `text_video` (`autoencoder/`, `latent_scale`, `text_encoder/`,
`unet/` with the regime inputs).
"""

import jax
import jax.numpy as jnp

from videoldm.stages import denoising
from videoldm.stages import interpolation
from videoldm.stages import latents
from videoldm.stages import text_video


class TextInterpolationStage(text_video.TextVideoStage):
  """Masked key-frame interpolation with text and regime conditioning."""

  def __init__(self, config):
    super().__init__(config)
    interp = config.model.interpolation
    interpolation.check_clip_length(config.data.num_frames, interp.strides, interp.num_key_frames)
    temporal = config.model.unet.temporal
    if not (temporal.regime_conditioning and temporal.context_frames):
      raise ValueError('The text_interpolation stage needs model.unet.temporal.'
                       'regime_conditioning=True and context_frames=True.')

  def apply_unet(self, params, x, t, text_context, context_latents, mask, regime=None):
    if regime is None:  # A call without one (e.g. a pipeline probe) is T -> 4T.
      regime = jnp.zeros(x.shape[:1], jnp.int32)
    out = self.unet.apply({'params': params['unet']}, x, t, context=text_context,
                          context_latents=context_latents, context_mask=mask,
                          regime=regime.astype(jnp.float32))
    return out.astype(jnp.float32)

  def loss_fn(self, params, batch, rng, step):
    del step
    window_key, enc_key, noise_key, drop_key = jax.random.split(rng, 4)
    windows, regime, mask = interpolation.sample_windows(
        batch, self.config.model.interpolation, window_key)
    z0 = latents.batch_latents(self.autoencoder, params, windows, enc_key)  # Pixels or cache.
    text_context, drop = self.training_text_context(params, batch, drop_key)
    noised = denoising.add_noise(self.schedule, z0, noise_key)
    prediction = self.apply_unet(params, noised.x_t, noised.t, text_context, z0, mask, regime)
    loss = denoising.denoising_loss(self.config, self.schedule, prediction, z0, noised)
    return loss, {'regime_fine': jnp.mean(regime.astype(jnp.float32)),
                  'captions_dropped': jnp.mean(drop.astype(jnp.float32))}

  def sample_window(self, params, known, mask, cond, key, options, regime=None):
    """Generates the frames between the `mask` key frames of windows in `regime` `(b,)`.

    `cond`: token ids `(b, n)`; text and context guidance as `text_video`'s,
    one model call per step. `regime` defaults to T -> 4T (0).
    """
    text = self.encode_text(params, cond)
    null = self.encode_text(params, jnp.asarray(self.null_ids(cond.shape[0])))
    return interpolation.guided_interpolation(self, params, known, mask, text, null, key,
                                              options, regime)

  def sample(self, params, batch, rng):
    """Interpolates the key frames of each eval window from its caption, in regime T -> 4T."""
    window_key, sample_key = jax.random.split(rng)
    b = batch['caption'].shape[0]
    windows, regime, mask = interpolation.sample_windows(
        batch, self.config.model.interpolation, window_key, jnp.zeros((b,), jnp.int32))
    z0 = latents.batch_latents(self.autoencoder, params, windows, None)
    video = windows['video'] if 'video' in windows else self.decode(params, z0)
    z = self.sample_window(params, z0, mask, batch['caption'], sample_key,
                           self.sampling_options(), regime=regime)
    return {'interpolation': jnp.clip(self.decode(params, z), -1, 1), 'data': video}
