"""DDIM: timesteps and steps against diffusers, Gaussian exactness, one compile."""

import functools

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from videoldm import diffusion

_DIFFUSERS_PREDICTION = {'eps': 'epsilon', 'v': 'v_prediction', 'x0': 'sample'}
_SHAPE = (2, 2, 4, 4, 3)  # (b, f, h, w, c)


def _reference(spacing='leading', steps_offset=0, prediction_type='eps', set_alpha_to_one=True,
               clip_x0=None):
  return diffusers.DDIMScheduler(
      beta_schedule='scaled_linear', beta_start=0.00085, beta_end=0.012,
      timestep_spacing=spacing, steps_offset=steps_offset,
      prediction_type=_DIFFUSERS_PREDICTION[prediction_type], set_alpha_to_one=set_alpha_to_one,
      clip_sample=clip_x0 is not None, clip_sample_range=clip_x0 or 1.0)


def _toy_denoiser(x, t):
  """A fixed nonlinear stand-in for a model, the same on both sides."""
  scale = diffusion.expand_to(t.astype(jnp.float32) / 1000.0, x.ndim)
  return jnp.tanh(x) * (0.5 + scale) + 0.1 * jnp.sin(3.0 * x)


@pytest.fixture(scope='module')
def schedule():
  return diffusion.make_schedule('scaled_linear')


@pytest.mark.parametrize('spacing', ['leading', 'trailing', 'linspace'])
def test_timesteps_match_diffusers_set_timesteps(spacing):
  for steps_offset in ((0, 1) if spacing == 'leading' else (0, 7)):
    reference = _reference(spacing, steps_offset)
    for num_steps in range(1, 1001):
      if spacing == 'leading' and steps_offset and num_steps == 1000:
        continue  # Out of range; tested among the errors.
      reference.set_timesteps(num_steps)
      expected = reference.timesteps.numpy()
      # diffusers' trailing arange appends a spurious -1 for some counts; ours drops it.
      expected = expected[:num_steps] if spacing == 'trailing' else expected
      ours = diffusion.ddim_timesteps(1000, num_steps, spacing, steps_offset)
      np.testing.assert_array_equal(ours, expected, err_msg=f'{spacing} {num_steps}')


@pytest.mark.parametrize('prediction_type', ['eps', 'v', 'x0'])
@pytest.mark.parametrize('set_alpha_to_one,clip_x0', [(True, None), (False, 1.0)])
def test_single_step_matches_diffusers(schedule, prediction_type, set_alpha_to_one, clip_x0):
  reference = _reference('leading', 0, prediction_type, set_alpha_to_one, clip_x0)
  reference.set_timesteps(20)
  rng = np.random.default_rng(0)
  for t in (999, 480, 50, 20, 3):
    x = rng.normal(size=_SHAPE).astype(np.float32)
    model_output = rng.normal(size=_SHAPE).astype(np.float32)
    noise = rng.normal(size=_SHAPE).astype(np.float32)
    for eta in (0.0, 0.6, 1.0):
      x_prev, x0 = diffusion.ddim_step(schedule, model_output, x, t, t - 50, eta=eta,
                                       prediction_type=prediction_type,
                                       set_alpha_to_one=set_alpha_to_one, clip_x0=clip_x0,
                                       variance_noise=noise)
      expected = reference.step(torch.from_numpy(model_output), t, torch.from_numpy(x), eta=eta,
                                variance_noise=torch.from_numpy(noise))
      np.testing.assert_allclose(x0, expected.pred_original_sample.numpy(), rtol=1e-4, atol=5e-5)
      np.testing.assert_allclose(x_prev, expected.prev_sample.numpy(), rtol=1e-4, atol=5e-5)


def _diffusers_loop(reference, num_steps, noise, eta, key):
  reference.set_timesteps(num_steps)
  x = torch.from_numpy(np.array(noise))
  x0_trajectory = []
  for index, t in enumerate(reference.timesteps):
    t_batch = jnp.full((noise.shape[0],), int(t), jnp.int32)
    model_output = torch.from_numpy(np.array(_toy_denoiser(jnp.asarray(x.numpy()), t_batch)))
    variance_noise = None
    if eta > 0:
      variance_noise = torch.from_numpy(
          np.array(diffusion.ddim_variance_noise(key, index, noise.shape)))
    out = reference.step(model_output, t, x, eta=eta, variance_noise=variance_noise)
    x = out.prev_sample
    x0_trajectory.append(out.pred_original_sample.numpy())
  return x.numpy(), np.stack(x0_trajectory)


