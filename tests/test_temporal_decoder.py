"""Temporal decoder (paper Sec. 3.1.1): image-decoder identity, param loading, frame mixing."""

import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videoldm.models import autoencoder as autoencoder_lib
from videoldm.models import params as params_lib
from videoldm.models import temporal_decoder
from videoldm.train import checkpointing

TEMPORAL = params_lib.TEMPORAL_PATTERN
CONFIG = autoencoder_lib.autoencoder_config('tiny', block_out_channels=(16, 32),
                                            norm_num_groups=8, sample_size=16)
FRAMES = 3
# Random init compiles ~4x faster with this PRNG than with threefry on CPU.
_INIT_KEY = jax.random.key(0, impl='unsafe_rbg')


def _flat(tree):
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep='/')


def _unflat(flat):
  return flax.traverse_util.unflatten_dict(flat, sep='/')


def _randomize_temporal(params, seed=0, scale=0.2):
  """Non-zero random values for every temporal param (spatial ones untouched)."""
  rng = np.random.default_rng(seed)
  flat = _flat(params)
  for path, value in sorted(flat.items()):
    if re.search(TEMPORAL, path):
      flat[path] = (scale * rng.standard_normal(value.shape)).astype(np.float32)
  return _unflat(flat)


def _random_params_like(model, spatial_params, seed):
  """Params of `model` (shapes via eval_shape): given spatial leaves, random temporal ones."""
  shapes = jax.eval_shape(lambda x: model.init(_INIT_KEY, x, num_frames=FRAMES),
                          jnp.zeros((FRAMES, 16, 16, 3)))['params']
  spatial = {path: value for path, value in _flat(spatial_params).items()
             if not re.search(TEMPORAL, path)}
  flat = {path: spatial.get(path, np.zeros(leaf.shape, np.float32))
          for path, leaf in _flat(shapes).items()}
  return _randomize_temporal(_unflat(flat), seed)


def _model(**temporal_fields):
  return temporal_decoder.TemporalAutoencoderKL(
      CONFIG, temporal=temporal_decoder.TemporalDecoderConfig(**temporal_fields))


def _init(model):
  init = jax.jit(lambda key, x: model.init(key, x, num_frames=FRAMES))
  return init(_INIT_KEY, jnp.zeros((FRAMES, 16, 16, 3)))['params']


@pytest.fixture(scope='module')
def image_model():
  model = autoencoder_lib.AutoencoderKL(CONFIG)
  images = jnp.zeros((1, 16, 16, 3))
  params = jax.jit(model.init)(_INIT_KEY, images)['params']
  decode = jax.jit(lambda p, z: model.apply({'params': p}, z, method=model.decode))
  return params, decode


@pytest.fixture(scope='module')
def loaded_params(image_model):
  """Temporal AE params with the image params loaded through the trainer's init_from merge."""
  image_params, _ = image_model
  fresh = _init(_model())
  merged, kept = checkpointing.merge_init_params(
      jax.device_get(fresh), {k: np.asarray(v) for k, v in _flat(image_params).items()},
      exempt=[TEMPORAL])
  return fresh, merged, kept


@pytest.fixture(scope='module')
def latents():
  return jax.random.normal(jax.random.key(2), (2 * FRAMES, 8, 8, 4))  # (b f) h w c


def _decode(model, params, z, num_frames, indicator=None):
  fn = jax.jit(lambda p, z, i: model.apply({'params': p}, z, num_frames, i, method=model.decode))
  return fn(params, z, indicator)


def test_image_params_load_unchanged_and_regex_selects_exactly_the_new_params(
    image_model, loaded_params):
  image_params, _ = image_model
  fresh, merged, kept = loaded_params
  flat_image, flat_merged = _flat(image_params), _flat(merged)
  new_paths = set(flat_merged) - set(flat_image)
  assert set(flat_image) <= set(flat_merged)
  assert new_paths and sorted(kept) == sorted(new_paths)
  assert all(re.search(TEMPORAL, path) for path in new_paths)
  assert not any(re.search(TEMPORAL, path) for path in flat_image)
  for path, value in flat_image.items():
    np.testing.assert_array_equal(np.asarray(flat_merged[path]), np.asarray(value), err_msg=path)
  # The encoder has no temporal layers.
  assert not any(path.startswith('encoder/') for path in new_paths)
  assert len(_flat(fresh)) == len(flat_merged)


