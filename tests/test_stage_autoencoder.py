"""Stages `autoencoder` and `decoder`: GAN loss wiring, and short runs through the trainer."""

import os
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videoldm import checkpoints
from videoldm import config_utils
from videoldm import stages
from videoldm.models import discriminator as discriminator_lib
from videoldm.models import params as params_lib
from videoldm.stages import gan
from videoldm.train import trainer

TEMPORAL = params_lib.TEMPORAL_PATTERN
SIZE, FRAMES = 16, 3


@pytest.fixture(scope='module', autouse=True)
def fast_random_init():
  """Random init compiles ~4x faster with this PRNG than with threefry on CPU."""
  previous = jax.config.jax_default_prng_impl
  jax.config.update('jax_default_prng_impl', 'unsafe_rbg')
  yield
  jax.config.update('jax_default_prng_impl', previous)


class MovingNoise:
  """Deterministic stand-in for `pipeline.make_dataset`: a noise image rolling right."""

  def __init__(self, data_config, split, global_batch_size, *, seed, process_index=0,
               process_count=1, shuffle=True, num_epochs=None):
    del shuffle, num_epochs, process_count
    self.config, self.split, self.seed = data_config, split, seed
    self.batch, self.process_index, self.position = global_batch_size, process_index, 0

  def __iter__(self):
    return self

  def __next__(self):
    rng = np.random.default_rng([self.seed, self.split == 'train', self.position])
    self.position += 1
    size = self.config.image_size
    first = rng.uniform(-1, 1, (self.batch, size, size, 3))
    video = np.stack([np.roll(first, f, axis=2) for f in range(self.config.num_frames)], axis=1)
    return {'video': video.astype(np.float32),
            'labels': rng.integers(0, 10, (self.batch, 2)).astype(np.int32)}

  def get_state(self):
    return {'position': self.position}

  def set_state(self, state):
    self.position = int(state['position'])


def stage_config(stage: str, **fields):
  """The runlocal config at test size; stage fields the config file may lack are added."""
  config = config_utils.load_config(f'configs/moving_digits.py:stage={stage},runlocal')
  config.unlock()
  if 'loss' not in config.model:
    config.model.loss = gan.default_loss_config(runlocal=True)
  if 'discriminator' not in config.model:
    config.model.discriminator = gan.default_discriminator_config(runlocal=True)
  if 'temporal_decoder' not in config.model:
    config.model.temporal_decoder = dict(merge_strategy='learned_with_images', alpha=0.5,
                                         kernel_size=(3, 1, 1), use_conv_out=True)
  config.model.loss.disc_start = 0
  config.model.autoencoder.block_out_channels = (16, 32)  # 2 levels compile faster than 3.
  config.total_steps, config.batch_size = 3, 2
  config.optimizer.warmup_steps = 1
  config.checkpoint.every_steps = 1
  config.data.image_size = SIZE
  config.data.num_frames = 1 if stage == 'autoencoder' else FRAMES
  for name, value in fields.items():
    config[name] = value
  config.lock()
  return config


def _flat(tree):
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep='/')


def _checkpoint_params(workdir, step, use_ema=False):
  location = os.path.join(checkpoints.checkpoint_dir(workdir), str(step))
  init = dict(workdir='', path=location, use_ema=use_ema)
  return checkpoints.read_source_params(init)[1]


# ----------------------------------------------------------------------------
# Loss wiring of the folded generator + discriminator scalar.
# ----------------------------------------------------------------------------


@pytest.fixture(scope='module')
def wiring():
  """An autoencoder stage with init params and a frame batch (f = 1)."""
  config = stage_config('autoencoder')
  config.unlock()
  config.model.loss.disc_start = 5
  config.total_steps = 10  # The run reaches disc_start, so the discriminator is built.
  config.lock()
  stage = stages.get_stage('autoencoder')(config)
  batch = next(MovingNoise(config.data, 'train', 2, seed=0))
  params = jax.jit(stage.init_params)(jax.random.key(0), batch)
  folded = jax.jit(jax.grad(stage.loss_fn, has_aux=True))
  return config, stage, params, batch, folded


def _reference(stage, config, params, frames, rng):
  """Adaptive weight and per-group gradients written out directly from the modules."""
  ae, disc = stage.autoencoder, stage.discriminator
  loss = config.model.loss

  def reconstruct(ae_params):
    posterior = ae.apply({'params': ae_params}, frames, method=ae.encode)
    return ae.apply({'params': ae_params}, posterior.sample(rng), method=ae.decode), posterior

  def with_kernel(kernel):
    ae_params = jax.tree.map(lambda x: x, params['autoencoder'])  # A fresh nested dict.
    ae_params['decoder']['conv_out']['kernel'] = kernel
    return reconstruct(ae_params)[0]

  logits = lambda d, x: disc.apply({'params': d}, x)
  kernel = params['autoencoder']['decoder']['conv_out']['kernel']
  nll_grad = jax.grad(lambda k: jnp.mean(jnp.abs(frames - with_kernel(k))))(kernel)
  g_grad = jax.grad(lambda k: -jnp.mean(logits(params['discriminator'], with_kernel(k))))(kernel)
  d_weight = loss.disc_weight * jnp.linalg.norm(nll_grad) / (jnp.linalg.norm(g_grad) + 1e-4)

  def generator_loss(ae_params):
    reconstruction, posterior = reconstruct(ae_params)
    kl = jnp.mean(posterior.kl()) / frames[0].size
    g_loss = -jnp.mean(logits(params['discriminator'], reconstruction))
    return jnp.mean(jnp.abs(frames - reconstruction)) + loss.kl_weight * kl + d_weight * g_loss

  fake = reconstruct(params['autoencoder'])[0]
  hinge = lambda d: discriminator_lib.hinge_d_loss(logits(d, frames), logits(d, fake))
  return d_weight, jax.grad(generator_loss)(params['autoencoder']), jax.grad(hinge)(
      params['discriminator'])


