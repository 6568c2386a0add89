"""Schedules, q_sample and eps/v/x0 conversions against diffusers and identities."""

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from videoldm import diffusion
from videoldm.diffusion import schedules

_F32_EPS = float(np.finfo(np.float32).eps)
_DIFFUSERS_NAMES = {'linear': 'linear', 'scaled_linear': 'scaled_linear',
                    'cosine': 'squaredcos_cap_v2'}


def _reference(name, beta_start=0.00085, beta_end=0.012, num_train_steps=1000):
  return diffusers.DDIMScheduler(num_train_timesteps=num_train_steps,
                                 beta_schedule=_DIFFUSERS_NAMES[name],
                                 beta_start=beta_start, beta_end=beta_end)


@pytest.mark.parametrize('name', ['linear', 'scaled_linear', 'cosine'])
@pytest.mark.parametrize('beta_start,beta_end', [(0.00085, 0.012), (0.0001, 0.02)])
def test_schedule_matches_diffusers(name, beta_start, beta_end):
  ours = diffusion.make_schedule(name, 1000, beta_start, beta_end)
  reference = _reference(name, beta_start, beta_end)
  assert ours.betas.dtype == np.float64 and ours.alphas_cumprod.dtype == np.float64
  # diffusers computes in float32; ours in float64 agrees to float32 rounding.
  np.testing.assert_allclose(ours.betas, reference.betas.double().numpy(), rtol=5e-7, atol=0)
  np.testing.assert_allclose(ours.alphas_cumprod, reference.alphas_cumprod.double().numpy(),
                             rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(ours.alphas_cumprod, np.cumprod(1.0 - ours.betas), rtol=1e-15)


def test_schedule_endpoints_and_names():
  scaled = diffusion.make_schedule('scaled_linear')
  assert scaled.num_train_steps == 1000
  np.testing.assert_allclose(scaled.betas[[0, -1]], [0.00085, 0.012], rtol=1e-12)
  np.testing.assert_allclose(np.sqrt(scaled.betas), np.linspace(0.00085**0.5, 0.012**0.5, 1000),
                             rtol=1e-12)
  assert diffusion.make_schedule('squaredcos_cap_v2') == diffusion.make_schedule('cosine')
  assert diffusion.make_schedule('cosine').betas.max() == pytest.approx(0.999)
  assert hash(diffusion.make_schedule()) == hash(scaled)
  assert diffusion.make_schedule('linear') != scaled


def test_schedule_is_a_static_jit_argument():
  q_sample = jax.jit(diffusion.q_sample, static_argnums=0)
  x0, t = jnp.ones((2, 3)), jnp.array([0, 999])
  first = q_sample(diffusion.make_schedule(), x0, t, x0)
  q_sample(diffusion.make_schedule(), x0, t, x0)  # An equal schedule reuses the compile.
  assert q_sample._cache_size() == 1
  cosine = q_sample(diffusion.make_schedule('cosine'), x0, t, x0)
  assert q_sample._cache_size() == 2 and not np.allclose(first, cosine)


@pytest.mark.parametrize('name', ['linear', 'scaled_linear', 'cosine'])
def test_alpha_sigma_log_snr_tables(name):
  schedule = diffusion.make_schedule(name)
  t = jnp.arange(1000)
  alpha, sigma, log_snr = (np.asarray(f(t)) for f in (schedule.alpha, schedule.sigma,
                                                      schedule.log_snr))
  assert alpha.dtype == sigma.dtype == log_snr.dtype == np.float32
  np.testing.assert_allclose(alpha, np.sqrt(schedule.alphas_cumprod), rtol=1e-6)
  np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, rtol=1e-6)
  np.testing.assert_allclose(log_snr, np.log(alpha.astype(np.float64)**2 / sigma**2),
                             rtol=1e-5, atol=1e-5)
  assert np.all(np.diff(schedule.log_snrs) < 0)


def test_q_sample_matches_diffusers_add_noise_and_jits():
  schedule = diffusion.make_schedule('scaled_linear')
  rng = np.random.default_rng(0)
  x0 = rng.normal(size=(3, 2, 4, 4, 3)).astype(np.float32)  # (b, f, h, w, c)
  noise = rng.normal(size=x0.shape).astype(np.float32)
  t = np.array([0, 517, 999])
  ours = jax.jit(lambda x, tt, n: diffusion.q_sample(schedule, x, tt, n))(x0, t, noise)
  reference = _reference('scaled_linear').add_noise(torch.from_numpy(x0), torch.from_numpy(noise),
                                                    torch.from_numpy(t))
  np.testing.assert_allclose(np.asarray(ours), reference.numpy(), rtol=1e-5, atol=2e-6)


def test_sample_timesteps_range():
  t = diffusion.sample_timesteps(jax.random.PRNGKey(0), 4096, diffusion.make_schedule())
  assert t.dtype == jnp.int32 and t.shape == (4096,)
  assert int(t.min()) == 0 and int(t.max()) == 999