def test_fresh_temporal_decoder_equals_image_decoder_frame_by_frame(image_model, loaded_params,
                                                                    latents):
  image_params, image_decode = image_model
  _, merged, _ = loaded_params
  expected = image_decode(image_params, latents)
  got = _decode(_model(), merged, latents, FRAMES)
  assert got.shape == expected.shape == (2 * FRAMES, 16, 16, 3)
  assert float(jnp.max(jnp.abs(got - expected))) < 1e-5


@pytest.mark.parametrize('case', ['image_only_indicator', 'fixed_alpha_1'])
def test_random_temporal_weights_are_skipped_for_images(image_model, loaded_params, latents,
                                                        case):
  image_params, image_decode = image_model
  params = _randomize_temporal(loaded_params[1])
  expected = image_decode(image_params, latents)
  if case == 'image_only_indicator':
    model = _model(merge_strategy='learned_with_images')
    video_out = _decode(model, params, latents, FRAMES)
    assert float(jnp.max(jnp.abs(video_out - expected))) > 1e-3  # The weights do act on videos.
    got = _decode(model, params, latents, FRAMES, jnp.ones((2, FRAMES), bool))
  else:
    got = _decode(_model(merge_strategy='fixed', alpha=1.0), params, latents, FRAMES)
  assert float(jnp.max(jnp.abs(got - expected))) < 1e-5


def test_frames_influence_each_other_only_within_their_video(loaded_params, latents):
  model = _model(kernel_size=(3, 3, 3))
  params = _random_params_like(model, loaded_params[1], seed=3)
  base = _decode(model, params, latents, FRAMES)
  perturbed = latents.at[0].add(1.0)  # Frame 0 of video 0.
  out = _decode(model, params, perturbed, FRAMES)
  change = jnp.max(jnp.abs(out - base), axis=(1, 2, 3))  # per frame
  assert float(change[1]) > 1e-3 and float(change[2]) > 1e-4  # Later frames of video 0.
  np.testing.assert_array_equal(np.asarray(out[FRAMES:]), np.asarray(base[FRAMES:]))


@pytest.mark.parametrize('num_frames', [1, 2, 5])
def test_shapes_for_any_frame_count(loaded_params, num_frames):
  model = _model()
  params = _randomize_temporal(loaded_params[1])
  z = jax.random.normal(jax.random.key(num_frames), (2, num_frames, 8, 8, 4))
  video = jax.jit(lambda p, z: model.apply({'params': p}, z, method=model.decode_video))(params, z)
  assert video.shape == (2, num_frames, 16, 16, 3)
  assert bool(jnp.all(jnp.isfinite(video)))


def test_batch_not_divisible_by_num_frames_names_both_numbers(loaded_params, latents):
  model = _model()
  with pytest.raises(ValueError, match=r'\b6 frames\b.*num_frames=4\b'):
    model.apply({'params': loaded_params[1]}, latents, 4, method=model.decode)


def test_bad_temporal_config_is_a_clear_error():
  with pytest.raises(ValueError, match=r'kernel_size=\(2, 1, 1\)'):
    temporal_decoder.TemporalDecoderConfig(kernel_size=(2, 1, 1))
  with pytest.raises(ValueError, match="merge_strategy 'mean'"):
    temporal_decoder.TemporalDecoderConfig(merge_strategy='mean')
  with pytest.raises(ValueError, match='passed by keyword'):
    temporal_decoder.TemporalAutoencoderKL(
        CONFIG, temporal_decoder.TemporalDecoderConfig()).init(
            _INIT_KEY, jnp.zeros((1, 16, 16, 3)), num_frames=1)
