"""The sampling stack: frame counts, kept frames, compile-once windows, MP4 output, context
from the user's media."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videoldm.pipelines import streams
from videoldm.pipelines import video_ldm
from videoldm.pipelines import writer
from videoldm.stages import denoising
from videoldm.stages import latents

from stage_helpers import load_stage

@pytest.fixture(scope='module')
def models():
  return {name: load_stage(name) for name in ('image', 'video', 'interpolation')}


def make_pipeline(models, **settings):
  return video_ldm.VideoLDM(models, video_ldm.Settings(labels=(3, 7), **settings))


@pytest.mark.parametrize('passes, num_frames, keys', [(0, 5, 5), (1, 9, 3), (2, 17, 2)])
def test_frame_counts_and_kept_key_frames(models, passes, num_frames, keys):
  pipeline = make_pipeline(models, num_frames=num_frames, interpolation_passes=passes)
  assert video_ldm.num_key_frames(pipeline.settings) == keys
  key = jax.random.key(0)
  dense = list(pipeline.latents(key))
  assert len(dense) == num_frames
  key_key, _ = jax.random.split(key)
  key_frames = list(itertools.islice(pipeline.key_frame_latents(key_key), keys))
  stride = 4 ** passes
  for i, frame in enumerate(key_frames):  # T -> 4T -> 16T keeps every key frame exactly.
    np.testing.assert_array_equal(dense[i * stride], frame)


def test_long_video_has_requested_frames_and_compiles_each_window_once(models):
  window = models['video'].stage.config.data.num_frames
  num_frames = window + 2 * (window - 2)  # Exactly three prediction windows.
  pipeline = make_pipeline(models, num_frames=num_frames, interpolation_passes=0)
  frames = list(pipeline.frames())
  assert len(frames) == num_frames
  size = models['image'].stage.config.data.image_size
  assert frames[0].shape == (2, size, size, 3)
  predict = pipeline.compiled('predict')
  assert predict._cache_size() == 1  # pylint: disable=protected-access
  assert pipeline.compiled('decode')._cache_size() == 1  # pylint: disable=protected-access


def test_given_context_frames_appear_unchanged(models):
  pipeline = make_pipeline(models, num_frames=6, interpolation_passes=0)
  rng = np.random.default_rng(0)
  size = models['image'].stage.config.data.image_size
  given = jnp.asarray(rng.uniform(-1, 1, (2, 2, size, size, 3)), jnp.float32)
  frames = list(pipeline.frames(given_frames=given))
  image = models['image']
  round_trip = jnp.clip(latents.decode_latents(
      image.stage.autoencoder, image.params, pipeline.encode(given)), -1, 1)
  for i in range(2):
    np.testing.assert_allclose(frames[i], round_trip[:, i], atol=1e-5)


def test_bad_settings_are_named(models):
  with pytest.raises(ValueError, match='interpolation_passes=3'):
    make_pipeline(models, num_frames=5, interpolation_passes=3)
  with pytest.raises(ValueError, match="'upsampler' stage"):
    make_pipeline(models, num_frames=5, upsample=True)
  pipeline = make_pipeline(models, num_frames=5)
  with pytest.raises(ValueError, match='Given 3 context frames'):
    next(pipeline.key_frame_latents(jax.random.key(0), jnp.zeros((2, 3, 8, 8, 4))))


def test_overlapping_chunks_join_without_seams():
  """A 3-tap temporal filter applied in chunks with overlap 1 equals applying it once."""
  frames = [jnp.full((1, 2), float(i * i)) for i in range(11)]

  def smooth(x):  # (b, n, 2): mean of each frame and its neighbours (edges repeated).
    padded = jnp.concatenate([x[:, :1], x, x[:, -1:]], axis=1)
    return (padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]) / 3

  whole = smooth(jnp.stack(frames, axis=1))
  chunked = list(streams.chunked_overlap(iter(frames), 4, 1, smooth))
  assert len(chunked) == len(frames)
  np.testing.assert_allclose(jnp.stack(chunked, axis=1), whole, rtol=1e-6)


def test_mp4_decodes_to_expected_frames_and_size(tmp_path):
  rng = np.random.default_rng(0)
  frames = [rng.uniform(-1, 1, (2, 16, 24, 3)).astype(np.float32) for _ in range(7)]
  path = str(tmp_path / 'clip.mp4')
  assert writer.write_all(iter(frames), path, fps=8, gif=True) == 7
  video = writer.read_video(path)
  assert video.shape == (7, 16, 48, 3)  # Two videos side by side.
  assert (tmp_path / 'clip.gif').exists() and (tmp_path / 'clip_frames.png').exists()
  with pytest.raises(ValueError, match="'clip.avi' must end in .mp4"):
    writer.VideoWriter('clip.avi', fps=8)


def test_sampling_settings_reach_every_stage(models):
  pipeline = make_pipeline(models, num_frames=5, num_steps=1, guidance_scale=4.0,
                           context_guidance=2.5, eta=0.5)
  for name in ('image', 'video', 'interpolation'):
    options = pipeline.options[name]
    assert (options.num_steps, options.guidance_scale, options.context_guidance,
            options.eta) == (1, 4.0, 2.5, 0.5), name
    configured = models[name].stage.config.sampling  # Unset settings keep the trained ones.
    assert options.timestep_spacing == configured.timestep_spacing, name


def test_context_frames_enter_only_through_the_mask(models):
  pipeline = make_pipeline(models, num_frames=6, interpolation_passes=0)
  rng = np.random.default_rng(1)
  shape = (2, pipeline.window) + pipeline.latent_shape()[1:]
  given = jnp.asarray(rng.normal(size=shape[:1] + (1,) + shape[2:]), jnp.float32)
  mask = denoising.leading_frames_mask(jnp.full((2,), 1), pipeline.window)
  zeros = jnp.zeros(shape).at[:, :1].set(given)
  noise = jnp.asarray(rng.normal(size=shape), jnp.float32).at[:, :1].set(given)
  predict = lambda known: pipeline.compiled('predict')(
      models['video'].params, known, mask, pipeline.labels, jax.random.key(3))
  out = predict(zeros)
  np.testing.assert_array_equal(out, predict(noise))  # Masked frames' content is unseen.
  np.testing.assert_array_equal(out[:, 0], given[:, 0])  # The context frame is kept exactly.


class RecordingWriter:
  """Stands in for the MP4 writer: keeps every frame written (MP4 is lossy)."""
  frames = []

  def __init__(self, *args, **kwargs):
    del args, kwargs
    RecordingWriter.frames = []

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False

  def append(self, frame):
    RecordingWriter.frames.append(np.asarray(frame))

  @property
  def count(self):
    return len(RecordingWriter.frames)


def test_first_frame_and_continuation_start_from_the_users_media(models, tmp_path, monkeypatch):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from videoldm.data import video_io  # pylint: disable=g-import-not-at-top
  from videoldm.pipelines import generate  # pylint: disable=g-import-not-at-top
  from videoldm.pipelines import user_media  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(generate.loading, 'load_run', lambda *args, **kwargs: dict(models))
  monkeypatch.setattr(generate.writer, 'VideoWriter', RecordingWriter)
  monkeypatch.setattr(generate.writer, 'check_outputs', lambda *args: None)
  size = models['image'].stage.config.data.image_size
  rng = np.random.default_rng(2)
  image = rng.integers(0, 256, (size + 6, 2 * size, 3), dtype=np.uint8)  # Wide: cropped.
  Image.fromarray(image).save(tmp_path / 'first.png')
  settings = video_ldm.Settings(num_frames=5, labels=(3, 7), interpolation_passes=0)
  first = str(tmp_path / 'first.png')
  assert generate.generate('run', settings, 'x.mp4', 8.0, first_frame=first) == 5
  given = user_media.to_unit_range(video_io.resize_cover_crop(image, size, size))
  image_model = models['image']
  encoded = image_model.stage.encode(image_model.params, jnp.asarray(given)[None, None])
  round_trip = jnp.clip(latents.decode_latents(image_model.stage.autoencoder, image_model.params,
                                               encoded), -1, 1)[0, 0]
  for video in RecordingWriter.frames[0]:  # Both videos start with the image, up to the AE.
    np.testing.assert_allclose(video, round_trip, atol=1e-5)

  clip = rng.integers(0, 256, (7, size, size + 8, 3), dtype=np.uint8)
  video_io.write_video(str(tmp_path / 'clip.mp4'), clip, fps=8)
  user = video_io.resize_video(video_io.read_video(str(tmp_path / 'clip.mp4')), size, size)
  settings = dataclasses.replace(settings, interpolation_passes=1)
  count = generate.generate('run', settings, 'x.mp4', 8.0,
                            continue_video=str(tmp_path / 'clip.mp4'))
  assert count == len(RecordingWriter.frames) == 7 + 5  # The clip, then 5 new frames.
  for written, original in zip(RecordingWriter.frames[:7], user):
    np.testing.assert_array_equal(writer.to_uint8(written)[0], original)  # Unchanged.
  context = user_media.continuation(str(tmp_path / 'clip.mp4'), size, size, key_spacing=4)
  assert context.skip == 5
  np.testing.assert_array_equal(context.frames, user_media.to_unit_range(user[[2, 6]]))

  (tmp_path / 'text.png').write_text('not an image')
  with pytest.raises(ValueError, match=r"Could not read the image .*text\.png.*expected an image"):
    generate.generate('run', settings, 'x.mp4', 8.0, first_frame=str(tmp_path / 'text.png'))
  (tmp_path / 'empty.mp4').write_bytes(b'')
  with pytest.raises(ValueError, match=r"Could not read the video .*empty\.mp4.*expected a video"):
    generate.generate('run', settings, 'x.mp4', 8.0, continue_video=str(tmp_path / 'empty.mp4'))
