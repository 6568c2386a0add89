"""Joint image-video training (`model.joint`): images bypass the temporal layers exactly."""

import dataclasses
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videoldm import checkpoints
from videoldm import config_utils
from videoldm import stages
from videoldm.models import params as params_lib
from videoldm.models import unet as unet_lib
from videoldm.stages import denoising
from videoldm.stages import latents

from stage_helpers import CONFIG
from stage_helpers import random_params

B, F = 4, 3  # Videos per batch, frames per video.


def make_stage(**overrides):
  config = config_utils.load_config(f'{CONFIG}:stage=video,runlocal')
  return stages.get_stage('video')(config_utils.override(config, **overrides))


@pytest.fixture(scope='module')
def video():
  """(stage, random params, a batch of B random 32x32 clips of F frames)."""
  stage = make_stage()
  size = stage.config.data.image_size
  batch = dict(video=jax.random.uniform(jax.random.key(1), (B, F, size, size, 3), minval=-1),
               labels=jnp.arange(2 * B, dtype=jnp.int32).reshape(B, 2) % 10)
  return stage, random_params(stage, batch, seed=3), batch


def with_joint(stage, **joint):
  """`stage` with `model.joint` fields overridden (same models, so the same params)."""
  return make_stage(**{f'model.joint.{key}': value for key, value in joint.items()})


def unet_grads(stage, params, batch, rng=jax.random.key(7)):
  """Flat '/'-joined gradients of the loss w.r.t. every U-Net param (spatial ones too)."""
  loss = lambda unet: stage.loss_fn(dict(params, unet=unet), batch, rng, 0)[0]
  grads = jax.jit(jax.grad(loss))(params['unet'])
  return flax.traverse_util.flatten_dict(grads, sep='/')


def split(grads):
  temporal = {k: v for k, v in grads.items() if re.search(params_lib.TEMPORAL_PATTERN, k)}
  spatial = {k: v for k, v in grads.items() if k not in temporal}
  assert temporal and spatial
  return temporal, spatial


def test_images_give_the_temporal_params_exactly_zero_gradient(video):
  stage, params, batch = video
  temporal, spatial = split(unet_grads(with_joint(stage, image_fraction=1.0), params, batch))
  nonzero = sorted(k for k, v in temporal.items() if np.any(np.asarray(v) != 0))
  assert not nonzero, f'Image examples reach temporal params: {nonzero[:5]}'
  # Spatial params (when trainable) still learn from the images, every one of them.
  frozen = sorted(k for k, v in spatial.items() if not np.any(np.asarray(v) != 0))
  assert not frozen, f'Spatial params without gradient: {frozen[:5]}'


def test_videos_train_every_temporal_param(video):
  stage, params, batch = video
  temporal, _ = split(unet_grads(stage, params, batch))  # image_fraction 0: all video.
  zero = sorted(k for k, v in temporal.items() if not np.any(np.asarray(v) != 0))
  assert not zero, f'Temporal params without gradient from videos: {zero[:5]}'


def test_mixed_batch_temporal_gradients_come_from_the_videos_only(video):
  stage, params, batch = video
  base = unet_grads(with_joint(stage, image_fraction=0.5), params, batch)
  heavier = unet_grads(with_joint(stage, image_fraction=0.5, image_weight=3.0), params, batch)
  temporal, spatial = split(base)
  temporal_heavier, spatial_heavier = split(heavier)
  for key, value in temporal.items():  # The image term adds exact zeros.
    np.testing.assert_allclose(temporal_heavier[key], value, rtol=1e-5, atol=1e-9, err_msg=key)
  assert any(np.any(np.asarray(v) != 0) for v in temporal.values())
  changed = [k for k in spatial if not np.allclose(spatial[k], spatial_heavier[k], rtol=1e-3)]
  assert len(changed) > len(spatial) // 2  # ... while the image weight moves the spatial ones.