def _conversion_setup(name):
  schedule = diffusion.make_schedule(name)
  t = jnp.arange(1000)
  k0, k1 = jax.random.split(jax.random.PRNGKey(1))
  x0 = jax.random.normal(k0, (1000, 2, 8))
  eps = jax.random.normal(k1, x0.shape)
  alpha = diffusion.expand_to(schedule.alpha(t), x0.ndim)
  sigma = diffusion.expand_to(schedule.sigma(t), x0.ndim)
  x_t = diffusion.q_sample(schedule, x0, t, eps)
  truths = {'eps': eps, 'x0': x0, 'v': alpha * eps - sigma * x0}
  return x_t, alpha, sigma, truths


def _row_max_abs(x):
  return np.abs(np.asarray(x)).reshape(x.shape[0], -1).max(axis=1)


@pytest.mark.parametrize('name', ['scaled_linear', 'cosine'])
@pytest.mark.parametrize('start,via', [('eps', 'v'), ('v', 'eps'), ('eps', 'x0'), ('x0', 'eps'),
                                       ('v', 'x0'), ('x0', 'v')])
def test_round_trips_at_every_timestep(name, start, via):
  x_t, alpha, sigma, truths = _conversion_setup(name)
  middle = diffusion.convert_prediction(truths[start], x_t, alpha, sigma, start, via)
  back = diffusion.convert_prediction(middle, x_t, alpha, sigma, via, start)
  scale = _row_max_abs(x_t) + _row_max_abs(truths[start])
  # Leaving via eps divides by alpha on the way back, via x0 by sigma; via v
  # is well-conditioned. Each trip must be exact up to that amplification.
  condition = {'eps': 1.0 / np.asarray(alpha).ravel(), 'x0': 1.0 / np.asarray(sigma).ravel(),
               'v': 1.0}[via]
  tolerance = 8 * _F32_EPS * scale * (1.0 + condition)
  np.testing.assert_array_less(_row_max_abs(back - truths[start]), tolerance)


@pytest.mark.parametrize('prediction_type', ['eps', 'v', 'x0'])
def test_training_target_and_x0_and_eps_recover_truth(prediction_type):
  x_t, alpha, sigma, truths = _conversion_setup('scaled_linear')
  target = diffusion.training_target(prediction_type, truths['x0'], truths['eps'], alpha, sigma)
  np.testing.assert_allclose(target, truths[prediction_type], rtol=0, atol=1e-6)
  x0, eps = diffusion.x0_and_eps(target, x_t, alpha, sigma, prediction_type)
  np.testing.assert_allclose(x0, truths['x0'], atol=2e-4)
  np.testing.assert_allclose(eps, truths['eps'], atol=1e-3)


def test_conversions_hold_for_non_vp_alpha_sigma():
  alpha, sigma = jnp.array(0.3), jnp.array(2.5)
  x0, eps = jnp.array([1.5, -0.25]), jnp.array([-0.5, 2.0])
  x_t = alpha * x0 + sigma * eps
  v = diffusion.training_target('v', x0, eps, alpha, sigma)
  for prediction_type, prediction in (('v', v), ('eps', eps), ('x0', x0)):
    got_x0, got_eps = diffusion.x0_and_eps(prediction, x_t, alpha, sigma, prediction_type)
    np.testing.assert_allclose(got_x0, x0, rtol=1e-5)
    np.testing.assert_allclose(got_eps, eps, rtol=1e-5)


def test_diffusers_prediction_names_are_aliases():
  assert [diffusion.canonical_prediction_type(n) for n in ('epsilon', 'v_prediction', 'sample')] \
      == ['eps', 'v', 'x0']


def test_schedule_errors_name_the_value():
  with pytest.raises(ValueError, match="'sigmoid'"):
    diffusion.make_schedule('sigmoid')
  with pytest.raises(ValueError, match='num_train_steps=0'):
    diffusion.make_schedule('linear', 0)
  with pytest.raises(ValueError, match='beta_end=0.0001'):
    diffusion.make_schedule('linear', 1000, 0.01, 0.0001)
  with pytest.raises(ValueError, match="'score'"):
    diffusion.training_target('score', jnp.zeros(2), jnp.zeros(2), 1.0, 0.0)
  with pytest.raises(ValueError, match=r'\(3,\)'):
    diffusion.q_sample(diffusion.make_schedule(), jnp.zeros((2, 4)), jnp.zeros((3,), jnp.int32),
                       jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match=r'\(2, 5\)'):
    diffusion.q_sample(diffusion.make_schedule(), jnp.zeros((2, 4)), jnp.zeros((2,), jnp.int32),
                       jnp.zeros((2, 5)))


def test_expand_to_appends_axes():
  assert schedules.expand_to(jnp.ones((3,)), 5).shape == (3, 1, 1, 1, 1)
  assert schedules.expand_to(jnp.ones(()), 2).shape == (1, 1)
