"""model.pixel_patch_size: the video stage diffuses the frames themselves, no autoencoder."""

import os

import einops
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videoldm import config_utils
from videoldm.models import autoencoder as autoencoder_lib
from videoldm.stages import denoising
from videoldm.stages import latents
from videoldm.stages import video

CONFIG = os.path.join(os.path.dirname(__file__), '..', 'configs', 'moving_digits.py')


def pixel_config(patch: int = 2, unet_channels: int | None = None):
  config = config_utils.load_config(f'{CONFIG}:stage=video,runlocal')
  channels = unet_channels or 3 * patch**2
  return config_utils.override(config, **{
      'model.pixel_patch_size': patch, 'model.unet.in_channels': channels,
      'model.unet.out_channels': channels, 'data.num_frames': 2,
      'model.unet.block_out_channels': (8,), 'model.unet.num_attention_heads': (2,),
      'model.unet.attention_levels': (False,), 'model.unet.transformer_layers_per_block': (1,)})


def test_pixel_autoencoder_is_a_point_mass_permutation():
  ae = autoencoder_lib.PixelAutoencoder(autoencoder_lib.PixelAutoencoderConfig(patch_size=2))
  x = jax.random.uniform(jax.random.key(0), (2, 4, 6, 3), minval=-1, maxval=1)
  posterior = ae.apply({}, x, method=ae.encode)
  assert posterior.mean.shape == (2, 2, 3, 12)
  np.testing.assert_array_equal(posterior.mean[1, 1, 2], x[1, 2:4, 4:6].reshape(-1))
  np.testing.assert_array_equal(posterior.sample(jax.random.key(1)), posterior.mean)
  np.testing.assert_array_equal(ae.apply({}, posterior.mean, method=ae.decode), x)


def test_pixel_video_stage_loss_is_eq1_on_the_frames():
  config = pixel_config()
  stage = video.VideoStage(config)
  clip = jax.random.uniform(jax.random.key(0), (2, 2, 16, 16, 3), minval=-1, maxval=1)
  batch = dict(video=clip, labels=jnp.array([[3, 3], [7, 7]], jnp.int32))
  rng = jax.random.key(2)

  @jax.jit
  def losses(batch):
    params = stage.init_params(jax.random.key(1), batch)
    loss, _ = stage.loss_fn(params, batch, rng, jnp.zeros((), jnp.int32))
    # Eq. 1 by hand on the frames' 2x2 patches, with the keys loss_fn splits off.
    _, noise_key, drop_key, mask_key = jax.random.split(rng, 4)
    x0 = einops.rearrange(batch['video'], 'b f (h p) (w q) c -> b f h w (p q c)', p=2, q=2)
    labels = denoising.drop_labels(drop_key, batch['labels'][:, 0],
                                   config.model.label_dropout,
                                   config.model.unet.num_class_embeds - 1)
    mask = stage.context_mask(mask_key, 2, 2)
    noised = denoising.add_noise(stage.schedule, x0, noise_key)
    prediction = stage.apply_unet(params, noised.x_t, noised.t, labels, x0, mask)
    expected = denoising.denoising_loss(config, stage.schedule, prediction, x0, noised)
    return params, loss, expected, stage.decode(params, x0)

  params, loss, expected, decoded = losses(batch)
  assert sorted(params) == ['latent_scale', 'unet'] and float(params['latent_scale']) == 1.0
  assert stage.latent_size() == (16, 16)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  np.testing.assert_array_equal(decoded, clip)


def test_pixel_space_needs_matching_unet_channels():
  with pytest.raises(ValueError, match='in_channels and out_channels 12'):
    latents.make_autoencoder(pixel_config(unet_channels=4))
