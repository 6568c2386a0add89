"""`gan_losses`: its discriminator schedules (off, every step on CPU, lax.cond) agree."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from videoldm.models import discriminator as discriminator_lib
from videoldm.stages import gan

DISC = discriminator_lib.PatchDiscriminator2D(base_channels=4, num_layers=1)


def _loss_config(disc_start):
  return ml_collections.ConfigDict(dict(kl_weight=0.0, disc_weight=0.5, disc_start=disc_start,
                                        disc_loss='hinge', perceptual_weight=0.0))


def _total_loss(params, real, step, loss_config, total_steps=10):
  """A linear 'decoder' (its kernel is the last layer) and the folded GAN loss."""
  decode = lambda p: jnp.tanh(real @ p['decoder']['kernel'])
  fake, vjp = gan.output_with_last_layer_vjp(decode, params, ('decoder', 'kernel'))
  discriminate = lambda disc_params, x: DISC.apply({'params': disc_params}, x)
  generator, disc_loss, metrics = gan.gan_losses(real, fake, vjp, discriminate,
                                                 params['discriminator'], step, loss_config,
                                                 total_steps)
  return generator + disc_loss, metrics


@pytest.mark.parametrize('disc_start, total_steps, backend, expected', [
    (0, 10, 'cpu', 'every_step'), (5, 10, 'cpu', 'every_step'), (0, 10, 'gpu', 'every_step'),
    (5, 10, 'gpu', 'cond'), (10, 10, 'cpu', 'off'), (10, 10, 'tpu', 'off')])
def test_discriminator_schedule(monkeypatch, disc_start, total_steps, backend, expected):
  monkeypatch.setattr(gan.jax, 'default_backend', lambda: backend)
  assert gan.discriminator_schedule(_loss_config(disc_start), total_steps) == expected


@pytest.mark.parametrize('step', [2, 7])
def test_cond_and_every_step_paths_give_the_same_gradients(monkeypatch, step):
  real = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3), minval=-1, maxval=1)
  params = dict(decoder=dict(kernel=jnp.eye(3) + 0.1),
                discriminator=DISC.init(jax.random.key(1), real)['params'])
  config = _loss_config(disc_start=5)
  grad_fn = jax.grad(_total_loss, has_aux=True)
  every_step = grad_fn(params, real, jnp.int32(step), config)
  monkeypatch.setattr(gan.jax, 'default_backend', lambda: 'gpu')
  assert gan.discriminator_schedule(config, 10) == 'cond'
  with_cond = grad_fn(params, real, jnp.int32(step), config)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               every_step[0], with_cond[0])
  disc_grads = jax.tree.leaves(with_cond[0]['discriminator'])
  assert any(np.any(g) for g in disc_grads) == (step >= 5)
  assert float(with_cond[1]['disc_factor']) == float(step >= 5)
  if step < 5:  # The cond skipped the discriminator: its metrics are zeros.
    assert float(with_cond[1]['d_loss']) == 0.0 != float(every_step[1]['d_loss'])


def test_off_schedule_matches_the_cond_before_disc_start():
  """A run that ends before disc_start gets the nll-only gradients of the cond's skipped branch."""
  real = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3), minval=-1, maxval=1)
  params = dict(decoder=dict(kernel=jnp.eye(3) + 0.1),
                discriminator=DISC.init(jax.random.key(1), real)['params'])
  grad_fn = jax.grad(_total_loss, has_aux=True)
  off, metrics = grad_fn(params, real, jnp.int32(3), _loss_config(5), 5)
  every_step, _ = grad_fn(params, real, jnp.int32(3), _loss_config(5), 10)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), off, every_step)
  assert float(metrics['d_loss']) == float(metrics['d_weight']) == 0.0
