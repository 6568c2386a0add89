"""Stable Diffusion -> text-to-video (`configs/sd_video.py`, stage `text_video`).

A tiny random SD folder converts, the temporal layers train for a few steps on
captions with the spatial layers frozen, a text prompt samples through the
pipeline; the memory options (remat, bf16, chunked decoding) keep results.
"""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videoldm import checkpoints
from videoldm import config_utils
from videoldm.convert import temporal_transfer
from videoldm.models import params as params_lib
from videoldm.pipelines import exported
from videoldm.pipelines import video_ldm
from videoldm.stages import text_video
from sd_video_helpers import REPO

PROMPTS = ('a 3 moving left', 'moving digits')


def test_config_reads_the_sd_folder(sd_run):
  config = sd_run.config
  assert config.stage == 'text_video'
  assert config.model.unet.cross_attention_dim == 32
  assert config.model.unet.temporal.text_context and config.model.unet.temporal.context_frames
  assert tuple(config.model.autoencoder.block_out_channels) == (32, 32)
  assert config.model.text_encoder.max_position_embeddings == 12
  assert tuple(config_utils.load_config(
      os.path.join(REPO, 'configs/sd_video.py')).model.frame_size) == (320, 512)


def test_training_changes_only_temporal_params(sd_run, sd_model):
  sd = checkpoints.flat_params(temporal_transfer.spatial_params_from_sd(sd_run.sd_path))
  trained = checkpoints.flat_params(sd_model.params)
  temporal = [p for p in trained if params_lib.is_temporal(p)]
  assert set(trained) - set(temporal) == set(sd)
  for path, value in sd.items():
    np.testing.assert_array_equal(trained[path], value, err_msg=path)
  # Zero-initialised output projections moved: the temporal layers learned.
  moved = [p for p in temporal if p.endswith('proj_out/kernel') and np.any(trained[p] != 0)]
  assert moved


def test_captions_are_tokenized_for_the_data(sd_model):
  stage = sd_model.stage
  ids = stage.tokenize(['a 3 moving left'])
  assert ids.shape == (1, 12) and ids.dtype == np.int32
  assert ids[0, 0] == stage.tokenizer.bos_token_id and stage.tokenizer.eos_token_id in ids[0]
  np.testing.assert_array_equal(stage.null_ids(2)[1], stage.tokenize([''])[0])


def test_text_prompts_sample_through_the_pipeline(sd_model):
  settings = dict(num_frames=6, interpolation_passes=0, window_frames=4, num_steps=2, seed=3)
  pipe = video_ldm.VideoLDM({'video': sd_model}, video_ldm.Settings(prompts=PROMPTS, **settings))
  video = np.stack([np.asarray(f) for f in pipe.frames()], axis=1)
  assert video.shape == (2, 6, 16, 32, 3) and np.all(np.isfinite(video))
  assert np.all(np.abs(video) <= 1.0)
  # Same seed: the first video (same prompt) repeats exactly, the second follows its prompt.
  pipe = video_ldm.VideoLDM({'video': sd_model},
                            video_ldm.Settings(prompts=(PROMPTS[0], 'a 7'), **settings))
  other = np.stack([np.asarray(f) for f in pipe.frames()], axis=1)
  np.testing.assert_array_equal(other[0], video[0])
  assert np.max(np.abs(other[1] - video[1])) > 1e-3
  # Image-to-video from a text prompt: the given frame starts each video (up to the VAE).
  first = np.random.default_rng(4).uniform(-1, 1, (2, 1, 16, 32, 3)).astype(np.float32)
  pipe = video_ldm.VideoLDM({'video': sd_model}, video_ldm.Settings(prompts=PROMPTS, **settings))
  started = np.stack([np.asarray(f) for f in pipe.frames(given_frames=first)], axis=1)
  round_trip = sd_model.stage.decode(sd_model.params, pipe.encode(first))
  assert started.shape == video.shape
  np.testing.assert_allclose(started[:, 0], np.clip(round_trip[:, 0], -1, 1), atol=1e-5)


def test_prompts_for_a_class_model_and_labels_for_a_text_model_raise(sd_model):
  with pytest.raises(ValueError, match='is text-conditioned; expected text prompts'):
    video_ldm.VideoLDM({'video': sd_model}, video_ldm.Settings(num_frames=4))


def test_spatial_from_sd_folder_keeps_temporal_layers(sd_run, sd_model):
  spatial = exported.read_spatial_params(sd_run.sd_path)
  bumped = jax.tree.map(lambda x: x + 1.0, sd_model.params)
  merged = checkpoints.flat_params(temporal_transfer.transfer_temporal(bumped, spatial))
  flat_bumped, flat_sd = checkpoints.flat_params(bumped), checkpoints.flat_params(spatial)
  for path, value in merged.items():
    expected = flat_bumped[path] if params_lib.is_temporal(path) else flat_sd[path]
    np.testing.assert_array_equal(value, expected)


# ----------------------------------------------------------------------------
# Memory options on the tiny U-Net.
# ----------------------------------------------------------------------------


def _unet_inputs(stage):
  key = jax.random.key(0)
  z = jax.random.normal(key, (1, 3) + stage.latent_size() + (4,))
  text = jax.random.normal(jax.random.fold_in(key, 1), (1, 12, 32))
  mask = jnp.array([[1.0, 0.0, 0.0]])
  return z, jnp.array([500]), text, mask


