"""The latent cache: written once by `videoldm.cache`, read by the pipeline and the stage's loss.

Uses the tiny Stable-Diffusion-to-video run (tests/sd_video_helpers.py): its
frozen VAE and CLIP encode captioned moving digits.
"""

import json
import os

import jax
import numpy as np
import pytest

from videoldm import cache
from videoldm import config_utils
from videoldm.data import latent_cache
from videoldm.data import pipeline


@pytest.fixture(scope='module')
def written(sd_run, tmp_path_factory):
  out = str(tmp_path_factory.mktemp('cache') / 'c')
  count = cache.write_cache(sd_run.config, out, batch_size=2, dtype='float32')
  return out, count


def test_a_step_from_the_cache_has_the_loss_of_the_step_from_pixels(sd_run, sd_model, written):
  out, count = written
  config = sd_run.config
  stage, params = sd_model.stage, sd_model.params
  pixels = pipeline.make_dataset(config.data, config.data.split, 2, seed=0, shuffle=False,
                                 num_epochs=1, tokenize_fn=stage.tokenize)
  cached_config = config_utils.override(config, **{'data.cache_dir': out})
  cached = pipeline.make_dataset(cached_config.data, config.data.split, 2, seed=0,
                                 shuffle=False, num_epochs=1, tokenize_fn=stage.tokenize)
  loss = jax.jit(lambda batch, key: stage.loss_fn(params, stage.preprocess(batch), key, 0)[0])
  as_arrays = lambda batch: {k: v for k, v in batch.items() if v.dtype != object}
  for step in range(2):
    pixel_batch, cached_batch = next(pixels), next(cached)
    assert 'video' not in cached_batch and cached_batch['latent_mean'].shape[1] == 4
    assert list(cached_batch['caption_text']) == list(pixel_batch['caption_text'])
    key = jax.random.key(step)  # The same posterior noise, timesteps and caption dropout.
    np.testing.assert_allclose(loss(as_arrays(cached_batch), key),
                               loss(as_arrays(pixel_batch), key), rtol=2e-5)
  metadata = latent_cache.read_metadata(out)
  assert metadata['records'] == [count] and count % 2 == 0 and count > 0
  assert metadata['split'] == config.data.split


def test_a_cache_of_other_settings_or_an_existing_output_is_refused(sd_run, written, tmp_path):
  out, _ = written
  other = config_utils.override(sd_run.config, **{'data.cache_dir': out, 'data.num_frames': 2})
  with pytest.raises(ValueError, match=f'^Cache {out!r} was written with other settings: '
                     r'data.num_frames 4 -> 2;'):
    pipeline.make_dataset(other.data, other.data.split, 2, seed=0)
  with pytest.raises(FileExistsError, match=f'Output {out!r} already exists'):
    cache.write_cache(sd_run.config, out)
  (tmp_path / 'c').mkdir()
  (tmp_path / 'c' / latent_cache.METADATA).write_text(json.dumps({'format': 0}))
  with pytest.raises(ValueError, match='has format 0; this version reads format 1'):
    latent_cache.read_metadata(str(tmp_path / 'c'))
  trains_vae = config_utils.override(sd_run.config, trainable='autoencoder')
  with pytest.raises(ValueError, match="trainable='autoencoder' trains 'autoencoder/"):
    cache.write_cache(trains_vae, str(tmp_path / 'v'))
  assert not os.listdir(tmp_path / 'v')
