"""The whole text stack (paper Sec. 4.2): trained in one run folder by `chain.train_all`,
sampled with interpolation, the SD temporal decoder and the x4 latent upsampler.

Uses `sd_video_helpers.tiny_chain_run()`: the tiny key-frame and interpolation runs plus
`text_decoder` and `text_upsampler`, on tiny random SD and x4-upscaler folders; the
interpolation stage (Sec. 3.3 with text) is trained from the key-frame run.
"""

import itertools
import os

import imageio.v3 as iio
import jax
import numpy as np
import pytest

from videoldm import checkpoints
from videoldm import config_utils
from videoldm import stages
from videoldm.convert import temporal_transfer
from videoldm.models import params as params_lib
from videoldm.pipelines import generate
from videoldm.pipelines import loading
from videoldm.pipelines import video_ldm
from videoldm.stages import interpolation
from videoldm.stages import text_image
from videoldm.train import chain
from videoldm.train import checkpointing
from videoldm.train import trainer
import sd_video_helpers

PROMPTS = ('a 3 moving left',)
CONFIG_FILE = os.path.join(sd_video_helpers.REPO, 'configs', 'sd_video.py')


@pytest.fixture(scope='module')
def run_dir():
  return sd_video_helpers.tiny_chain_run()


@pytest.fixture(scope='module')
def models(run_dir):
  """Every stage of the run, with inference params."""
  return loading.load_run(run_dir, required=('video', 'interpolation', 'decoder', 'upsampler'))


def test_only_temporal_params_change_from_the_key_frame_run(models):
  video, interp = (checkpoints.flat_params(models[name].params)
                   for name in ('video', 'interpolation'))
  changed = [path for path in video if not np.array_equal(video[path], interp[path])]
  assert changed and all(params_lib.is_temporal(path) for path in changed), changed[:3]
  new = sorted(set(interp) - set(video))
  assert new and all('regime' in path for path in new), new  # The regime inputs only.


def test_text_mode_interpolates_and_keeps_every_key_frame(models):
  settings = video_ldm.Settings(prompts=('a 3', 'a 7 moving'), num_frames=9,
                                interpolation_passes=1, window_frames=4, num_steps=2, seed=1)
  pipe = video_ldm.VideoLDM({k: models[k] for k in ('video', 'interpolation')}, settings)
  key = jax.random.key(0)
  dense = list(pipe.latents(key))
  assert len(dense) == 9 and dense[0].shape[0] == 2
  key_key, _ = jax.random.split(key)
  keys = list(itertools.islice(pipe.key_frame_latents(key_key), 3))
  for i, frame in enumerate(keys):  # T -> 4T keeps the key frames exactly.
    np.testing.assert_array_equal(dense[i * interpolation.UPSAMPLING], frame)
  assert np.max(np.abs(np.asarray(dense[1]) - np.asarray(dense[0]))) > 1e-4  # New frames.


def test_text_interpolation_needs_regime_and_context_frames(models):
  config = config_utils.override(models['interpolation'].stage.config,
                                 **{'model.unet.temporal.regime_conditioning': False})
  with pytest.raises(ValueError, match='needs model.unet.temporal.regime_conditioning=True'):
    type(models['interpolation'].stage)(config)


def test_the_safetensors_export_holds_every_text_stage(run_dir, models, tmp_path):
  from videoldm import export  # pylint: disable=g-import-not-at-top
  from videoldm.pipelines import exported  # pylint: disable=g-import-not-at-top
  out = export.export(run_dir, 'safetensors', str(tmp_path / 'x'))
  loaded = exported.load_exported(out, tuple(models), required=tuple(models))
  for name, model in models.items():
    assert type(loaded[name].stage) is type(model.stage)
    want, got = (checkpoints.flat_params(m.params) for m in (model, loaded[name]))
    assert sorted(got) == sorted(want)
    for path, value in want.items():
      np.testing.assert_array_equal(got[path], value, err_msg=path)


def assert_only_temporal_changed(trained: dict, source: dict, prefix: str) -> None:
  spatial = {path: value for path, value in source.items() if path.startswith(prefix)}
  assert spatial
  for path, value in spatial.items():
    assert np.array_equal(trained[path], value), path
  new = [path for path in trained if path.startswith(prefix) and path not in spatial]
  assert new and all(params_lib.is_temporal(path) for path in new), new[:3]


def test_decoder_adds_temporal_layers_to_the_frozen_sd_vae(run_dir):
  decoder = loading.load_stage(os.path.join(run_dir, 'decoder'))
  assert decoder.stage.config.stage == 'text_decoder'
  sd = checkpoints.flat_params(temporal_transfer.spatial_params_from_sd(
      sd_video_helpers.tiny_run().sd_path))
  assert_only_temporal_changed(checkpoints.flat_params(decoder.params), sd, 'autoencoder/')


def test_upsampler_adds_temporal_layers_to_the_frozen_upscaler(run_dir):
  upsampler = loading.load_stage(os.path.join(run_dir, 'upsampler'))
  assert upsampler.stage.config.stage == 'text_upsampler'
  upscaler = checkpoints.flat_params(temporal_transfer.spatial_params_from_sd(
      sd_video_helpers.tiny_upscaler()))
  trained = checkpoints.flat_params(upsampler.params)
  for prefix in ('unet/', 'autoencoder/', 'text_encoder/'):
    source = {p: v for p, v in upscaler.items() if p.startswith(prefix)}
    assert all(np.array_equal(trained[p], v) for p, v in source.items()), prefix
  assert any(params_lib.is_temporal(p) for p in trained)