@pytest.mark.parametrize('spacing', ['leading', 'trailing', 'linspace'])
@pytest.mark.parametrize('prediction_type', ['eps', 'v'])
@pytest.mark.parametrize('eta', [0.0, 0.8])
def test_scan_matches_repeated_diffusers_steps(schedule, spacing, prediction_type, eta):
  num_steps, steps_offset = 15, (1 if spacing == 'leading' else 0)  # 1000 / 15 is not whole.
  key = jax.random.PRNGKey(3)
  noise = jax.random.normal(jax.random.PRNGKey(4), _SHAPE)
  sample_fn = jax.jit(functools.partial(
      diffusion.ddim_sample, _toy_denoiser, schedule=schedule, num_steps=num_steps, eta=eta,
      prediction_type=prediction_type, timestep_spacing=spacing, steps_offset=steps_offset,
      return_trajectory=True))
  sample, trajectory = sample_fn(noise, key)
  reference = _reference(spacing, steps_offset, prediction_type)
  expected_sample, expected_trajectory = _diffusers_loop(reference, num_steps, noise, eta, key)
  assert trajectory.shape == (num_steps,) + _SHAPE
  np.testing.assert_allclose(trajectory, expected_trajectory, rtol=2e-4, atol=2e-4)
  np.testing.assert_allclose(sample, expected_sample, rtol=2e-4, atol=2e-4)


def _gaussian_ddim_moments(schedule, mean, std, num_steps, spacing, eta):
  """Exact mean/std of DDIM with the exact Gaussian denoiser (float64 recursion)."""
  alphas_cumprod = schedule.alphas_cumprod
  timesteps = diffusion.ddim_timesteps(1000, num_steps, spacing)
  m = np.sqrt(alphas_cumprod[timesteps[0]]) * mean
  var = alphas_cumprod[timesteps[0]] * std**2 + 1 - alphas_cumprod[timesteps[0]]
  for t in timesteps:
    prev = t - 1000 // num_steps
    a_t, a_prev = alphas_cumprod[t], (alphas_cumprod[prev] if prev >= 0 else 1.0)
    gain = np.sqrt(a_t) * std**2 / (a_t * std**2 + 1 - a_t)  # x0_hat = mean + gain (x - alpha mean)
    noise_std = eta * np.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    direction = np.sqrt(1 - a_prev - noise_std**2) / np.sqrt(1 - a_t)
    # x_prev = sqrt(a_prev) x0_hat + direction (x - sqrt(a_t) x0_hat) + noise_std z.
    slope = np.sqrt(a_prev) * gain + direction * (1 - np.sqrt(a_t) * gain)
    offset = (np.sqrt(a_prev) - direction * np.sqrt(a_t)) * (mean - gain * np.sqrt(a_t) * mean)
    m, var = slope * m + offset, slope**2 * var + noise_std**2
  return m, np.sqrt(var)


_MEAN, _STD, _NUM_SAMPLES = 0.5, 1.0, 20000


def _gaussian_samples(schedule, num_steps, spacing, eta, prediction_type):
  def exact_denoiser(x, t):
    alpha = diffusion.expand_to(schedule.alpha(t), x.ndim)
    sigma = diffusion.expand_to(schedule.sigma(t), x.ndim)
    x0 = _MEAN + alpha * _STD**2 / (alpha**2 * _STD**2 + sigma**2) * (x - alpha * _MEAN)
    return diffusion.convert_prediction(x0, x, alpha, sigma, 'x0', prediction_type)

  # Start from the exact marginal at the first timestep (standardised draws).
  first = diffusion.ddim_timesteps(1000, num_steps, spacing)[0]
  z = np.asarray(jax.random.normal(jax.random.PRNGKey(7), (_NUM_SAMPLES, 1)), np.float64)
  z = (z - z.mean()) / z.std()
  alpha, sigma = schedule.alphas[first], schedule.sigmas[first]
  noise = jnp.asarray(alpha * _MEAN + np.sqrt(alpha**2 * _STD**2 + sigma**2) * z, jnp.float32)
  sample_fn = jax.jit(functools.partial(
      diffusion.ddim_sample, exact_denoiser, schedule=schedule, num_steps=num_steps, eta=eta,
      prediction_type=prediction_type, timestep_spacing=spacing))
  return np.asarray(sample_fn(noise, jax.random.PRNGKey(8)), np.float64)


@pytest.mark.parametrize('eta,num_steps,spacing,prediction_type', [
    (0.0, 50, 'leading', 'eps'), (1.0, 100, 'trailing', 'v')])
