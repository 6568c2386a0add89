"""The Eq. 1 loss: weighting per prediction type, masks and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videoldm import diffusion


@pytest.fixture(scope='module')
def batch():
  schedule = diffusion.make_schedule('scaled_linear')
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  shape = (6, 3, 4, 4, 2)  # (b, f, h, w, c)
  x0 = jax.random.normal(keys[0], shape)
  noise = jax.random.normal(keys[1], shape)
  x0_guess = x0 + 0.3 * jax.random.normal(keys[2], shape)  # An imperfect model.
  t = jnp.array([0, 3, 120, 480, 900, 999])
  alpha = diffusion.expand_to(schedule.alpha(t), x0.ndim)
  sigma = diffusion.expand_to(schedule.sigma(t), x0.ndim)
  x_t = diffusion.q_sample(schedule, x0, t, noise)
  return dict(schedule=schedule, x0=x0, noise=noise, x0_guess=x0_guess, t=t, alpha=alpha,
              sigma=sigma, x_t=x_t, log_snr=schedule.log_snr(t))


def _per_type_loss(batch, prediction_type, weighting, mask=None):
  prediction = diffusion.convert_prediction(batch['x0_guess'], batch['x_t'], batch['alpha'],
                                            batch['sigma'], 'x0', prediction_type)
  target = diffusion.training_target(prediction_type, batch['x0'], batch['noise'],
                                     batch['alpha'], batch['sigma'])
  return diffusion.diffusion_loss(prediction, target, log_snr=batch['log_snr'],
                                  prediction_type=prediction_type, weighting=weighting,
                                  min_snr_gamma=5.0, mask=mask)


def test_min_snr_is_the_same_objective_for_every_prediction_type(batch):
  # One imperfect x0 guess expressed as eps, v and x0 must incur one loss.
  losses = [float(_per_type_loss(batch, p, 'min_snr')) for p in ('eps', 'v', 'x0')]
  np.testing.assert_allclose(losses, [losses[2]] * 3, rtol=2e-4)
  snr = np.exp(np.asarray(batch['log_snr'], np.float64))
  per_example_x0 = np.mean(np.square(np.asarray(batch['x0_guess'] - batch['x0'])),
                           axis=(1, 2, 3, 4))
  np.testing.assert_allclose(losses[2], np.mean(np.minimum(snr, 5.0) * per_example_x0), rtol=1e-5)


def test_unweighted_losses_differ_by_snr_factors(batch):
  eps_loss = float(_per_type_loss(batch, 'eps', 'none'))
  per_example_x0 = np.mean(np.square(np.asarray(batch['x0_guess'] - batch['x0'])),
                           axis=(1, 2, 3, 4))
  snr = np.exp(np.asarray(batch['log_snr'], np.float64))
  np.testing.assert_allclose(eps_loss, np.mean(snr * per_example_x0), rtol=1e-3)
  v_loss = float(_per_type_loss(batch, 'v', 'none'))
  np.testing.assert_allclose(v_loss, np.mean((snr + 1) * per_example_x0), rtol=1e-3)


@pytest.mark.parametrize('prediction_type,expected', [
    ('eps', lambda snr: np.minimum(snr, 5.0) / snr),
    ('v', lambda snr: np.minimum(snr, 5.0) / (snr + 1)),
    ('x0', lambda snr: np.minimum(snr, 5.0)),
])
def test_min_snr_weights_closed_form(batch, prediction_type, expected):
  snr = np.exp(np.asarray(batch['log_snr'], np.float64))
  weights = diffusion.loss_weight(batch['log_snr'], prediction_type, 'min_snr', 5.0)
  np.testing.assert_allclose(weights, expected(snr), rtol=1e-5)
  np.testing.assert_array_equal(diffusion.loss_weight(batch['log_snr'], prediction_type), 1.0)


def test_frame_mask_counts_only_masked_in_frames(batch):
  prediction = batch['x0_guess']
  frame_mask = jnp.array([[0, 1, 1]] * 6, jnp.float32)  # (b, f): first frame is context.
  masked = diffusion.diffusion_loss(prediction, batch['x0'], mask=frame_mask)
  expected = jnp.mean(jnp.square(prediction[:, 1:] - batch['x0'][:, 1:]))
  np.testing.assert_allclose(masked, expected, rtol=1e-6)
  everything = diffusion.diffusion_loss(prediction, batch['x0'], mask=jnp.ones((6, 3)))
  np.testing.assert_allclose(everything, diffusion.diffusion_loss(prediction, batch['x0']),
                             rtol=1e-6)


def test_weighted_mask_matches_manual_sum(batch):
  prediction = batch['x0_guess']
  mask = jnp.array([[1, 0, 1], [0, 0, 1], [1, 1, 1], [0, 0, 0], [1, 0, 0], [0, 1, 0]])
  loss = jax.jit(lambda p: diffusion.diffusion_loss(
      p, batch['x0'], log_snr=batch['log_snr'], prediction_type='eps', weighting='min_snr',
      mask=mask))(prediction)
  weights = np.asarray(diffusion.loss_weight(batch['log_snr'], 'eps', 'min_snr'))
  squared = np.square(np.asarray(prediction - batch['x0'])).mean(axis=(2, 3, 4))  # (b, f)
  expected = np.sum(weights[:, None] * squared * mask) / np.sum(mask)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_loss_errors_name_the_value(batch):
  x = batch['x0']
  with pytest.raises(ValueError, match="'snr'"):
    diffusion.diffusion_loss(x, x, log_snr=batch['log_snr'], weighting='snr')
  with pytest.raises(ValueError, match="'min_snr'"):
    diffusion.diffusion_loss(x, x, weighting='min_snr')
  with pytest.raises(ValueError, match=r'\(6, 4\)'):
    diffusion.diffusion_loss(x, x, mask=jnp.ones((6, 4)))
  with pytest.raises(ValueError, match=r'\(6, 3, 4, 4, 1\)'):
    diffusion.diffusion_loss(x, x[..., :1])
  with pytest.raises(ValueError, match="'score'"):
    diffusion.diffusion_loss(x, x, log_snr=batch['log_snr'], prediction_type='score')
  with pytest.raises(ValueError, match=r'\(5,\)'):
    diffusion.diffusion_loss(x, x, log_snr=batch['log_snr'][:5], weighting='min_snr')
  with pytest.raises(ValueError, match='min_snr_gamma=0'):
    diffusion.loss_weight(batch['log_snr'], 'eps', 'min_snr', 0)