@pytest.mark.parametrize('spatial_from', [None, 'sd'])
def test_sample_writes_4t_frames_at_4x_the_key_frame_size(run_dir, tmp_path, spatial_from):
  out = str(tmp_path / 'video.mp4')
  settings = video_ldm.Settings(num_frames=9, prompts=PROMPTS, interpolation_passes=1,
                                upsample=True, num_steps=2, upsample_window=4)
  source = sd_video_helpers.tiny_run().sd_path if spatial_from else None
  assert generate.generate(run_dir, settings, out, fps=8.0, spatial_from=source) == 9
  h, w = sd_video_helpers.tiny_run().config.model.frame_size  # Key frames: 3 = (9 - 1) / 4 + 1.
  assert iio.imread(out).shape == (9, 4 * h, 4 * w, 3)


def test_chain_starts_text_video_from_the_spatial_fine_tune_only_when_it_is_trained(tmp_path):
  arg = sd_video_helpers.chain_arg()
  run = str(tmp_path)
  from_sd = chain.stage_config(CONFIG_FILE, 'text_video', arg, run, trained=())
  assert from_sd.init_from.workdir == '' and from_sd.init_from.path.endswith(
      'videoldm_params.safetensors')
  from_image = chain.stage_config(CONFIG_FILE, 'text_video', arg, run, trained=('text_image',))
  assert (from_image.init_from.workdir, from_image.init_from.path) == (
      os.path.join(run, 'text_image'), '')
  interpolation = chain.stage_config(CONFIG_FILE, 'text_interpolation', arg, run, trained=())
  assert interpolation.init_from.workdir == os.path.join(run, 'video')
  assert chain.default_stages(CONFIG_FILE, arg) == (
      'text_video', 'text_interpolation', 'text_decoder', 'text_upsampler')
  assert [chain.stage_dir(s) for s in chain.default_stages(CONFIG_FILE, arg)] == [
      'video', 'interpolation', 'decoder', 'upsampler']


def test_frames_become_one_frame_clips_with_their_clips_caption():
  video = np.arange(2 * 3 * 2).reshape(2, 3, 2, 1, 1)
  caption = np.array([[7, 8], [9, 10]])
  out = text_image.frames_as_clips(dict(video=video, caption=caption))
  assert out['video'].shape == (6, 1, 2, 1, 1)
  np.testing.assert_array_equal(out['video'][4, 0], video[1, 1])
  np.testing.assert_array_equal(out['caption'], [[7, 8]] * 3 + [[9, 10]] * 3)


def test_spatial_fine_tune_trains_the_unet_and_text_video_starts_from_it(tmp_path):
  run = str(tmp_path)
  config = config_utils.override(
      chain.stage_config(CONFIG_FILE, 'text_image', sd_video_helpers.chain_arg(), run),
      total_steps=2, **{'data.data_dir': os.path.join(sd_video_helpers.tiny_run().root, 'tfds')})
  trainer.train_and_evaluate(config, os.path.join(run, 'text_image'))
  image = checkpoints.flat_params(loading.load_stage(os.path.join(run, 'text_image'),
                                                     use_ema=False).params)
  sd = checkpoints.flat_params(temporal_transfer.spatial_params_from_sd(
      sd_video_helpers.tiny_run().sd_path))
  assert image.keys() == sd.keys()
  assert {p.split('/')[0] for p in sd if not np.array_equal(image[p], sd[p])} == {'unet'}
  video_config = chain.stage_config(CONFIG_FILE, 'text_video', sd_video_helpers.chain_arg(), run,
                                    trained=('text_image',))
  video_stage = stages.get_stage('text_video')(video_config)
  target = jax.eval_shape(video_stage.init_params, jax.random.key(0), dict(
      video=jax.ShapeDtypeStruct((1, 4, 32, 32, 3), np.float32),
      caption=jax.ShapeDtypeStruct((1, 12), np.int32)))
  merged, kept = checkpointing.merge_init_params(target, image, video_config.init_from.exempt)
  assert kept and all(params_lib.is_temporal(path) for path in kept)
  merged = checkpoints.flat_params(merged)
  assert all(np.array_equal(merged[p], v) for p, v in image.items())


@pytest.mark.parametrize('role', ['video', 'interpolation', 'decoder', 'upsampler'])
def test_diffusers_export_round_trips_each_stage_with_its_temporal_layers(run_dir, models, role,
                                                                         tmp_path):
  from videoldm import export  # pylint: disable=g-import-not-at-top
  from videoldm.pipelines import exported  # pylint: disable=g-import-not-at-top
  out = export.export(run_dir, 'diffusers', str(tmp_path / role), stage=role)
  assert sorted(os.listdir(out)) == sorted(
      ['vae', 'temporal'] + ([] if role == 'decoder' else ['unet', 'text_encoder', 'tokenizer']))
  loaded = exported.load_diffusers_export(out)
  assert loaded.stage.config.stage == models[role].stage.config.stage
  want = {p: v for p, v in checkpoints.flat_params(models[role].params).items()
          if not p.startswith('discriminator/')}
  got = checkpoints.flat_params(loaded.params)
  assert sorted(got) == sorted(want)
  for path, value in want.items():
    np.testing.assert_array_equal(got[path], value, err_msg=path)
