"""The latent and pixel diffusion stages: masks, Eq. 5, and short real training runs."""

import os
import re

import jax
import ml_collections
import jax.numpy as jnp
import numpy as np
import pytest

from videoldm import checkpoints
from videoldm import config_utils
from videoldm import diffusion
from videoldm.diffusion import sampling
from videoldm.stages import denoising
from videoldm.stages import interpolation
from videoldm.stages import upsampler
from videoldm.train import trainer

from stage_helpers import CONFIG
from stage_helpers import load_stage


def test_leading_frames_mask_shows_exactly_the_first_s_frames():
  mask = denoising.leading_frames_mask(jnp.array([0, 1, 2]), 5)
  np.testing.assert_array_equal(mask, [[0, 0, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]])


def test_num_context_follows_the_configured_probabilities():
  counts = np.bincount(denoising.sample_num_context(jax.random.key(0), 20000, (0.2, 0.4, 0.4)),
                       minlength=3) / 20000
  np.testing.assert_allclose(counts, [0.2, 0.4, 0.4], atol=0.015)


def test_known_frames_enter_every_step_forward_noised_and_come_out_unchanged():
  # An x0-model that answers every frame with its input's frame 0: the last DDIM step
  # (alpha_prev = 1) returns it, so frame 1 shows what the model saw of the known frame 0.
  options = sampling.SamplingOptions(num_steps=4, eta=0.0, timestep_spacing='trailing',
                                     steps_offset=0, set_alpha_to_one=True)
  schedule = diffusion.make_schedule('scaled_linear', 1000)
  known = jax.random.normal(jax.random.key(1), (2, 3, 4, 4, 2))
  mask = denoising.leading_frames_mask(jnp.array([1, 1]), 3)
  model_fn = lambda x, t, cond: jnp.broadcast_to(x[:, :1], x.shape)
  key = jax.random.key(2)
  out = sampling.sample_with_known(model_fn, [jnp.zeros((2,))], [], known, mask, key, schedule,
                                  'x0', options)
  last_t = diffusion.ddim_timesteps(1000, 4, 'trailing')[-1]
  seen = schedule.alphas[last_t] * known[:, 0] + schedule.sigmas[last_t] * jax.random.normal(
      key, known.shape)[:, 0]
  np.testing.assert_array_equal(out[:, 0], known[:, 0])
  np.testing.assert_allclose(out[:, 1], seen, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out[:, 2], seen, rtol=1e-5, atol=1e-5)


def _perturbed_outputs(model, apply, latents, mask, frames, **kwargs):
  """Model outputs for the context latents and for them changed at `frames`."""
  x = jnp.ones_like(latents) * 0.1
  t = jnp.full((latents.shape[0],), 500)
  labels = jnp.zeros((latents.shape[0],), jnp.int32)
  changed = latents.at[:, frames].add(3.0)
  return (apply(model.params, x, t, labels, latents, mask, **kwargs),
          apply(model.params, x, t, labels, changed, mask, **kwargs))


@pytest.fixture(scope='module')
def video_model():
  return load_stage('video')


def test_prediction_model_sees_exactly_its_s_context_frames(video_model):
  stage = video_model.stage
  latents = jax.random.normal(jax.random.key(1), (1, 4, 8, 8, 4))
  mask = denoising.leading_frames_mask(jnp.array([2]), 4)
  base, hidden_changed = _perturbed_outputs(video_model, stage.apply_unet, latents, mask, [2, 3])
  np.testing.assert_array_equal(base, hidden_changed)
  _, visible_changed = _perturbed_outputs(video_model, stage.apply_unet, latents, mask, [1])
  assert float(jnp.max(jnp.abs(visible_changed - base))) > 1e-4


def test_prediction_loss_is_eq3_over_all_frames_context_included(video_model, monkeypatch):
  stage = video_model.stage
  f = stage.config.data.num_frames
  batch = dict(video=jnp.zeros((2, f, 32, 32, 3)), labels=jnp.zeros((2, 1), jnp.int32))
  monkeypatch.setattr(stage, 'context_mask',
                      lambda key, b, f: denoising.leading_frames_mask(jnp.full((b,), 2), f))
  losses = []
  for context_error in (0.0, 1.0):  # Predictions that differ on the context frames only.
    monkeypatch.setattr(stage, 'apply_unet', lambda params, x, t, labels, context, mask, e=(
        context_error): jnp.zeros_like(x).at[:, :2].add(e))
    losses.append(float(stage.loss_fn(video_model.params, batch, jax.random.key(0), 0)[0]))
  assert losses[1] > losses[0] + 0.1


