"""Latent calibration: centring folded into the autoencoder leaves decoding exactly unchanged."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videoldm.models import autoencoder as autoencoder_lib
from videoldm.stages import latents


@pytest.fixture(scope='module')
def setup():
  config = autoencoder_lib.AutoencoderConfig(block_out_channels=(16, 32), layers_per_block=1,
                                             norm_num_groups=8, sample_size=16)
  model = autoencoder_lib.AutoencoderKL(config)
  video = jax.random.uniform(jax.random.key(1), (3, 2, 16, 16, 3), minval=-1, maxval=1)
  params = dict(autoencoder=model.init(jax.random.key(0), video[0])['params'],
                latent_scale=jnp.ones(()))
  # Give the latents clear per-channel offsets, as a short-trained autoencoder has.
  bias = params['autoencoder']['quant_conv']['bias']
  params['autoencoder']['quant_conv']['bias'] = bias.at[:4].add(jnp.array([2., -1., .5, -3.]))
  return model, params, video


def _moments(model, params, video):
  posterior = model.apply({'params': params['autoencoder']}, latents.frames_of(video),
                          method=model.encode)
  return posterior.mean, posterior.logvar


def test_centred_latents_have_zero_channel_means_and_unit_std(setup):
  model, params, video = setup
  before = latents.encode_video(model, params, video, None)
  assert np.max(np.abs(np.mean(before, axis=(0, 1, 2, 3)))) > 0.5
  calibrated = latents.calibrate_latents(model, params, video, centre=True)
  after = latents.encode_video(model, calibrated, video, None)
  np.testing.assert_allclose(np.mean(after, axis=(0, 1, 2, 3)), 0.0, atol=1e-5)
  np.testing.assert_allclose(float(np.std(after)), 1.0, rtol=1e-5)
  # Same latents up to the per-channel shift: the posterior means moved, the log-variances not.
  mean0, logvar0 = _moments(model, params, video)
  mean1, logvar1 = _moments(model, calibrated, video)
  np.testing.assert_allclose(mean0 - mean1, np.broadcast_to(
      np.mean(mean0, axis=(0, 1, 2)), mean0.shape), atol=1e-5)
  np.testing.assert_array_equal(logvar0, logvar1)


def test_decoding_the_centred_latents_gives_the_same_frames(setup):
  model, params, video = setup
  calibrated = latents.calibrate_latents(model, params, video, centre=True)
  old = latents.decode_latents(model, params, latents.encode_video(model, params, video, None))
  new = latents.decode_latents(model, calibrated,
                              latents.encode_video(model, calibrated, video, None))
  np.testing.assert_allclose(new, old, rtol=1e-4, atol=1e-5)


def test_without_centring_only_the_scale_changes(setup):
  model, params, video = setup
  calibrated = latents.calibrate_latents(model, params, video, centre=False)
  assert calibrated['autoencoder'] is params['autoencoder']
  unscaled = latents.encode_video(model, params, video, None)
  np.testing.assert_allclose(float(calibrated['latent_scale']), 1 / float(np.std(unscaled)),
                             rtol=1e-5)


def test_centring_needs_the_quant_convs(setup):
  _, params, _ = setup
  ae_params = {k: v for k, v in params['autoencoder'].items() if k != 'post_quant_conv'}
  with pytest.raises(ValueError, match='centre_latents needs an autoencoder with quant_conv'):
    latents.centred_autoencoder(ae_params, jnp.zeros((4,)))