def test_remat_gives_the_same_loss_and_gradients(sd_run, sd_model):
  config = config_utils.override(sd_run.config, **{'model.remat': 'blocks'})
  plain, remat = sd_model.stage, text_video.TextVideoStage(config)
  z, t, text, mask = _unet_inputs(plain)

  def loss_grad(stage):
    loss = lambda p: jnp.mean(stage.apply_unet(dict(unet=p), z, t, text, z, mask) ** 2)
    return jax.jit(jax.value_and_grad(loss))(sd_model.params['unet'])

  (loss_a, grad_a), (loss_b, grad_b) = loss_grad(plain), loss_grad(remat)
  np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
  scale = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(grad_a))
  for a, b in zip(jax.tree.leaves(grad_a), jax.tree.leaves(grad_b)):  # Up to float reordering.
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * scale)
  with pytest.raises(ValueError, match="model.remat='layers' is not one of"):
    text_video.TextVideoStage(config_utils.override(sd_run.config, **{'model.remat': 'layers'}))


def test_bf16_compute_stays_close_with_float32_params(sd_run, sd_model):
  config = config_utils.override(sd_run.config, **{'model.unet.dtype': 'bfloat16'})
  bf16 = text_video.TextVideoStage(config)
  z, t, text, mask = _unet_inputs(bf16)
  ids = jnp.asarray(bf16.tokenize(PROMPTS))
  f32_out = jax.jit(sd_model.stage.apply_unet)(sd_model.params, z, t, text, z, mask)
  bf16_out = jax.jit(bf16.apply_unet)(sd_model.params, z, t, text, z, mask)
  assert bf16_out.dtype == jnp.float32
  error = np.max(np.abs(bf16_out - f32_out)) / np.max(np.abs(f32_out))
  assert 0 < error < 0.05
  text_error = np.max(np.abs(bf16.encode_text(sd_model.params, ids)
                             - sd_model.stage.encode_text(sd_model.params, ids)))
  assert 0 < text_error < 0.1
  # The param shapes (and dtype: float32 master weights) do not depend on the compute dtype.
  shapes = jax.eval_shape(bf16.init_params, jax.random.key(0), {})
  assert {leaf.dtype for leaf in jax.tree.leaves(shapes)} == {np.dtype(np.float32)}


def test_chunked_vae_decoding_equals_whole(sd_run, sd_model):
  z = jax.random.normal(jax.random.key(1), (1, 5) + sd_model.stage.latent_size() + (4,))
  whole = text_video.TextVideoStage(config_utils.override(sd_run.config,
                                                          **{'model.decode_chunk': 0}))
  # decode_chunk=2: 3 chunks, 1 padded.
  chunked = jax.jit(sd_model.stage.decode)(sd_model.params, z)
  assert sd_run.config.model.decode_chunk == 2
  np.testing.assert_allclose(chunked, jax.jit(whole.decode)(sd_model.params, z), rtol=1e-5,
                             atol=1e-5)
  assert chunked.shape == (1, 5, 16, 32, 3)


def test_frames_smaller_than_frame_size_raise(sd_model):
  with pytest.raises(ValueError, match='smaller than model.frame_size 16x32'):
    sd_model.stage.preprocess(dict(video=jnp.zeros((1, 2, 8, 8, 3))))


def test_evaluate_a_text_run_samples_the_captions_and_scores_clip_similarity(
    sd_run, tmp_path, monkeypatch):
  from videoldm import evaluate  # pylint: disable=g-import-not-at-top
  from videoldm.evaluation import clip_score  # pylint: disable=g-import-not-at-top
  import sd_video_helpers  # pylint: disable=g-import-not-at-top
  run_dir = tmp_path / 'run'  # A copy: the shared run's folder keeps only `video/`.
  shutil.copytree(os.path.join(sd_run.run_dir, 'video'), run_dir / 'video')
  prompts, scored = [], []
  real_pipeline = evaluate.video_ldm.VideoLDM
  monkeypatch.setattr(evaluate.video_ldm, 'VideoLDM', lambda models, settings: (
      prompts.extend(settings.prompts), real_pipeline(models, settings))[1])
  real_cosines = clip_score.ClipScorer.cosines
  monkeypatch.setattr(clip_score.ClipScorer, 'cosines', lambda self, videos, captions: (
      scored.append((np.asarray(videos), list(captions))),
      real_cosines(self, videos, captions))[1])
  num_frames = sd_run.config.data.num_frames
  record = evaluate.evaluate(
      str(run_dir), num_videos=3, num_frames=num_frames, batch_size=2,
      networks=evaluate.standard.Networks(clip_dir=sd_video_helpers.tiny_clip_dir()))
  data = evaluate.eval_data_config(sd_run.config.data, num_frames, None)
  batches = evaluate.pipeline.make_dataset(data, data.eval_split, 2, shuffle=False, seed=0)
  captions = [str(c) for _ in range(2) for c in next(batches)['caption_text']][:3]
  assert prompts == captions  # Each video is generated from its real clip's caption.
  assert [c for _, c in scored] == [captions[:2], captions[2:]]
  assert all(videos.shape[1] == num_frames for videos, _ in scored)
  scorer = clip_score.ClipScorer(sd_video_helpers.tiny_clip_dir())
  mean = np.concatenate([real_cosines(scorer, v, c) for v, c in scored]).mean()
  assert record['metrics']['clip_similarity'] == pytest.approx(float(mean), abs=1e-6)
  assert 'fvd_md' not in record['metrics']  # Digit nets only for label runs.
  assert os.path.isfile(run_dir / 'evaluation' / 'report.json')