def _assert_trees_close(got, expected, rtol=1e-4):
  # atol from the whole tree's scale: some leaves (attention key biases) have a
  # gradient that is exactly 0 in theory and round-off noise in practice.
  scale = max(float(np.max(np.abs(v))) for v in _flat(expected).values())
  for path, value in _flat(expected).items():
    np.testing.assert_allclose(np.asarray(_flat(got)[path]), np.asarray(value), rtol=rtol,
                               atol=1e-6 * scale, err_msg=path)


def test_folded_loss_gives_each_param_group_exactly_its_own_gradient(wiring):
  config, stage, params, batch, folded = wiring
  rng = jax.random.key(7)
  grads, metrics = folded(params, batch, rng, jnp.int32(5))  # disc_start = 5: active.
  frames = batch['video'][:, 0]
  d_weight, ae_grads, disc_grads = jax.jit(
      lambda p, x: _reference(stage, config, p, x, rng))(params, frames)
  assert float(metrics['disc_factor']) == 1.0
  np.testing.assert_allclose(float(metrics['d_weight']), float(d_weight), rtol=1e-4)
  _assert_trees_close(grads['discriminator'], disc_grads)
  _assert_trees_close(grads['autoencoder'], ae_grads)
  assert any(np.any(np.asarray(g)) for g in jax.tree.leaves(disc_grads))
  assert float(d_weight) > 0.0


def test_discriminator_is_off_before_disc_start(wiring):
  _, _, params, batch, folded = wiring
  grads, metrics = folded(params, batch, jax.random.key(7), jnp.int32(4))
  assert float(metrics['disc_factor']) == 0.0
  assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(grads['discriminator']))


def test_perceptual_loss_without_weights_is_a_clear_error():
  config = stage_config('autoencoder')
  config.model.loss.perceptual_weight = 1.0
  with pytest.raises(ValueError, match=r'perceptual_weight=1\.0 .*expected 0\.0'):
    stages.get_stage('autoencoder')(config)


# ----------------------------------------------------------------------------
# Training runs: autoencoder, then decoder from it via init_from.
# ----------------------------------------------------------------------------


@pytest.fixture(scope='module')
def autoencoder_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('autoencoder'))
  config = stage_config('autoencoder', sample_every=3)
  state = trainer.train_and_evaluate(config, workdir, dataset_fn=MovingNoise)
  return config, workdir, state


@pytest.fixture(scope='module')
def decoder_run(autoencoder_run, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('decoder'))
  config = stage_config('decoder', sample_every=3)
  config.init_from.workdir = autoencoder_run[1]
  config.init_from.exempt = [TEMPORAL, r'^discriminator/']
  state = trainer.train_and_evaluate(config, workdir, dataset_fn=MovingNoise)
  return config, workdir, state


def _changed(before, after):
  return not np.array_equal(np.asarray(before), np.asarray(after))


def test_autoencoder_stage_trains_every_param(autoencoder_run):
  config, workdir, state = autoencoder_run
  assert sorted(os.listdir(checkpoints.checkpoint_dir(workdir))) == ['1', '2', '3']
  assert int(state.step) == 3 and int(state.nonfinite_count) == 0
  first, last = _checkpoint_params(workdir, 1), _flat(jax.device_get(state.params))
  assert set(last) == set(first)
  assert {path.split('/')[0] for path in last} == {'autoencoder', 'discriminator'}
  assert all(re.search(config.trainable, path) for path in last)
  for group in ('autoencoder/decoder/conv_out/kernel', 'autoencoder/encoder/conv_in/kernel',
                'discriminator/conv_out/kernel'):
    assert _changed(first[group], last[group]), group
  gifs = sorted(os.listdir(os.path.join(workdir, 'samples')))
  assert gifs == ['data_00000003.gif', 'reconstruction_00000003.gif']


def test_decoder_stage_trains_only_temporal_layers_from_the_autoencoder_run(autoencoder_run,
                                                                            decoder_run):
  _, ae_workdir, _ = autoencoder_run
  config, workdir, state = decoder_run
  assert int(state.step) == 3 and int(state.nonfinite_count) == 0
  source = _checkpoint_params(ae_workdir, 3, use_ema=True)
  first, last = _checkpoint_params(workdir, 1), _flat(jax.device_get(state.params))
  trainable = [path for path in last if re.search(config.trainable, path)]
  frozen = [path for path in last if path not in trainable]
  assert all(path.startswith('autoencoder/') and not re.search(TEMPORAL, path) for path in frozen)
  assert any(path.startswith('autoencoder/encoder/') for path in frozen)
  for path in frozen:  # Loaded from the autoencoder run and never touched.
    np.testing.assert_array_equal(last[path], source[path], err_msg=path)
  temporal_paths = [path for path in trainable if path.startswith('autoencoder/')]
  assert temporal_paths and all(re.search(TEMPORAL, path) for path in temporal_paths)
  assert all(_changed(first[path], last[path]) for path in temporal_paths
             if path.endswith('conv2/kernel') or path.endswith('mix_factor'))
  assert _changed(first['discriminator/conv_in/kernel'], last['discriminator/conv_in/kernel'])
  assert last['discriminator/conv_in/kernel'].ndim == 5  # The 3D discriminator.
  gifs = sorted(os.listdir(os.path.join(workdir, 'samples')))
  assert gifs == ['data_00000003.gif', 'image_decoder_00000003.gif',
                  'temporal_decoder_00000003.gif']
