"""The x4 latent video upsampler from Stable Diffusion's x4 upscaler (stage `text_upsampler`).

Parity of its spatial path and its Eq. 5 noise augmentation with diffusers' upscaler
modules (the tiny random upscaler folder of `videoldm.convert.tiny_sd`), and tiled
sampling against whole-frame sampling.
"""

import os

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from videoldm import config_utils
from videoldm import stages
from videoldm.convert import temporal_transfer
from videoldm.convert import tiny_sd
from videoldm.diffusion import sampling
import diffusers_reference as ref
import sd_video_helpers


def upsampler_stage(**overrides):
  arg = f'runlocal,stage=text_upsampler,upscaler_path={sd_video_helpers.tiny_upscaler()}'
  config = config_utils.load_config(
      os.path.join(sd_video_helpers.REPO, 'configs', f'sd_video.py:{arg}'))
  config = config_utils.override(config, **overrides)
  return stages.get_stage('text_upsampler')(config)


@pytest.fixture(scope='module')
def spatial_only():
  """The stage with the upscaler's weights and temporal layers merged away (alpha = 1)."""
  stage = upsampler_stage(**{'model.unet.temporal.merge_strategy': 'fixed',
                             'model.unet.temporal.alpha': 1.0})
  batch = dict(video=jnp.zeros((1, 2, 32, 32, 3)), caption=jnp.zeros((1, 12), jnp.int32))
  params = stage.init_params(jax.random.key(0), batch)
  spatial = temporal_transfer.spatial_params_from_sd(sd_video_helpers.tiny_upscaler())
  return stage, temporal_transfer.transfer_temporal(params, spatial)


def test_config_reads_the_upscaler_folder(spatial_only):
  stage, _ = spatial_only
  unet = stage.config.model.unet
  assert unet.in_channels == 7 and unet.num_class_embeds == 1000
  assert tuple(unet.only_cross_attention) == (True, True, False)
  assert stage.autoencoder.config.downsampling_factor == 4
  assert stage.config.diffusion.prediction_type == 'v'
  assert stage.config.stage == 'text_upsampler'


def test_spatial_path_matches_the_diffusers_upscaler(spatial_only):
  """Latents first, then the low-res RGB; the noise level as class label; text cross-attended."""
  stage, params = spatial_only
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 1, 8, 8, 4)).astype(np.float32)
  low = rng.standard_normal((2, 1, 8, 8, 3)).astype(np.float32)
  text = rng.standard_normal((2, 5, 32)).astype(np.float32)
  t, level = np.array([10, 900]), np.array([0, 349])
  ours = stage.apply_unet(params, x, t, text, low, level)
  torch_unet = diffusers.UNet2DConditionModel.from_pretrained(
      os.path.join(sd_video_helpers.tiny_upscaler(), 'unet')).eval()
  with torch.no_grad():
    theirs = torch_unet(ref.nchw(np.concatenate([x, low], -1)[:, 0]), torch.from_numpy(t),
                        torch.from_numpy(text), class_labels=torch.from_numpy(level)).sample
  assert ref.relative_error(ours[:, 0], ref.nhwc(theirs)) < 1e-4


def test_noise_augmentation_is_the_upscalers_low_res_scheduler(spatial_only):
  stage, _ = spatial_only
  low = np.random.default_rng(1).uniform(-1, 1, (3, 2, 8, 8, 3)).astype(np.float32)
  key = jax.random.key(3)
  levels = np.array([0, 20, 350])
  ours = [stage.augment(low[i:i + 1], key, int(level))[0] for i, level in enumerate(levels)]
  noise = [np.asarray(jax.random.normal(key, low[:1].shape)) for _ in levels]
  scheduler = diffusers.DDPMScheduler.from_config(tiny_sd.UPSCALER_LOW_RES_SCHEDULER)
  for i, level in enumerate(levels):
    theirs = scheduler.add_noise(torch.from_numpy(low[i:i + 1]), torch.from_numpy(noise[i]),
                                 torch.tensor([level]))
    np.testing.assert_allclose(ours[i], theirs.numpy(), rtol=1e-5, atol=1e-5)


def test_training_draws_levels_up_to_the_maximum(spatial_only):
  stage, params = spatial_only
  batch = dict(video=jax.random.uniform(jax.random.key(0), (4, 2, 32, 32, 3), minval=-1),
               caption=jnp.asarray(stage.tokenize(['a 3'] * 4)))
  loss, metrics = jax.jit(stage.loss_fn)(params, batch, jax.random.key(1), 0)
  assert np.isfinite(loss) and 0 <= metrics['noise_level'] <= stage.options.max_noise_level


def upsample(stage, params, low, tile, overlap):
  options = sampling.SamplingOptions(num_steps=2, guidance_scale=3.0)
  ids = jnp.asarray(stage.tokenize(['a 3 moving'] * low.shape[0]))
  stage.options.unlock()
  stage.options.update(tile=tile, tile_overlap=overlap)
  return jax.jit(lambda p, x: stage.upsample(p, x, jax.random.key(5), options, ids))(params, low)


@pytest.fixture(scope='module')
def whole_frame(spatial_only):
  """(low-res frames, their untiled x4 sample)."""
  stage, params = spatial_only
  low = jax.random.uniform(jax.random.key(4), (1, 1, 16, 16, 3), minval=-1)
  return low, upsample(stage, params, low, (0, 0), 0)


def test_tiled_upsampling_equals_untiled_when_one_tile_covers_the_frame(spatial_only,
                                                                        whole_frame):
  stage, params = spatial_only
  low, whole = whole_frame
  assert whole.shape == (1, 1, 64, 64, 3)
  assert np.array_equal(upsample(stage, params, low, (16, 16), 4), whole)



def test_blended_tiles_stay_closer_to_the_whole_frame_than_hard_seams(spatial_only,
                                                                      whole_frame):
  """Random weights (no learned locality) are the worst case: every U-Net output sees the
  whole tile. Tiles overlapping by 8 of 12 latent pixels stay within 0.15 mean absolute
  difference (outputs in [-1, 1]) of whole-frame sampling, closer than abutting tiles."""
  stage, params = spatial_only
  low, whole = whole_frame
  error = lambda tile, overlap: float(jnp.mean(jnp.abs(
      upsample(stage, params, low, tile, overlap) - whole)))
  blended, abutting = error((12, 12), 8), error((8, 8), 0)
  assert 0 < blended < 0.15 and blended < abutting, (blended, abutting)