def test_gaussian_data_matches_closed_form_ddim(schedule, eta, num_steps, spacing,
                                                 prediction_type):
  samples = _gaussian_samples(schedule, num_steps, spacing, eta, prediction_type)
  mean, std = _gaussian_ddim_moments(schedule, _MEAN, _STD, num_steps, spacing, eta)
  # DDIM's discretisation shrinks the std by O(1 / num_steps); the mean is exact.
  assert abs(mean - _MEAN) < 1e-6 and 0.96 < std / _STD < 0.99
  if eta == 0:  # A deterministic affine map of standardised draws: exact moments.
    tolerance_mean, tolerance_std = 1e-3, 1e-3
  else:  # Four Monte-Carlo standard errors.
    tolerance_mean, tolerance_std = (4 * std / np.sqrt(_NUM_SAMPLES),
                                     4 * std / np.sqrt(2 * _NUM_SAMPLES))
  assert abs(samples.mean() - mean) < tolerance_mean
  assert abs(samples.std() - std) < tolerance_std


@pytest.mark.parametrize('eta,prediction_type', [(0.0, 'eps'), (1.0, 'v')])
def test_gaussian_data_recovered_with_all_steps(schedule, eta, prediction_type):
  samples = _gaussian_samples(schedule, 1000, 'leading', eta, prediction_type)
  assert abs(samples.mean() - _MEAN) < 4 * _STD / np.sqrt(_NUM_SAMPLES)
  assert abs(samples.std() - _STD) < 4 * _STD / np.sqrt(2 * _NUM_SAMPLES)


def test_make_ddim_sampler_traces_once(schedule):
  traces = []

  def denoise_fn(params, x, t):
    traces.append(x.shape)
    return params['w'] * _toy_denoiser(x, t)

  sampler = diffusion.make_ddim_sampler(denoise_fn, schedule, num_steps=10, eta=0.5,
                                        prediction_type='v', timestep_spacing='trailing')
  outputs = [sampler({'w': jnp.float32(w)}, jax.random.normal(jax.random.PRNGKey(i), _SHAPE),
                     jax.random.PRNGKey(10 + i)) for i, w in enumerate((1.0, 0.5, 2.0))]
  assert len(traces) == 1 and sampler._cache_size() == 1
  reference = jax.jit(functools.partial(
      diffusion.ddim_sample, lambda x, t: 2.0 * _toy_denoiser(x, t), schedule=schedule,
      num_steps=10, eta=0.5, prediction_type='v', timestep_spacing='trailing'))
  np.testing.assert_allclose(
      outputs[2], reference(jax.random.normal(jax.random.PRNGKey(2), _SHAPE),
                            jax.random.PRNGKey(12)), rtol=1e-5, atol=1e-5)


def test_eta_noise_depends_on_key_and_eta_zero_does_not(schedule):
  noise = jax.random.normal(jax.random.PRNGKey(0), _SHAPE)
  run = {eta: jax.jit(functools.partial(diffusion.ddim_sample, _toy_denoiser, schedule=schedule,
                                        num_steps=5, eta=eta)) for eta in (0.0, 1.0)}
  assert not np.allclose(run[1.0](noise, jax.random.PRNGKey(1)),
                         run[1.0](noise, jax.random.PRNGKey(2)))
  np.testing.assert_array_equal(run[0.0](noise, jax.random.PRNGKey(1)),
                                run[0.0](noise, jax.random.PRNGKey(2)))


def test_ddim_errors_name_the_value(schedule):
  noise = jnp.zeros(_SHAPE)
  sample = functools.partial(diffusion.ddim_sample, _toy_denoiser, noise, None, schedule)
  with pytest.raises(ValueError, match='num_steps=1001'):
    sample(num_steps=1001)
  with pytest.raises(ValueError, match='num_steps=0'):
    sample(num_steps=0)
  with pytest.raises(ValueError, match='eta=-0.5'):
    sample(num_steps=10, eta=-0.5)
  with pytest.raises(ValueError, match="'uniform'"):
    sample(num_steps=10, timestep_spacing='uniform')
  with pytest.raises(ValueError, match="'score'"):
    sample(num_steps=10, prediction_type='score')
  with pytest.raises(ValueError, match='eta=0.5'):
    sample(num_steps=10, eta=0.5)  # No key.
  with pytest.raises(ValueError, match='steps_offset=1'):
    diffusion.ddim_timesteps(1000, 1000, 'leading', steps_offset=1)
  with pytest.raises(ValueError, match='eta=1.0'):
    diffusion.ddim_step(schedule, noise, noise, 10, 0, eta=1.0)  # No variance_noise.
  with pytest.raises(ValueError, match="'num_step'"):
    diffusion.make_ddim_sampler(lambda p, x, t: x, schedule, num_step=10)
  with pytest.raises(ValueError, match=r'\(2, 2, 4, 4, 1\)'):
    diffusion.ddim_sample(lambda x, t: x[..., :1], noise, None, schedule, num_steps=2)
