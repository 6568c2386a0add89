"""`transfer_temporal`: spatial params from the image checkpoint, temporal from the video model."""

import flax
import jax
import numpy as np
import pytest

from videoldm import convert
from videoldm.convert import diffusers as unet_convert
from videoldm.models import params as params_lib
from videoldm.models import video_unet


def _random_tree(shapes, seed):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)


def _flat(tree):
  return flax.traverse_util.flatten_dict(tree, sep='/')


def _image_config(config):
  image = config.copy_and_resolve_references()
  del image['temporal']
  return image


@pytest.fixture(scope='module')
def trees():
  config = video_unet.video_unet_config('tiny')
  config.temporal.text_context = True
  video = dict(unet=_random_tree(params_lib.param_shapes(config), 0),
               latent_scale=np.float32(0.2))
  image = dict(unet=_random_tree(unet_convert.unet_param_shapes(_image_config(config)), 1),
               latent_scale=np.float32(0.3))
  return config, video, image


def test_spatial_from_image_and_temporal_from_video_bit_identical(trees):
  _, video, image = trees
  merged = _flat(convert.transfer_temporal(video, image))
  flat_video, flat_image = _flat(video), _flat(image)
  assert set(merged) == set(flat_video)
  temporal = [p for p in merged if params_lib.is_temporal(p)]
  assert len(temporal) > 10 and len(flat_image) == len(merged) - len(temporal)
  for path, value in merged.items():
    source = flat_video if params_lib.is_temporal(path) else flat_image
    np.testing.assert_array_equal(value, source[path])
    assert np.asarray(value).dtype == np.asarray(source[path]).dtype


def test_temporal_params_of_the_image_checkpoint_are_ignored(trees):
  _, video, image = trees
  other_video = jax.tree.map(lambda x: x + 1.0, video)  # A video checkpoint as "image".
  merged = _flat(convert.transfer_temporal(video, other_video))
  for path, value in merged.items():
    expected = _flat(video if params_lib.is_temporal(path) else other_video)[path]
    np.testing.assert_array_equal(value, expected)


def test_mismatched_architecture_names_first_differing_param(trees):
  config, video, _ = trees
  wider = _image_config(config)
  wider.block_out_channels = (32, 96)
  wider.num_attention_heads = (2, 4)
  image = dict(unet=_random_tree(unet_convert.unet_param_shapes(wider), 2),
               latent_scale=np.float32(0.3))
  flat_video, flat_image = _flat(video), _flat(image)
  first = next(p for p in sorted(flat_image) if p in flat_video
               and np.shape(flat_image[p]) != np.shape(flat_video[p]))
  with pytest.raises(ValueError, match=f"Parameter '{first}' has shape"):
    convert.transfer_temporal(video, image)


def test_missing_and_unexpected_params_are_named(trees):
  _, video, image = trees
  flat = _flat(image)
  missing = sorted(flat)[3]
  del flat[missing]
  with pytest.raises(ValueError, match=f"Spatial parameter '{missing}' of the video model is "
                                       'missing'):
    convert.transfer_temporal(video, flax.traverse_util.unflatten_dict(flat, sep='/'))
  extra = dict(image, unet=dict(image['unet'], conv_extra=dict(kernel=np.zeros(3))))
  with pytest.raises(ValueError, match="'unet/conv_extra/kernel' of the image checkpoint has no"):
    convert.transfer_temporal(video, extra)
  with pytest.raises(ValueError, match="'latent_scale' has shape"):
    convert.transfer_temporal(video, dict(image, latent_scale=np.zeros(2, np.float32)))