def test_mixed_loss_is_the_weighted_image_and_video_losses(video):
  stage, params, batch = video
  joint = with_joint(stage, image_fraction=0.5, image_weight=0.3, video_weight=1.7)
  rng = jax.random.key(11)
  loss, metrics = joint.loss_fn(params, batch, rng, 0)
  # The same keys and noise as `loss_fn`, each half through its own U-Net call.
  enc_key, noise_key, drop_key, mask_key = jax.random.split(rng, 4)
  z0 = latents.batch_latents(joint.autoencoder, params, batch, enc_key)
  labels = denoising.drop_labels(drop_key, denoising.class_labels(batch),
                                 joint.config.model.label_dropout,
                                 unet_lib.null_class_label(joint.config.model.unet))
  mask = joint.context_mask(mask_key, B, F)
  noised = denoising.add_noise(joint.schedule, z0, noise_key)

  def half_loss(part, **kwargs):
    sub = denoising.Noised(**{field.name: getattr(noised, field.name)[part]
                              for field in dataclasses.fields(noised)})
    prediction = joint.apply_unet(params, sub.x_t, sub.t, labels[part], z0[part], mask[part],
                                  **kwargs)
    return denoising.denoising_loss(joint.config, joint.schedule, prediction, z0[part], sub)

  images, videos = slice(0, B // 2), slice(B // 2, B)
  image_loss = half_loss(images, image_only_indicator=jnp.ones((B // 2, F), bool))
  video_loss = half_loss(videos)
  np.testing.assert_allclose(loss, 0.3 * image_loss + 1.7 * video_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics['image_loss'], image_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics['video_loss'], video_loss, rtol=1e-5)
  # The identity tells the two apart: the image half with its temporal layers on differs.
  assert abs(float(half_loss(images)) - float(image_loss)) > 1e-4 * float(image_loss)


def previous_loss_fn(stage, params, batch, rng):
  """The video stage's loss before joint training, verbatim."""
  enc_key, noise_key, drop_key, mask_key = jax.random.split(rng, 4)
  z0 = latents.batch_latents(stage.autoencoder, params, batch, enc_key)
  b, f = z0.shape[:2]
  labels = denoising.drop_labels(drop_key, denoising.class_labels(batch),
                                 stage.config.model.label_dropout,
                                 unet_lib.null_class_label(stage.config.model.unet))
  mask = stage.context_mask(mask_key, b, f)
  noised = denoising.add_noise(stage.schedule, z0, noise_key)
  prediction = stage.apply_unet(params, noised.x_t, noised.t, labels, z0, mask)
  loss = denoising.denoising_loss(stage.config, stage.schedule, prediction, z0, noised)
  return loss, {'context_frames': jnp.mean(jnp.sum(mask, axis=1))}


def test_no_images_is_bit_identical_to_the_video_only_loss(video):
  stage, params, batch = video
  assert stage.config.model.joint.to_dict() == denoising.joint_config().to_dict()
  assert stage.config.model.joint.image_fraction == 0.0  # The default: video only.
  rng = jax.random.key(5)
  old = jax.jit(lambda p, b: previous_loss_fn(stage, p, b, rng))(params, batch)
  new = jax.jit(lambda p, b: stage.loss_fn(p, b, rng, 0))(params, batch)
  assert np.asarray(new[0]) == np.asarray(old[0])
  assert sorted(new[1]) == ['context_frames']
  weighted = with_joint(stage, video_weight=2.5)
  loss = jax.jit(lambda p, b: weighted.loss_fn(p, b, rng, 0)[0])(params, batch)
  np.testing.assert_allclose(loss, 2.5 * old[0], rtol=1e-6)


def test_joint_training_needs_the_learned_with_images_merge():
  with pytest.raises(ValueError, match="merge_strategy='learned_with_images'.*got 'learned'"):
    make_stage(**{'model.joint.image_fraction': 0.25,
                  'model.unet.temporal.merge_strategy': 'learned'})
  make_stage(**{'model.unet.temporal.merge_strategy': 'learned'})  # Video only: allowed.
  with pytest.raises(ValueError, match=r'image_fraction=1.5 must lie in \[0, 1\]'):
    make_stage(**{'model.joint.image_fraction': 1.5})
  with pytest.raises(ValueError, match='must both be non-negative'):
    make_stage(**{'model.joint.image_weight': -1.0})


def test_image_examples_are_the_leading_batch_positions():
  config = config_utils.load_config(f'{CONFIG}:stage=video,runlocal')
  config = config_utils.override(config, **{'model.joint.image_fraction': 0.25})
  assert [denoising.num_image_examples(config, b) for b in (4, 8, 16)] == [1, 2, 4]
  np.testing.assert_array_equal(denoising.image_indicator(2, 4, 3),
                                [[True] * 3, [True] * 3, [False] * 3, [False] * 3])


def test_configs_saved_before_joint_training_load_as_video_only():
  config = config_utils.load_config(f'{CONFIG}:stage=video,runlocal')
  saved = checkpoints.config_to_json_dict(config)
  del saved['model']['joint']
  upgraded = checkpoints.upgrade_config(saved)
  assert upgraded.model.joint.to_dict() == denoising.joint_config().to_dict()


def test_text_video_images_bypass_the_temporal_params():
  from memory_model_helpers import tiny_text_config  # pylint: disable=g-import-not-at-top
  config = tiny_text_config(batch=2, frames=2, latent=(8, 8),
                            **{'model.joint.image_fraction': 0.5, 'model.caption_dropout': 0.0})
  stage = stages.get_stage('text_video')(config)
  h, w = stage.latent_size()
  keys = jax.random.split(jax.random.key(2), 2)
  batch = dict(latent_mean=jax.random.normal(keys[0], (2, 2, h, w, 4)),
               latent_logvar=jnp.full((2, 2, h, w, 4), -4.0),
               text_context=jax.random.normal(keys[1], (2, stage.text_length, 32)))
  params = random_params(stage, batch)
  _, metrics = jax.eval_shape(stage.loss_fn, params, batch, jax.random.key(3), 0)
  assert sorted(metrics) == ['captions_dropped', 'context_frames', 'image_loss', 'video_loss']
  only_images = stages.get_stage('text_video')(
      config_utils.override(config, **{'model.joint.image_fraction': 1.0}))
  temporal, spatial = split(unet_grads(only_images, params, batch))
  assert not [k for k, v in temporal.items() if np.any(np.asarray(v) != 0)]
  assert all(np.any(np.asarray(v) != 0) for v in spatial.values())