def test_interpolation_model_sees_exactly_the_key_frames_and_the_regime():
  model = load_stage('interpolation')
  stage = model.stage
  mask = interpolation.key_frame_mask(2)[None]  # Key frames 0 and 4 of 5.
  np.testing.assert_array_equal(mask, [[1, 0, 0, 0, 1]])
  latents = jax.random.normal(jax.random.key(2), (1, 5, 8, 8, 4))
  regime = jnp.zeros((1,), jnp.int32)
  base, hidden = _perturbed_outputs(model, stage.apply_unet, latents, mask, [1, 2, 3],
                                    regime=regime)
  np.testing.assert_array_equal(base, hidden)
  _, key_changed = _perturbed_outputs(model, stage.apply_unet, latents, mask, [4], regime=regime)
  assert float(jnp.max(jnp.abs(key_changed - base))) > 1e-4
  other, _ = _perturbed_outputs(model, stage.apply_unet, latents, mask, [1], regime=regime + 1)
  assert float(jnp.max(jnp.abs(other - base))) > 1e-4


def test_regime_windows_use_the_stride_of_each_regime():
  video = jnp.arange(17.0)[None, :, None, None, None] * jnp.ones((2, 17, 1, 1, 1))
  windows = interpolation.regime_windows(video, jnp.array([0, 1]), (4, 1), 2, jax.random.key(0))
  np.testing.assert_array_equal(windows[0, :, 0, 0, 0], [0, 4, 8, 12, 16])
  steps = np.diff(np.asarray(windows[1, :, 0, 0, 0]))
  np.testing.assert_array_equal(steps, [1, 1, 1, 1])


def test_cached_posteriors_are_cut_to_the_windows_of_the_video():
  frames = jnp.arange(17.0)[None, :, None, None, None] * jnp.ones((2, 17, 2, 2, 4))
  batch = dict(video=frames[..., :3], latent_mean=frames, latent_logvar=-frames)
  interp = ml_collections.ConfigDict(dict(num_key_frames=2, strides=(4, 1)))
  windows, regime, mask = interpolation.sample_windows(batch, interp, jax.random.key(3))
  np.testing.assert_array_equal(windows['latent_mean'][..., :3], windows['video'])
  np.testing.assert_array_equal(windows['latent_logvar'], -windows['latent_mean'])
  np.testing.assert_array_equal(mask[0], [1, 0, 0, 0, 1])
  stride = np.diff(np.asarray(windows['video'][:, :, 0, 0, 0]), axis=1)[:, 0]
  np.testing.assert_array_equal(stride, np.where(np.asarray(regime) == 0, 4, 1))


def test_interpolation_clip_too_short_is_named():
  message = r'at least 17 frames for 2 key frames at strides \(4, 1\); config.data.num_frames is 9'
  with pytest.raises(ValueError, match=message):
    interpolation.check_clip_length(9, (4, 1), 2)


def test_upsampler_noise_augmentation_is_eq5():
  schedule = diffusion.make_schedule('scaled_linear')
  low = jax.random.uniform(jax.random.key(3), (64, 1, 4, 4, 3), minval=-1, maxval=1)
  key = jax.random.key(4)
  augmented, t_g = upsampler.noise_augment(schedule, low, key, max_noise_level=250)
  level_key, noise_key = jax.random.split(key)
  expected = diffusion.q_sample(schedule, low, t_g, jax.random.normal(noise_key, low.shape))
  np.testing.assert_allclose(augmented, expected, rtol=1e-6, atol=1e-6)
  alpha = np.sqrt(schedule.alphas_cumprod[np.asarray(t_g)])[:, None, None, None, None]
  sigma = np.sqrt(1 - schedule.alphas_cumprod[np.asarray(t_g)])[:, None, None, None, None]
  eps = (np.asarray(augmented) - alpha * np.asarray(low)) / sigma
  assert abs(eps.std() - 1) < 0.1 and abs(eps.mean()) < 0.1  # The added noise is N(0, 1).
  assert 0 <= int(t_g.min()) and int(t_g.max()) <= 250 and len(set(np.asarray(t_g))) > 20
  del level_key


@pytest.mark.parametrize('residual', [False, True])
def test_residual_upsampler_generates_the_detail_over_the_resized_low_res(residual, monkeypatch):
  """`residual`: trains on `(x - resize(x_low)) * k`, returns `resize(x_low) + DDIM output / k`."""
  model = load_stage('upsampler_image', **{'model.upsampler.residual': residual,
                                           'model.upsampler.residual_scale': 2.0})
  x0 = jax.random.uniform(jax.random.key(5), (2, 1, 32, 32, 3), minval=-1, maxval=1)
  resized = jax.image.resize(upsampler.downsample(x0, 4), x0.shape, 'bilinear')
  targets = []
  monkeypatch.setattr(denoising, 'denoising_loss',
                      lambda config, schedule, prediction, target, noised: (
                          targets.append(target), jnp.zeros(()))[1])
  model.stage.loss_fn(model.params, {'video': x0}, jax.random.key(6), 0)
  np.testing.assert_allclose(targets[0], 2.0 * (x0 - resized) if residual else x0, atol=1e-6)

  detail = 0.5 * jnp.sin(jnp.arange(32 * 32 * 3.0)).reshape(1, 1, 32, 32, 3)
  monkeypatch.setattr(sampling, 'guided_sample', lambda *args: jnp.tile(detail, (2, 1, 1, 1, 1)))
  low = upsampler.downsample(x0, 4)
  out = model.stage.upsample(model.params, low, jax.random.key(7), model.stage.sampling_options())
  expected = jnp.clip(resized + detail / 2.0 if residual else detail + jnp.zeros_like(x0), -1, 1)
  np.testing.assert_allclose(out, expected, atol=1e-6)


# --------------------------------------------------------------------------
# Short real runs: every diffusion stage trains from a fresh workdir, and the
# next stage starts from its checkpoint through init_from.
# --------------------------------------------------------------------------


def _run(stage, workdir, data_dir, init_from=''):
  config = config_utils.load_config(f'{CONFIG}:stage={stage},runlocal')
  config = config_utils.override(config, **{
      'total_steps': 2, 'optimizer.warmup_steps': 1, 'batch_size': 2,
      'checkpoint.every_steps': 1, 'checkpoint.async_save': False, 'log_every': 1,
      'data.data_dir': data_dir, 'init_from.workdir': init_from})
  state = trainer.train_and_evaluate(config, workdir)
  assert int(jax.device_get(state.nonfinite_count)) == 0
  steps = {}
  for step in (1, 2):
    state_dir = os.path.join(checkpoints.checkpoint_dir(workdir), str(step), 'state')
    steps[step] = checkpoints.read_state_params(state_dir, use_ema=False)
  return config, steps, workdir


def _check_frozen_and_trained(config, steps, workdir):
  del workdir
  trainable = re.compile(config.trainable)
  changed = {path for path in steps[1] if not np.array_equal(steps[1][path], steps[2][path])}
  frozen = {path for path in steps[1] if not trainable.search(path)}
  assert not changed & frozen, f'frozen params changed: {sorted(changed & frozen)[:5]}'
  assert changed, 'no trainable param changed'
  assert all(np.all(np.isfinite(v)) for v in steps[2].values())


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('stages')
  data = str(root / 'data')
  results = {}
  for stage, source in (('image', ''), ('video', 'image'), ('interpolation', 'video'),
                        ('upsampler_image', ''), ('upsampler', 'upsampler_image')):
    init_from = str(root / source) if source else ''
    results[stage] = _run(stage, str(root / stage), data, init_from)
  return results


@pytest.mark.parametrize('stage', ['image', 'video', 'interpolation', 'upsampler_image',
                                   'upsampler'])
def test_stage_trains_only_its_trainable_params(runs, stage):
  _check_frozen_and_trained(*runs[stage])


@pytest.mark.parametrize('stage, source', [('video', 'image'), ('interpolation', 'video'),
                                           ('upsampler', 'upsampler_image')])
def test_next_stage_starts_from_the_previous_checkpoint(runs, stage, source):
  """Frozen params of the next stage equal the source run's final (EMA) params."""
  config, target, _ = runs[stage]
  _, _, source_workdir = runs[source]
  step_dir = checkpoints.latest_step_dir(source_workdir)
  source_params = checkpoints.read_state_params(os.path.join(step_dir, 'state'), use_ema=True)
  trainable = re.compile(config.trainable)
  shared = [path for path in target[1] if path in source_params and not trainable.search(path)]
  assert any(path.startswith('unet/') for path in shared)
  for path in shared:
    np.testing.assert_array_equal(target[1][path], source_params[path], err_msg=path)
